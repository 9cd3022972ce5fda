"""Linear evaluation of InsDis / MoCo encoders: freeze the pretrained RGB ResNet, train a linear classifier on the
features of one layer (He et al., 2019, Sec. 4.1; Wu et al., 2018, Sec. 4).

The seed README's recipe runs as it is:

    python eval_moco_ins.py --model resnet50 --learning_rate 10 \
        --model_path /path/to/MoCo0.999_softmax_16384_resnet50_.../current.pth \
        --data_folder /path/to/imagenet100 --save_path /path/to/save --tb_path /path/to/tensorboard

On a laptop CPU, probing a demo checkpoint:

    python eval_moco_ins.py --dataset demo --image_size 32 --model resnet18x0.5 --learning_rate 0.1 \
        --model_path results/demo/moco.pth --save_path runs/probe --tb_path runs/tb --epochs 10 \
        --batch_size 64 --num_workers 0 --cache_features --bn
"""

from dataset import moco_train_transform
from engine import flags
from engine.checkpoint import checkpoint_opt
from engine.errors import UserError, run_main
from engine.probe import ProbeSpec, run_linear_probe
from engine.runtime import setup_runtime
from inputs.splits import probe_splits
from models import INS_MODEL_NAMES, build_ins_model, linear_probe_multiplier
from models.LinearModel import LinearClassifierResNet
from views import DeviceView


def parse_option(argv=None):
    parser = flags.ArgumentParser('argument for training')
    flags.add_common_flags(parser, save_freq=5, batch_size=256, num_workers=32, epochs=60, learning_rate=0.1,
                           lr_decay_epochs='30,40,50', lr_decay_rate=0.2, weight_decay=0, dataset='imagenet100')
    flags.add_probe_flags(parser, model_default='resnet50', model_choices=INS_MODEL_NAMES)
    parser.add_argument('--crop', type=float, default=0.2, help='minimum crop')
    parser.add_argument('--aug', type=str, default='CJ', choices=['NULL', 'CJ'])
    parser.add_argument('--cosine', action='store_true',
                        help='cosine annealing over all epochs to lr * lr_decay_rate^3 * 0.1 (instead of step decay)')
    parser.add_argument('--adam', action='store_true', help='Adam (--beta1, --beta2, eps 1e-8) instead of SGD')
    parser.add_argument('--warm', action='store_true', help='linear learning-rate warm-up over --warm_epochs')
    parser.add_argument('--warm_epochs', type=int, default=5, help='length of the --warm warm-up')
    flags.add_amp_flags(parser)
    parser.add_argument('--syncBN', action='store_true',
                        help='synchronise the --bn statistics across processes (torchrun runs only)')
    opt = parser.parse_args(argv)
    flags.check_probe(opt)
    if not 1 <= opt.layer <= 6:
        raise UserError(f'--layer {opt.layer} is out of range for --model {opt.model} (layers 1..6)')
    if opt.dataset == 'imagenet':
        opt.crop = 0.08
    opt.model_name = flags.probe_run_name(opt) + f'_crop_{opt.crop}'
    if opt.amp:
        opt.model_name += f'_amp_{opt.opt_level}'
    opt.model_name += f'_aug_{opt.aug}'
    for used, suffix in ((opt.bn, '_useBN'), (opt.adam, '_useAdam'), (opt.cosine, '_cosine'), (opt.warm, '_warm'),
                         (opt.syncBN, '_syncBN')):
        if used:
            opt.model_name += suffix
    return opt


def main(argv=None):
    opt = parse_option(argv)
    flags.check_probed_model(checkpoint_opt(opt.model_path), opt.model_path, INS_MODEL_NAMES, 'LinearProbing.py')
    rt = setup_runtime(opt)
    if opt.syncBN and not rt.distributed:
        rt.print('--syncBN has no effect in a single process (launch with torchrun --nproc_per_node N)')
    elif opt.syncBN and rt.device.type != 'cuda':        # torch's SyncBatchNorm only runs on GPUs
        raise UserError('--syncBN needs CUDA GPUs (torch\'s SyncBatchNorm does not run on the CPU); drop --syncBN '
                        'or run on GPUs')
    spec = ProbeSpec(
        make_encoder=lambda feat_dim: build_ins_model(opt.model, feat_dim),
        features=lambda model, x: model(x, opt.layer),
        make_classifier=lambda channels, n_label: LinearClassifierResNet(
            opt.layer, n_label, 'avg', linear_probe_multiplier(opt.model), in_channels=channels),
        view=DeviceView('RGB'),
        splits=lambda: probe_splits(opt, rt.print, moco_train_transform(opt.image_size, opt.crop, opt.aug)),
        adam=opt.adam, cosine=opt.cosine, warm_epochs=opt.warm_epochs if opt.warm else 0, sync_bn=opt.syncBN)
    return run_linear_probe(opt, rt, spec, flags.command_line(__file__, argv))


if __name__ == '__main__':
    run_main(main)
