"""Instance Discrimination (Wu et al., 2018: a memory bank of one feature per image, eq. 2-4) or, with --moco, Momentum
Contrast (He et al., 2019: a queue of keys from a momentum-updated key encoder, eq. 1-2), on one RGB ResNet-50.

The seed README's recipes run as they are, e.g.

    # InsDis
    python train_moco_ins.py --batch_size 128 --num_workers 24 --nce_k 16384 --softmax \
        --data_folder /path/to/imagenet100 --model_path /path/to/save --tb_path /path/to/tensorboard
    # MoCo
    python train_moco_ins.py --batch_size 128 --num_workers 24 --nce_k 16384 --softmax --moco \
        --data_folder /path/to/imagenet100 --model_path /path/to/save --tb_path /path/to/tensorboard

On a laptop CPU, with the bundled demo data (resnet18 is this project's small addition):

    python train_moco_ins.py --dataset demo --image_size 64 --model resnet18 --batch_size 64 --nce_k 1024 \
        --softmax --moco --epochs 5 --num_workers 0 --model_path runs/models --tb_path runs/tb
"""
from dataset import moco_train_transform
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
from inputs.splits import build_split, eval_splits
from methods import InsDis, MoCo
from models import INS_MODEL_NAMES, build_ins_model
from models.split_bn import convert_split_batchnorm, shuffle_bn_mode
from views import DeviceView, PrenormalisedViews

# Flags that fix the meaning or the shapes of a checkpoint: a resume must keep them (engine.fit.Fit.resume).
FIXED_FLAGS = ('model', 'feat_dim', 'nce_k', 'nce_t', 'nce_m', 'softmax', 'moco', 'batch_size', 'dataset')


def parse_option(argv=None):
    parser = flags.ArgumentParser('argument for training')
    flags.add_common_flags(parser, dataset='imagenet100')
    flags.add_pretrain_flags(parser, model_default='resnet50', model_choices=INS_MODEL_NAMES)
    parser.add_argument('--crop', type=float, default=0.2, help='minimum crop')
    parser.add_argument('--aug', type=str, default='CJ', choices=['NULL', 'CJ'])
    parser.add_argument('--warm', action='store_true', help='linear learning-rate warm-up over --warm_epochs')
    parser.add_argument('--warm_epochs', type=int, default=5, help='length of the --warm warm-up')
    parser.add_argument('--moco', action='store_true', help='using MoCo (otherwise Instance Discrimination)')
    parser.add_argument('--alpha', type=float, default=0.999, help='exponential moving average weight')
    parser.add_argument('--shuffle_bn_splits', type=int, default=1,
                        help='MoCo: the key encoder normalises each batch as N sub-batches (split BatchNorm), the '
                        'ShuffleBN of N GPUs emulated in one process (1: off, as the reference on one GPU); '
                        '--batch_size must be divisible by N; not part of the state, so a resume may change it')
    opt = parser.parse_args(argv)
    flags.check_pretrain(opt)
    if not 0 <= opt.alpha <= 1:
        raise UserError(f'--alpha must be in [0, 1], got {opt.alpha}')
    if opt.shuffle_bn_splits < 1 or opt.batch_size % opt.shuffle_bn_splits:
        raise UserError(f'--shuffle_bn_splits must be a positive divisor of --batch_size {opt.batch_size}, '
                        f'got {opt.shuffle_bn_splits}')
    if opt.shuffle_bn_splits > 1 and not opt.moco:
        raise UserError('--shuffle_bn_splits needs --moco (only MoCo has a key encoder)')
    if opt.dataset == 'imagenet' and 'alexnet' not in opt.model:
        opt.crop = 0.08
    opt.method = 'softmax' if opt.softmax else 'nce'
    prefix = f'MoCo{opt.alpha}' if opt.moco else 'InsDis'
    opt.model_name = (f'{prefix}_{opt.method}_{opt.nce_k}_{opt.model}_lr_{opt.learning_rate}_'
                      f'decay_{opt.weight_decay}_bsz_{opt.batch_size}_crop_{opt.crop}')
    if opt.warm:
        opt.model_name += '_warm'
    if opt.amp:
        opt.model_name += f'_amp_{opt.opt_level}'
    opt.model_name += f'_aug_{opt.aug}'
    return opt


def check_data_parallel_splits(batch_size, n_gpus, splits):
    """Under DataParallel each GPU's key encoder sees batch_size / n_gpus images, which its split BatchNorm divides
    again: both divisions must be exact (else SplitBatchNorm2d fails in the first step)."""
    if n_gpus > 1 and splits > 1 and (batch_size % n_gpus or (batch_size // n_gpus) % splits):
        raise UserError(f'--batch_size {batch_size} on {n_gpus} GPUs (DataParallel) gives each GPU '
                        f'{batch_size / n_gpus:g} images, which --shuffle_bn_splits {splits} cannot split evenly: '
                        f'choose a --batch_size divisible by {n_gpus * splits}')


def build_method(opt, rt, n_data):
    """InsDis, or MoCo with --moco, on a ResNet placed on the device; every process starts from rank 0's copy."""
    encoder = rt.place(build_ins_model(opt.model, opt.feat_dim))
    if opt.moco:
        method = MoCo(encoder, opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.softmax, z_momentum=opt.z_momentum,
                      alpha=opt.alpha)
        check_data_parallel_splits(opt.batch_size, rt.n_data_parallel, opt.shuffle_bn_splits)
        # Split BatchNorm shares the key encoder's tensors and state-dict keys: the state is the same either way.
        convert_split_batchnorm(method.encoder_k, opt.shuffle_bn_splits)
        rt.print(shuffle_bn_mode(rt.world_size, rt.n_data_parallel, opt.shuffle_bn_splits))
    else:
        method = InsDis(encoder, opt.feat_dim, n_data, opt.nce_k, opt.nce_t, opt.nce_m, opt.softmax,
                        z_momentum=opt.z_momentum)
    method.to(rt.device)
    for module in method.checkpoint_modules().values():     # DDP syncs the encoder; the rest starts alike too
        rt.broadcast(module)
    return method.set_runtime(rt)


def main(argv=None):
    opt = parse_option(argv)
    rt = setup_runtime(opt)
    transform = moco_train_transform(opt.image_size, opt.crop, opt.aug, color_on_cpu=opt.color_on_cpu)
    train_set = build_split(opt, 'pretrain', transform, two_crop=opt.moco, say=rt.print)
    n_data = len(train_set)
    check_sizes(opt, n_data, nce_k=opt.nce_k)
    rt.print(f'number of samples: {n_data}')
    loader = make_loader(train_set, opt, rt, seed=opt.seed or 0)

    view = DeviceView('RGB').to(rt.device)     # uint8 -> normalised RGB: training's unless --color_on_cpu, and kNN's
    train_view = PrenormalisedViews(6 if opt.moco else 3) if opt.color_on_cpu else view
    method = build_method(opt, rt, n_data)
    if opt.compile:
        method.compile_encoders()
    optimizer = sgd(method.encoder, opt)
    # the key encoder always runs with BatchNorm in train mode, as in the reference (method.train() sets both)
    stepper = Stepper(method, train_view, LearningRate(opt, optimizer, warm_epochs=opt.warm_epochs if opt.warm else 0))
    encode = lambda images: method.features(view(images))     # noqa: E731  (the kNN monitor's features)
    logged = Logged(fields=method.console_fields, tags=method.tb_tags, tb_name=opt.model_name,
                    evaluators=[knn_monitor(opt, rt, encode, [method.encoder], lambda: eval_splits(opt, rt.print))])
    saved = Checkpointed(method.checkpoint_modules(), optimizer, fixed_flags=FIXED_FLAGS)
    attach_online_probe(opt, rt, encode, method.encoder, lambda: eval_splits(opt, rt.print), stepper=stepper,
                        logged=logged, saved=saved)
    run = RunFolder(f'{opt.model_path}/{opt.model_name}')
    Fit(opt, rt, run, loader, saved, stepper, logged, flags.command_line(__file__, argv))()


if __name__ == '__main__':
    run_main(main)
