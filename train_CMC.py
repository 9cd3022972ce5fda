"""Contrastive Multiview Coding (Tian, Krishnan and Isola, 2019): pretrain two view encoders (L / ab of Lab, or
Y / CbCr of YCbCr) with a memory bank and the NCE or softmax contrastive loss (eq. 3-5 of the paper).

The seed README's recipes run as they are, e.g.

    # AlexNet on one GPU
    python train_CMC.py --batch_size 256 --num_workers 36 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard
    # ResNet-50 v1 as the seed README ran it (one process; it used DataParallel over 4 GPUs, we use one GPU)
    python train_CMC.py --model resnet50v1 --batch_size 128 --num_workers 24 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard
    # the same global batch on 4 GPUs with DDP: --batch_size is per process (4 x 32), so the run is named bsz_32
    torchrun --nproc_per_node 4 train_CMC.py --model resnet50v1 --batch_size 32 --num_workers 6 \
        --data_folder /path/to/imagenet --model_path /path/to/save --tb_path /path/to/tensorboard

On a laptop CPU, with the bundled demo data:

    python train_CMC.py --dataset demo --image_size 64 --model alexnet --batch_size 64 --nce_k 1024 \
        --epochs 5 --num_workers 0 --model_path runs/models --tb_path runs/tb
"""

from dataset import DeviceView, GRAYSCALE_DATASETS, cmc_train_transform
from engine import flags
from engine.checkpoint import RunFolder
from engine.data import build_split, check_colour, check_sizes, make_loader
from engine.errors import UserError, run_main
from engine.knn import knn_monitor
from engine.loop import Checkpointed, Fit, Logged, Stepper, StepResult
from engine.runtime import setup_runtime
from engine.schedule import adjust_learning_rate, sgd
from methods import CMC
from models import CMC_MODEL_NAMES, build_cmc_model
from NCE.NCECriterion import contrast_criterion

# Flags that fix the meaning or the shapes of a checkpoint: a resume must keep them (engine.loop.Fit.resume).
FIXED_FLAGS = ('model', 'feat_dim', 'nce_k', 'nce_t', 'nce_m', 'softmax', 'view', 'batch_size', 'dataset')


def parse_option(argv=None):
    parser = flags.ArgumentParser('argument for training')
    flags.add_common_flags(parser)
    flags.add_pretrain_flags(parser, model_default='alexnet', model_choices=CMC_MODEL_NAMES)
    parser.add_argument('--view', type=str, default='Lab', choices=['Lab', 'YCbCr'])
    parser.add_argument('--crop_low', type=float, default=0.2, help='low area in crop')
    opt = parser.parse_args(argv)
    flags.check_pretrain(opt)
    if opt.dataset in GRAYSCALE_DATASETS:
        raise UserError(f'--dataset {opt.dataset} is grayscale: it has no {opt.view} colour views to split; '
                        f'use train_moco_ins.py, or a colour data set')
    if opt.dataset == 'imagenet' and opt.model != 'alexnet':
        opt.crop_low = 0.08
    opt.method = 'softmax' if opt.softmax else 'nce'
    opt.model_name = (f'memory_{opt.method}_{opt.nce_k}_{opt.model}_lr_{opt.learning_rate}_'
                      f'decay_{opt.weight_decay}_bsz_{opt.batch_size}')
    if opt.amp:
        opt.model_name += f'_amp_{opt.opt_level}'
    opt.model_name += f'_view_{opt.view}'
    return opt


def main(argv=None):
    opt = parse_option(argv)
    rt = setup_runtime(opt)
    train_set = build_split(opt, 'pretrain', cmc_train_transform(opt.image_size, opt.crop_low))
    n_data = len(train_set)
    check_sizes(opt, n_data, nce_k=opt.nce_k)
    check_colour(train_set, opt.view, rt.print, advice='use train_moco_ins.py (one RGB encoder), or a colour data set')
    rt.print(f'number of samples: {n_data}')
    loader = make_loader(train_set, opt, rt, seed=opt.seed or 0)

    view = DeviceView(opt.view).to(rt.device)
    encoder = rt.place(build_cmc_model(opt.model, opt.feat_dim))
    cmc = CMC(encoder, opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.nce_m, opt.softmax,
              z_momentum=opt.z_momentum).to(rt.device)
    rt.broadcast(cmc.contrast)                 # one memory bank: every process starts from rank 0's
    cmc.set_runtime(rt)
    criterion_l, criterion_ab = contrast_criterion(opt.softmax, n_data), contrast_criterion(opt.softmax, n_data)
    optimizer = sgd(encoder, opt)

    def step(batch):
        images, _, index = batch
        x = view(images.to(rt.device, non_blocking=True))              # B x 3 x H x W, normalised L|ab
        out_l, out_ab = cmc(x, index.to(rt.device, non_blocking=True))  # B x (K+1) x 1 each
        l_loss, ab_loss = criterion_l(out_l).squeeze(), criterion_ab(out_ab).squeeze()
        return StepResult(loss=l_loss + ab_loss, batch_size=images.shape[0], metrics={
            'loss': l_loss + ab_loss, 'l_loss': l_loss, 'ab_loss': ab_loss,
            'l_prob': out_l[:, 0].mean(), 'ab_prob': out_ab[:, 0].mean()})

    stepper = Stepper(step=step, train_modules=[encoder],
                      set_lr=lambda epoch, step, n: adjust_learning_rate(epoch, opt, optimizer))
    logged = Logged(fields=[('loss', 'loss'), ('l_prob', 'l_p'), ('ab_prob', 'ab_p'), ('l_loss', 'l_loss'),
                            ('ab_loss', 'ab_loss')],
                    tags=[('l_loss', 'l_loss'), ('l_prob', 'l_prob'), ('ab_loss', 'ab_loss'), ('ab_prob', 'ab_prob')],
                    tb_name=opt.model_name,
                    evaluators=[knn_monitor(opt, rt, lambda images: cmc.features(view(images)), [encoder])])
    saved = Checkpointed(cmc.checkpoint_modules(), optimizer, fixed_flags=FIXED_FLAGS)
    run = RunFolder(f'{opt.model_path}/{opt.model_name}')
    Fit(opt, rt, run, loader, saved, stepper, logged, flags.command_line(__file__, argv))()


if __name__ == '__main__':
    run_main(main)
