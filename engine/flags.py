"""Command-line flags: the reference's flags and defaults, this project's additions, and their checks."""
import argparse
import math
import os
import sys

from engine.errors import UserError, say_once


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a bad value or choice) are one line like every other user error:
    ``error: ...`` and exit status 2, without the usage block (``--help`` still prints it)."""

    def error(self, message):
        say_once(f'error: {message} (see --help)')            # under torchrun every process parses the same flags
        sys.exit(2)


COMPAT = 'kept for compatibility with the reference; has no effect'
OPT_LEVEL_HELP = ('kept for compatibility (NVIDIA apex is gone): O1 and O2 both mean torch.autocast, bfloat16 where '
                  'the device supports it, else float16 with a GradScaler; only --amp turns mixed precision on')


def add_common_flags(parser, *, print_freq=10, tb_freq=500, save_freq=10, batch_size=128, num_workers=18, epochs=240,
                     learning_rate=0.03, lr_decay_epochs='120,160,200', lr_decay_rate=0.1, weight_decay=1e-4,
                     momentum=0.9, dataset='imagenet', dataset_choices=('imagenet100', 'imagenet')):
    """Flags every script has, with the reference's defaults for that script, plus this project's additions."""
    p = parser
    p.add_argument('--print_freq', type=int, default=print_freq, help='print frequency (iterations)')
    p.add_argument('--tb_freq', type=int, default=tb_freq, help=f'{COMPAT} (TensorBoard scalars are written per epoch)')
    p.add_argument('--save_freq', type=int, default=save_freq, help='save ckpt_epoch_N.pth every N epochs '
                   '(current.pth is written every epoch)')
    p.add_argument('--batch_size', type=int, default=batch_size, help='batch size')
    p.add_argument('--num_workers', type=int, default=num_workers, help='number of data-loading workers')
    p.add_argument('--epochs', type=int, default=epochs, help='number of training epochs')
    p.add_argument('--learning_rate', type=float, default=learning_rate, help='learning rate')
    p.add_argument('--lr_decay_epochs', type=str, default=lr_decay_epochs, help='where to decay lr, can be a list')
    p.add_argument('--lr_decay_rate', type=float, default=lr_decay_rate, help='decay rate for learning rate')
    p.add_argument('--beta1', type=float, default=0.5, help='beta1 for Adam (only eval_moco_ins.py --adam uses it; '
                   f'elsewhere {COMPAT})')
    p.add_argument('--beta2', type=float, default=0.999, help='beta2 for Adam (as --beta1)')
    p.add_argument('--weight_decay', type=float, default=weight_decay, help='weight decay')
    p.add_argument('--momentum', type=float, default=momentum, help='momentum')
    p.add_argument('--resume', default='', type=str, metavar='PATH',
                   help="checkpoint to resume from; 'auto' resumes the run folder's current.pth if there is one")
    all_datasets = list(dataset_choices) + ['folder', 'demo', 'stl10', 'cifar10', 'fashion-mnist', 'multiview_folder']
    p.add_argument('--dataset', type=str, default=dataset, choices=all_datasets,
                   help='imagenet/imagenet100/folder read data_folder/train (and /val); demo is the bundled emoji '
                   'set (no data_folder needed); stl10/cifar10/fashion-mnist read torchvision files under data_folder')
    p.add_argument('--data_folder', type=str, default=None, help='path to data')
    p.add_argument('--tb_path', type=str, default=None, help='path to tensorboard')
    # additions of this project
    p.add_argument('--image_size', type=int, default=224, help='crop size; validation resizes to image_size*256/224')
    p.add_argument('--device', type=str, default='auto', choices=['auto', 'cpu', 'cuda'],
                   help='auto: cuda when present')
    p.add_argument('--gpu', default=None, type=int, help='GPU id to use (implies --device cuda)')
    p.add_argument('--seed', type=int, default=None,
                   help='seed everything; a CPU run with --num_workers 0 is then repeatable bit for bit')
    p.add_argument('--download', action='store_true', help='let stl10/cifar10/fashion-mnist download missing files')
    p.add_argument('--skip_bad_images', action='store_true',
                   help='skip (and count) images that cannot be decoded instead of stopping')
    p.add_argument('--overwrite', action='store_true',
                   help='start over in a run folder that already holds checkpoints')
    return p


def add_amp_flags(parser):
    """--amp, and the reference's --opt_level (apex), which now means nothing more than --amp."""
    parser.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast)')
    parser.add_argument('--opt_level', type=str, default='O2', choices=['O1', 'O2'], help=OPT_LEVEL_HELP)


def add_pretrain_flags(parser, *, model_default, model_choices):
    """Flags of the two pretraining scripts beyond the common ones."""
    p = parser
    p.add_argument('--model', type=str, default=model_default, choices=model_choices)
    p.add_argument('--softmax', action='store_true', help='using softmax contrastive loss rather than NCE')
    p.add_argument('--nce_k', type=int, default=16384)
    p.add_argument('--nce_t', type=float, default=0.07, help='temperature (the CMC paper used 0.1 on STL-10)')
    p.add_argument('--nce_m', type=float, default=0.5, help='momentum of the memory-bank update')
    p.add_argument('--feat_dim', type=int, default=128, help='dim of feat for inner product')
    p.add_argument('--model_path', type=str, default=None, help='path to save model')
    p.add_argument('--z_momentum', type=float, default=None,
                   help='NCE only: track the normalising constant Z as a running average with this momentum '
                   '(default: fixed after the first batch, as in the reference)')
    p.add_argument('--knn_freq', type=int, default=None,
                   help='run the weighted kNN monitor (k=200, t=0.07) every N epochs when a labelled val split '
                   'exists; 0 turns it off; default 1, or 0 for imagenet/imagenet100 (a full pass over the data)')
    p.add_argument('--online_probe', action='store_true',
                   help='train a linear classifier (engine/online_probe.py) on the detached pooled features under '
                   'the projection head (CMC: every view\'s, concatenated; MoCo: the query encoder\'s) during '
                   'pretraining, and print and log (TensorBoard online_probe_top1) its val top-1 every epoch, when the '
                   'data set has a labelled val split; saved with the run, so --resume continues it. The encoder and '
                   'the run\'s random streams are untouched. Cost: a linear step per batch (well under 1%% of a step) '
                   'and an eval pass of the encoder over the val split every epoch (the kNN monitor\'s, without its '
                   'pass over the train split)')
    p.add_argument('--color_on_cpu', action='store_true',
                   help='the reference\'s input path, for comparisons: the loader workers convert each crop on its '
                   'own (CMC: scikit-image in float64, then ToTensor and Normalize; InsDis/MoCo: ToTensor and '
                   'Normalize) and the batch is only cast to float32, instead of uint8 crops converted batched on '
                   'the device. Same numbers within 1e-4 of the range, far slower (the reference needed tens of '
                   'workers per GPU). CMC: colour views of one RGB image only (not --dataset multiview_folder). The '
                   'kNN monitor still converts on the device')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the encoders, in place (checkpoint keys unchanged). Off by default: on a '
                   '2-core CPU (bench/README.md) the resnet18v1 step was no faster and the first step took ~75 s '
                   'of compiling; a GPU may gain. Each new input shape or mode (the kNN monitor runs eager) '
                   'compiles again. CMC_COMPILE_BACKEND picks the backend (default inductor)')
    add_amp_flags(p)


def add_probe_flags(parser, *, model_default, model_choices, layer=6):
    """Flags of the two linear-probe scripts beyond the common ones."""
    p = parser
    p.add_argument('--model', type=str, default=model_default, choices=model_choices)
    p.add_argument('--model_path', type=str, default=None, help='the pretrained checkpoint to evaluate')
    p.add_argument('--layer', type=int, default=layer, help='which layer to evaluate')
    p.add_argument('--save_path', type=str, default=None, help='path to save linear classifier')
    p.add_argument('--log', type=str, default='time_linear.txt',
                   help='a text file in the run folder that gets one line per epoch (time, losses, accuracies)')
    p.add_argument('--bn', action='store_true',
                   help='parameter-free BatchNorm on the features before the linear layer (LinearProbing.py: an '
                   'addition of this project; it makes one learning rate fit encoders whose feature scales differ)')
    p.add_argument('--cache_features', action='store_true',
                   help='compute the frozen features once, without augmentation, and train the linear layer on '
                   'them (much faster; the reference re-ran the encoder with augmentation every epoch). Kept in '
                   'host memory as float16; under torchrun each of the W processes holds its 1/W share. Peak host '
                   'memory of the cache: N x C x 2 bytes in all, e.g. ImageNet (1.28M images) at AlexNet layer 5 '
                   '(256 x 6 x 6): 23.6 GB in all, 23.6 / W GB per process')


def parse_epochs(text):
    """'120,160,200' -> [120, 160, 200], or a one-line UserError."""
    try:
        return [int(x) for x in str(text).split(',') if x.strip()]
    except ValueError:
        raise UserError(f'--lr_decay_epochs must be comma-separated integers, got {text!r}')


# Values the optimiser flags can take (a weight decay above 1 only ever diverges).
OPTIMISER_BOUNDS = {'weight_decay': (lambda v: 0 <= v <= 1, '[0, 1]'),
                    'lr_decay_rate': (lambda v: 0 < v <= 1, '(0, 1]'),
                    'momentum': (lambda v: 0 <= v < 1, '[0, 1)')}


def check_common(opt, *, needs=('data_folder', 'tb_path')):
    """Validate flags shared by all scripts; raise UserError with one clear line."""
    if isinstance(opt.lr_decay_epochs, str):
        opt.lr_decay_epochs = parse_epochs(opt.lr_decay_epochs)
    for name in needs:
        if name == 'data_folder' and opt.dataset == 'demo':
            continue
        if not getattr(opt, name):
            raise UserError(f'--{name} is required')
    given = vars(opt)                       # the flags this script has: not every script has --crop or --feat_dim
    for name in ('batch_size', 'epochs', 'print_freq', 'save_freq', 'image_size', 'warm_epochs', 'feat_dim'):
        if name in given and given[name] <= 0:
            raise UserError(f'--{name} must be positive, got {given[name]}')
    if opt.num_workers < 0:
        raise UserError(f'--num_workers must be >= 0, got {opt.num_workers}')
    if not (math.isfinite(opt.learning_rate) and opt.learning_rate > 0):   # nan and inf pass a plain "> 0"
        raise UserError(f'--learning_rate must be a positive number, got {opt.learning_rate}')
    for name in ('crop', 'crop_low'):
        if name in given and not 0 < given[name] <= 1:
            raise UserError(f'--{name} must be in (0, 1], got {given[name]}')
    for name, (fits, bounds) in OPTIMISER_BOUNDS.items():
        if not (math.isfinite(given[name]) and fits(given[name])):      # nan and inf pass a plain comparison
            raise UserError(f'--{name} must be in {bounds}, got {given[name]}')
    if opt.image_size < 32:
        raise UserError(f'--image_size must be at least 32 (64 or more recommended), got {opt.image_size}')
    refuse_small_images(opt.model, opt.image_size)


def refuse_small_images(model, image_size):
    """A UserError for an image size the model's layers cannot take: AlexNet's pooling runs out of pixels below 64
    ("Output size is too small")."""
    if model == 'alexnet' and image_size < 64:
        raise UserError(f'--model alexnet needs --image_size 64 or more (its pooling runs out of pixels), '
                        f'got {image_size}')


def check_pretrain(opt):
    """``check_common`` plus the contrast flags of the two pretraining scripts (before any data is read)."""
    check_common(opt, needs=('data_folder', 'model_path', 'tb_path'))
    if opt.batch_size < 2:
        raise _batch_of_one(opt)
    if opt.nce_k <= 0:
        raise UserError(f'--nce_k must be positive, got {opt.nce_k}')
    if not (math.isfinite(opt.nce_t) and opt.nce_t > 0):
        raise UserError(f'--nce_t must be a positive number, got {opt.nce_t}')
    for name, value in (('nce_m', opt.nce_m), ('z_momentum', opt.z_momentum)):
        if value is not None and not 0 <= value <= 1:
            raise UserError(f'--{name} must be in [0, 1], got {value}')


def command_line(script, argv):
    """The command as typed, for the resume hint: the script's name and its arguments."""
    return [os.path.basename(script)] + list(sys.argv[1:] if argv is None else argv)


def opt_to_dict(opt):
    """The flags as a plain dict (what a checkpoint stores as ``opt``)."""
    return dict(vars(opt)) if not isinstance(opt, dict) else dict(opt)


def probe_run_name(opt, prefix=''):
    """``<pretraining run folder>_bsz_..._lr_..._decay_...``: the reference named probes after the checkpoint's
    folder."""
    pretrain_run = os.path.basename(os.path.dirname(os.path.abspath(opt.model_path)))
    return f'{prefix}{pretrain_run}_bsz_{opt.batch_size}_lr_{opt.learning_rate}_decay_{opt.weight_decay}'


def _batch_of_one(opt):
    return UserError(f'--batch_size {opt.batch_size} is too small: BatchNorm in training needs at least 2 samples per '
                     f'batch (per process under torchrun)')


def check_probe(opt):
    """``check_common`` plus the probe's checkpoint, which must exist before any work."""
    check_common(opt, needs=('data_folder', 'model_path', 'save_path', 'tb_path'))
    if opt.bn and opt.batch_size < 2:          # --bn: the probe's feature BatchNorm trains on each batch
        raise _batch_of_one(opt)
    if os.path.isdir(opt.model_path):
        raise UserError(f'--model_path {opt.model_path} is a folder: give the pretrained checkpoint file in it (its '
                        f'run\'s current.pth or ckpt_epoch_N.pth); the probe\'s own output folder is --save_path')
    if not os.path.isfile(opt.model_path):
        raise UserError(f'--model_path {opt.model_path} does not exist: give the pretrained checkpoint (.pth) to probe')


def check_probed_model(saved, path, choices, elsewhere):
    """A UserError when the checkpoint to probe was trained with a --model of the other probe's family (a CMC
    encoder given to eval_moco_ins.py, or the reverse): ``elsewhere`` names the script that probes it."""
    model = saved.get('model')
    if model is not None and model not in choices:
        raise UserError(f'{path} holds a --model {model} encoder, which this script does not probe: probe it with '
                        f'{elsewhere}')


# Not compared on resume: how to resume, and names derived from the flags that are compared.
NOT_COMPARED = ('resume', 'overwrite', 'model_name', 'method', 'seed_drawn', 'view_module_path')
# Values a script stores with its flags that are not flags themselves: how a message names them.
NOT_FLAGS = {'view_channels': "the views' input channels"}


def flag_changes(saved, opt, fixed):
    """Compare a checkpoint's ``opt`` (a dict; keys it lacks are not compared) with this run's flags.

    Returns (refused, noted): lists of (flag, checkpoint's value, this run's value), the flags in ``fixed`` (those
    that fix the meaning or the shapes of what is resumed) and the others (epochs, print frequency, schedule...).
    """
    refused, noted = [], []
    for name, value in sorted(opt_to_dict(opt).items()):
        if name in NOT_COMPARED or name not in saved or _same(saved[name], value):
            continue
        (refused if name in fixed else noted).append((name, saved[name], value))
    return refused, noted


def _same(a, b):
    """Equal as flags: '120,160' and [120, 160] are the same --lr_decay_epochs, 1 and 1.0 the same number."""
    if isinstance(a, str) and isinstance(b, (list, tuple)):
        a = parse_epochs(a)
    if isinstance(b, str) and isinstance(a, (list, tuple)):
        b = parse_epochs(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def describe_changes(changes):
    """'--nce_k 8 (checkpoint: 16), --model alexnet (checkpoint: resnet18v1)'."""
    return ', '.join(f'{NOT_FLAGS.get(name, "--" + name)} {new} (checkpoint: {old})' for name, old, new in changes)
