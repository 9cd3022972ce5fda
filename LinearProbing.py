"""Linear evaluation of CMC encoders (Tian et al., 2019, Sec. 4.1): freeze a pretrained encoder, concatenate its
views' features at one layer (all the checkpoint's views, or those of --probe_views) and train a linear classifier on
them. The views and their channels are read from the checkpoint's flags (--views / --view of train_CMC.py).

The seed README's recipes run as they are, e.g.

    # AlexNet
    python LinearProbing.py --dataset imagenet --data_folder /path/to/imagenet \
        --save_path /path/to/save --tb_path /path/to/tensorboard \
        --model_path /path/to/memory_nce_16384_alexnet_.../ckpt_epoch_240.pth \
        --model alexnet --learning_rate 0.1 --layer 5
    # ResNet-50 v1 / v2 (v3: --learning_rate 50)
    python LinearProbing.py ... --model resnet50v1 --learning_rate 30 --layer 6

On a laptop CPU, probing a demo checkpoint:

    python LinearProbing.py --dataset demo --image_size 64 --model resnet18v1 --layer 6 --learning_rate 0.1 \
        --model_path results/demo/cmc.pth --save_path runs/probe --tb_path runs/tb --epochs 10 \
        --batch_size 64 --num_workers 0 --cache_features --bn
"""

import torch

from dataset import cmc_train_transform
from engine import flags
from engine.checkpoint import checkpoint_opt
from engine.errors import UserError, run_main
from engine.probe import ProbeSpec, run_linear_probe
from engine.runtime import setup_runtime
from inputs.splits import probe_splits
from models import CMC_MODEL_NAMES, build_cmc_model, linear_probe_multiplier
from models.LinearModel import (ALEXNET_PROBE_LAYERS, LinearClassifierAlexNet, LinearClassifierResNet,
                                LinearProbe)
from views import ViewStack
from views import flags as view_flags

LAYERS = {'alexnet': range(1, 8), 'resnet': range(1, 7)}


def parse_option(argv=None):
    parser = flags.ArgumentParser('argument for training')
    flags.add_common_flags(parser, save_freq=5, batch_size=256, num_workers=32, epochs=60, learning_rate=0.1,
                           lr_decay_epochs='30,40,50', lr_decay_rate=0.2, weight_decay=0)
    flags.add_probe_flags(parser, model_default='alexnet', model_choices=CMC_MODEL_NAMES)
    parser.add_argument('--view', type=str, default=None, choices=sorted(view_flags.LEGACY_VIEWS),
                        help='the views of a checkpoint that does not record them (default Lab); otherwise read from '
                        'the checkpoint, and a different --view is an error')
    parser.add_argument('--probe_views', type=str, nargs='+', default=None, metavar='VIEW',
                        help='whose features are concatenated (default: all the checkpoint\'s views), e.g. L')
    parser.add_argument('--view_module', type=str, default=None, metavar='PATH_OR_MODULE',
                        help='the module of the checkpoint\'s own views, if it cannot be found where the checkpoint '
                        'says (' + view_flags.VIEW_MODULE_HELP + ')')
    parser.add_argument('--crop_low', type=float, default=0.2, help='low area in crop')
    parser.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast) for the frozen encoder')
    # The reference advertised its own multi-process mode here but never shipped it; torchrun replaces it.
    for flag in ('--world-size', '--rank', '--dist-url', '--dist-backend'):
        parser.add_argument(flag, default=None, help=f'{flags.COMPAT}: launch with torchrun --nproc_per_node N instead')
    parser.add_argument('--multiprocessing-distributed', action='store_true',
                        help=f'{flags.COMPAT}: launch with torchrun --nproc_per_node N instead')
    opt = parser.parse_args(argv)
    flags.check_probe(opt)
    family = 'alexnet' if opt.model == 'alexnet' else 'resnet'
    if opt.layer not in LAYERS[family]:
        raise UserError(f'--layer {opt.layer} is out of range for --model {opt.model} '
                        f'(layers {LAYERS[family][0]}..{LAYERS[family][-1]})')
    opt.model_name = flags.probe_run_name(opt, prefix='calibrated_')
    opt.view_given, opt.view = opt.view, opt.view or 'Lab'     # the views themselves come from the checkpoint (main)
    return opt


def main(argv=None):
    opt = parse_option(argv)
    saved = checkpoint_opt(opt.model_path)
    flags.check_probed_model(saved, opt.model_path, CMC_MODEL_NAMES, 'eval_moco_ins.py')
    view_flags.checkpoint_views(opt, saved)
    rt = setup_runtime(opt)

    probed = [opt.views.index(view) for view in opt.probe_views]

    def features(model, x):                    # the probed views at the chosen layer, concatenated on channels
        feats = model(x, opt.layer)
        return torch.cat([feats[i] for i in probed], dim=1)

    def make_classifier(channels, n_label):
        if opt.model == 'alexnet':
            two_view_channels, grid = ALEXNET_PROBE_LAYERS[opt.layer]
            if channels == two_view_channels:
                return LinearClassifierAlexNet(opt.layer, n_label, 'max')
            return LinearProbe(channels, grid, n_label, 'max')     # another number of probed views
        return LinearClassifierResNet(opt.layer, n_label, 'avg', linear_probe_multiplier(opt.model),
                                      in_channels=channels)

    keys = view_flags.key_names(opt.views)
    view = ViewStack(opt.views, view_flags.file_channels(opt.views, opt.view_channels))
    named = f'--probe_views {" ".join(opt.probe_views)} (of {opt.model_path})'
    splits = lambda: probe_splits(opt, rt.print, cmc_train_transform(opt.image_size, opt.crop_low),  # noqa: E731
                                  opt.probe_views, named)
    spec = ProbeSpec(make_encoder=lambda feat_dim: build_cmc_model(opt.model, feat_dim, opt.view_channels, keys),
                     features=features, make_classifier=make_classifier, view=view, splits=splits)
    return run_linear_probe(opt, rt, spec, flags.command_line(__file__, argv))


if __name__ == '__main__':
    run_main(main)
