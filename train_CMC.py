"""Contrastive Multiview Coding (Tian, Krishnan and Isola, 2019): pretrain two view encoders (L / ab of Lab, or
Y / CbCr of YCbCr) with a memory bank and the NCE or softmax contrastive loss (eq. 3-5 of the paper).

The seed README's recipes run as they are, e.g.

    # AlexNet on one GPU
    python train_CMC.py --batch_size 256 --num_workers 36 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard
    # ResNet-50 v1 as the seed README ran it: one process drives the 4 GPUs with DataParallel, as the reference did
    CUDA_VISIBLE_DEVICES=0,1,2,3 python train_CMC.py --model resnet50v1 --batch_size 128 --num_workers 24 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard
    # the same global batch on 4 GPUs with DDP: --batch_size is per process (4 x 32), so the run is named bsz_32
    torchrun --nproc_per_node 4 train_CMC.py --model resnet50v1 --batch_size 32 --num_workers 6 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard

On a laptop CPU, with the bundled demo data:

    python train_CMC.py --dataset demo --image_size 64 --model alexnet --batch_size 64 --nce_k 1024 \
        --epochs 5 --num_workers 0 --model_path runs/models --tb_path runs/tb
"""

from types import SimpleNamespace

import cmc_views
from colour import COLOUR_VIEWS, PrenormalisedViews, ViewStack
from dataset import GRAYSCALE_DATASETS, cmc_train_transform, reference_views_transform
from engine import flags
from engine.checkpoint import RunFolder
from engine.data import build_split, check_colour, check_sizes, make_loader
from engine.errors import UserError, run_main
from engine.knn import knn_monitor
from engine.loop import Checkpointed, Fit, Logged, Stepper, StepResult
from engine.runtime import setup_runtime
from engine.schedule import adjust_learning_rate, sgd
from methods import CMC, CrossViewPrediction
from models import CMC_MODEL_NAMES, build_cmc_model
from NCE.NCECriterion import contrast_criterion

# Flags that fix the meaning or the shapes of a checkpoint: a resume must keep them (engine.loop.Fit.resume).
FIXED_FLAGS = ('model', 'feat_dim', 'nce_k', 'nce_t', 'nce_m', 'softmax', 'view', 'views', 'paradigm', 'objective',
               'batch_size', 'dataset')


def parse_option(argv=None):
    parser = flags.ArgumentParser('argument for training')
    flags.add_common_flags(parser)
    flags.add_pretrain_flags(parser, model_default='alexnet', model_choices=CMC_MODEL_NAMES)
    cmc_views.add_view_flags(parser)
    parser.add_argument('--objective', type=str, default='contrastive', choices=['contrastive', 'predictive'],
                        help='predictive: the same encoders trained to predict the other views\' pixels (L2), the '
                        'paper\'s baseline (Sec. 3.1)')
    parser.add_argument('--crop_low', type=float, default=0.2, help='low area in crop')
    opt = parser.parse_args(argv)
    flags.check_pretrain(opt)
    cmc_views.resolve_views(opt)
    if opt.dataset in GRAYSCALE_DATASETS:
        raise UserError(f'--dataset {opt.dataset} is grayscale: it has no {opt.view or " ".join(opt.views)} colour '
                        f'views to split; use train_moco_ins.py, or a colour data set')
    if opt.color_on_cpu and opt.dataset == 'multiview_folder':
        raise UserError(f'--color_on_cpu converts colour views of one RGB image ({" ".join(COLOUR_VIEWS)}) as the '
                        f'reference did; --dataset multiview_folder reads its views from files: drop --color_on_cpu')
    if opt.dataset == 'imagenet' and opt.model != 'alexnet':
        opt.crop_low = 0.08
    opt.method = 'softmax' if opt.softmax else 'nce'
    opt.model_name = (f'memory_{opt.method}_{opt.nce_k}_{opt.model}_lr_{opt.learning_rate}_'
                      f'decay_{opt.weight_decay}_bsz_{opt.batch_size}')
    if opt.amp:
        opt.model_name += f'_amp_{opt.opt_level}'
    opt.model_name += cmc_views.run_suffix(opt) + ('_predictive' if opt.objective == 'predictive' else '')
    return opt


def main(argv=None):
    opt = parse_option(argv)
    rt = setup_runtime(opt)
    parts = build(opt, rt)
    run = RunFolder(f'{opt.model_path}/{opt.model_name}')
    Fit(opt, rt, run, parts.loader, parts.saved, parts.stepper, parts.logged, flags.command_line(__file__, argv))()


def train_transform(opt):
    """The loader's per-image transform: uint8 crops (colour on the device), or with --color_on_cpu the
    reference's crops converted and normalised per image (float64 views, ``dataset.reference_views_transform``)."""
    if opt.color_on_cpu:
        return reference_views_transform(opt.image_size, opt.crop_low, opt.views)
    return cmc_train_transform(opt.image_size, opt.crop_low)


def build(opt, rt):
    """Everything a run needs but its folder: a namespace of loader, saved (Checkpointed), stepper, logged, and
    ``train_view`` (the module that turns a loader batch into the encoders' input; tests hook it)."""
    train_set = build_split(opt, 'pretrain', train_transform(opt))
    n_data = len(train_set)
    check_sizes(opt, n_data, nce_k=opt.nce_k if opt.objective == 'contrastive' else None)
    check_colour(train_set, opt.view or opt.views, rt.print,      # named as typed: --view Lab, or --views ...
                 advice='use train_moco_ins.py (one RGB encoder), or a colour data set')
    rt.print(f'number of samples: {n_data}')
    loader = make_loader(train_set, opt, rt, seed=opt.seed or 0)

    opt.view_channels = cmc_views.channels_of(opt.views, train_set)    # stored with opt: the probe rebuilds from it
    # uint8 -> normalised views on the device: the kNN monitor's input always, training's unless --color_on_cpu
    view = ViewStack(opt.views, getattr(train_set, 'file_channels', None)).to(rt.device)
    train_view = PrenormalisedViews(sum(opt.view_channels)) if opt.color_on_cpu else view
    keys = cmc_views.key_names(opt.views)
    encoder = rt.place(build_cmc_model(opt.model, opt.feat_dim, opt.view_channels, keys))
    method, step, fields = (build_contrast if opt.objective == 'contrastive' else build_predictive)(
        opt, rt, encoder, keys, n_data, train_view)
    if opt.compile:
        method.compile_encoders()
    stepper = Stepper(step=step, train_modules=[method],
                      set_lr=lambda epoch, step, n: adjust_learning_rate(epoch, opt, optimizer))
    optimizer = sgd(method, opt)
    logged = Logged(fields=fields, tags=[(key, key) for key, _ in fields if key != 'loss'], tb_name=opt.model_name,
                    evaluators=[knn_monitor(opt, rt, lambda images: method.features(view(images)), [encoder])])
    saved = Checkpointed(method.checkpoint_modules(), optimizer, fixed_flags=FIXED_FLAGS)
    return SimpleNamespace(loader=loader, saved=saved, stepper=stepper, logged=logged, train_view=train_view,
                           method=method)


def build_contrast(opt, rt, encoder, keys, n_data, view):
    """CMC (eq. 3-7): (method, step, console fields); the loss is the sum over the contrasted ordered pairs."""
    cmc = CMC(encoder, opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.nce_m, opt.softmax,
              z_momentum=opt.z_momentum, views=keys, paradigm=opt.paradigm).to(rt.device)
    rt.broadcast(cmc.contrast)                 # one memory bank per view: every process starts from rank 0's
    cmc.set_runtime(rt)
    names = cmc_views.metric_names(cmc.contrast.pair_names())                  # pair -> (loss key, prob key)
    criteria = {pair: contrast_criterion(opt.softmax, n_data) for pair in names}

    def step(batch):
        images, _, index = batch
        x = view(images.to(rt.device, non_blocking=True))              # B x sum(C_v) x H x W, normalised views
        scores = cmc(x, index.to(rt.device, non_blocking=True))         # pair -> B x (K+1) x 1
        losses = {pair: criteria[pair](out).squeeze() for pair, out in scores.items()}
        total = sum(losses.values())
        metrics = {'loss': total, **{names[p][0]: loss for p, loss in losses.items()},
                   **{names[p][1]: out[:, 0].mean() for p, out in scores.items()}}
        return StepResult(loss=total, batch_size=images.shape[0], metrics=metrics)

    if tuple(names) == ('L_ab', 'ab_L'):       # the reference's console line: loss, l_p, ab_p, l_loss, ab_loss
        fields = [('loss', 'loss'), ('l_prob', 'l_p'), ('ab_prob', 'ab_p'), ('l_loss', 'l_loss'),
                  ('ab_loss', 'ab_loss')]
    else:
        fields = [('loss', 'loss')] + [(key, key) for pair in names for key in names[pair]]
    return cmc, step, fields


def build_predictive(opt, rt, encoder, keys, n_data, view):
    """The predictive baseline (Sec. 3.1): (method, step, console fields); the loss is the sum of the L2 losses."""
    method = CrossViewPrediction(encoder, opt.view_channels, keys, opt.paradigm).to(rt.device)
    method.set_runtime(rt)

    def step(batch):
        images, _, _ = batch
        losses = method(view(images.to(rt.device, non_blocking=True)))          # '<s>_to_<t>' -> L2 loss
        total = sum(losses.values())
        return StepResult(loss=total, batch_size=images.shape[0],
                          metrics={'loss': total, **{f'loss_{name}': loss for name, loss in losses.items()}})

    return method, step, [('loss', 'loss')] + [(f'loss_{name}', f'loss_{name}') for name in method.predictor.decoders]


if __name__ == '__main__':
    run_main(main)
