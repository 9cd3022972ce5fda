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

from dataset import GRAYSCALE_DATASETS, cmc_train_transform, reference_views_transform
from engine import flags
from engine.checkpoint import RunFolder
from engine.data import check_sizes, make_loader
from engine.errors import UserError, run_main
from engine.fit import Checkpointed, Fit, Logged
from engine.knn import knn_monitor
from engine.loop import Stepper
from engine.online_probe import attach_online_probe
from engine.runtime import setup_runtime
from engine.schedule import LearningRate, sgd
from inputs.splits import build_split, check_colour, eval_splits
from methods import CMC, CrossViewPrediction
from models import CMC_MODEL_NAMES, build_cmc_model
from views import PrenormalisedViews, ViewStack
from views import flags as view_flags

# Flags that fix the meaning or the shapes of a checkpoint: a resume must keep them (engine.fit.Fit.resume).
FIXED_FLAGS = ('model', 'feat_dim', 'nce_k', 'nce_t', 'nce_m', 'softmax', 'view', 'views', 'paradigm', 'objective',
               'batch_size', 'dataset', 'view_channels')


def parse_option(argv=None):
    parser = flags.ArgumentParser('argument for training')
    flags.add_common_flags(parser)
    flags.add_pretrain_flags(parser, model_default='alexnet', model_choices=CMC_MODEL_NAMES)
    view_flags.add_view_flags(parser)
    parser.add_argument('--objective', type=str, default='contrastive', choices=['contrastive', 'predictive'],
                        help='predictive: the same encoders trained to predict the other views\' pixels (L2), the '
                        'paper\'s baseline (Sec. 3.1)')
    parser.add_argument('--crop_low', type=float, default=0.2, help='low area in crop')
    opt = parser.parse_args(argv)
    flags.check_pretrain(opt)
    view_flags.resolve_views(opt)
    if opt.dataset in GRAYSCALE_DATASETS:
        raise UserError(f'--dataset {opt.dataset} is grayscale: it has no {opt.view or " ".join(opt.views)} colour '
                        f'views to split; use train_moco_ins.py, or a colour data set')
    if opt.color_on_cpu and opt.dataset == 'multiview_folder':
        raise UserError('--color_on_cpu converts colour views of one RGB image as the reference did; --dataset '
                        'multiview_folder reads its views from files: drop --color_on_cpu')
    if opt.dataset == 'imagenet' and opt.model != 'alexnet':
        opt.crop_low = 0.08
    opt.method = 'softmax' if opt.softmax else 'nce'
    opt.model_name = (f'memory_{opt.method}_{opt.nce_k}_{opt.model}_lr_{opt.learning_rate}_'
                      f'decay_{opt.weight_decay}_bsz_{opt.batch_size}')
    if opt.amp:
        opt.model_name += f'_amp_{opt.opt_level}'
    opt.model_name += view_flags.run_suffix(opt) + ('_predictive' if opt.objective == 'predictive' else '')
    view_flags.load_views(opt, resume=RunFolder(f'{opt.model_path}/{opt.model_name}').resume_file(opt.resume))
    return opt


def main(argv=None):
    opt = parse_option(argv)
    rt = setup_runtime(opt)
    parts = build(opt, rt)
    run = RunFolder(f'{opt.model_path}/{opt.model_name}')
    Fit(opt, rt, run, parts.loader, parts.saved, parts.stepper, parts.logged, flags.command_line(__file__, argv))()


def train_transform(opt):
    """The loader's per-image transform: uint8 crops (views made on the device), or with --color_on_cpu the
    reference's crops converted and normalised per image (float64 views, ``inputs.transforms``)."""
    if opt.color_on_cpu:
        return reference_views_transform(opt.image_size, opt.crop_low, opt.views)
    return cmc_train_transform(opt.image_size, opt.crop_low)


def build(opt, rt):
    """Everything a run needs but its folder: a namespace of loader, saved (Checkpointed), stepper, logged,
    ``train_view`` (the module that turns a loader batch into the encoders' input; tests hook it) and method."""
    train_set = build_split(opt, 'pretrain', train_transform(opt), say=rt.print)
    n_data = len(train_set)
    check_sizes(opt, n_data, nce_k=opt.nce_k if opt.objective == 'contrastive' else None)
    check_colour(train_set, opt.views, rt.print, flag=f'--view {opt.view}' if opt.view else None,
                 advice='use train_moco_ins.py (one RGB encoder), or a colour data set')
    rt.print(f'number of samples: {n_data}')
    loader = make_loader(train_set, opt, rt, seed=opt.seed or 0)

    opt.view_channels = view_flags.channels_of(opt.views, train_set)   # stored with opt: the probe rebuilds from it
    # uint8 -> normalised views on the device: the kNN monitor's input always, training's unless --color_on_cpu
    view = ViewStack(opt.views, getattr(train_set, 'file_channels', None)).to(rt.device)
    train_view = PrenormalisedViews(sum(opt.view_channels)) if opt.color_on_cpu else view
    method = build_method(opt, rt, n_data)
    if opt.compile:
        method.compile_encoders()
    optimizer = sgd(method, opt)
    encode = lambda images: method.features(view(images))     # noqa: E731  (the kNN monitor's features)
    logged = Logged(fields=method.console_fields, tags=method.tb_tags, tb_name=opt.model_name,
                    evaluators=[knn_monitor(opt, rt, encode, [method.encoder], lambda: eval_splits(opt, rt.print))])
    parts = SimpleNamespace(loader=loader, stepper=Stepper(method, train_view, LearningRate(opt, optimizer)),
                            saved=Checkpointed(method.checkpoint_modules(), optimizer, fixed_flags=FIXED_FLAGS),
                            logged=logged, train_view=train_view, method=method)
    attach_online_probe(opt, rt, encode, method.encoder, lambda: eval_splits(opt, rt.print), stepper=parts.stepper,
                        logged=logged, saved=parts.saved)
    return parts


def build_method(opt, rt, n_data):
    """CMC (eq. 3-7) or the predictive baseline (Sec. 3.1) on one encoder per view, on the device; every process
    starts from rank 0's memory banks."""
    keys = view_flags.key_names(opt.views)
    encoder = rt.place(build_cmc_model(opt.model, opt.feat_dim, opt.view_channels, keys))
    if opt.objective == 'predictive':
        return CrossViewPrediction(encoder, opt.view_channels, keys, opt.paradigm).to(rt.device).set_runtime(rt)
    cmc = CMC(encoder, opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.nce_m, opt.softmax,
              z_momentum=opt.z_momentum, views=keys, paradigm=opt.paradigm).to(rt.device)
    rt.broadcast(cmc.contrast)
    return cmc.set_runtime(rt)


if __name__ == '__main__':
    run_main(main)
