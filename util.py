"""Everything the four scripts share, written once.

Sections: errors and the script entry point; the reference utilities (``adjust_learning_rate``,
``AverageMeter``, ``accuracy``); command-line flags; the runtime (device, processes, seeds, mixed
precision); checkpoints (atomic writes, safe loads, run folders); the resumable sampler; logging;
the epoch loop; the k-nearest-neighbour monitor.
"""
import argparse
import errno
import math
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------- errors and entry point

class UserError(Exception):
    """A problem with the user's input (flags, data, checkpoint). Scripts print str(e) as one line and exit non-zero."""


class TrainingStopped(Exception):
    """Raised when a run stops early on purpose (a signal, a non-finite loss); carries the exit code."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def run_main(main, argv=None):
    """Run a script's ``main`` so that user errors end as one clear line and a non-zero exit, never a traceback."""
    try:
        main(argv)
    except UserError as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        if str(e):
            print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def one_line(error):
    """A UserError's message on one line. One raised in a DataLoader worker comes back re-raised in the parent with
    "Caught UserError in DataLoader worker process N" and the worker's traceback as its text: keep the original."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and 'DataLoader worker' in lines[0]:
        lines = [re.sub(r'^([\w.]+\.)?UserError: ', '', lines[-1])]
    return ' '.join(lines)


# --------------------------------------------------------------------------- reference utilities

def adjust_learning_rate(epoch, opt, optimizer):
    """Step decay: lr = learning_rate * lr_decay_rate ** (number of decay epochs strictly below ``epoch``).

    Epochs count from 1, as in the reference.
    """
    steps = int(np.sum(epoch > np.asarray(opt.lr_decay_epochs)))
    new_lr = opt.learning_rate * (opt.lr_decay_rate ** steps)
    for group in optimizer.param_groups:
        group['lr'] = new_lr
    return new_lr


def cosine_learning_rate(epoch, opt):
    """The reference's ``--cosine``: CosineAnnealingLR over all epochs, stepped once at the start of each epoch.

    Written in closed form (so a resumed run needs no scheduler state); eta_min = lr * rate^3 * 0.1.
    """
    eta_min = opt.learning_rate * (opt.lr_decay_rate ** 3) * 0.1
    return eta_min + (opt.learning_rate - eta_min) * (1 + math.cos(math.pi * epoch / opt.epochs)) / 2


def warmup_factor(epoch, step, steps_per_epoch, warm_epochs):
    """Linear warm-up over the first ``warm_epochs`` epochs, per iteration, ending at factor 1."""
    if epoch > warm_epochs:
        return 1.0
    done = (epoch - 1) * steps_per_epoch + step + 1
    return done / (warm_epochs * steps_per_epoch)


class AverageMeter:
    """Computes and stores the average and current value."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def accuracy(output, target, topk=(1,)):
    """Precision@k in percent for each k, as 1-element tensors (the reference's return type)."""
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()                                        # maxk x B
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


# --------------------------------------------------------------------------- flags

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a bad value or choice) are one line like every other user error:
    ``error: ...`` and exit status 2, without the usage block (``--help`` still prints it)."""

    def error(self, message):
        print(f'error: {message} (see --help)', file=sys.stderr)
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
    all_datasets = list(dataset_choices) + ['folder', 'demo', 'stl10', 'cifar10', 'fashion-mnist']
    p.add_argument('--dataset', type=str, default=dataset, choices=all_datasets,
                   help='imagenet/imagenet100/folder read data_folder/train (and /val); demo is the bundled emoji '
                   'set (no data_folder needed); stl10/cifar10/fashion-mnist read torchvision files under data_folder')
    p.add_argument('--data_folder', type=str, default=None, help='path to data')
    p.add_argument('--tb_path', type=str, default=None, help='path to tensorboard')
    # additions of this project
    p.add_argument('--image_size', type=int, default=224, help='crop size; validation resizes to image_size*256/224')
    p.add_argument('--device', type=str, default='auto', choices=['auto', 'cpu', 'cuda'],
                   help='auto: cuda when present')
    p.add_argument('--seed', type=int, default=None,
                   help='seed everything; a CPU run with --num_workers 0 is then repeatable bit for bit')
    p.add_argument('--download', action='store_true', help='let stl10/cifar10/fashion-mnist download missing files')
    p.add_argument('--skip_bad_images', action='store_true',
                   help='skip (and count) images that cannot be decoded instead of stopping')
    p.add_argument('--overwrite', action='store_true',
                   help='start over in a run folder that already holds checkpoints')
    return p


def add_amp_flags(parser):
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
    p.add_argument('--gpu', default=None, type=int, help='GPU id to use (implies --device cuda)')
    p.add_argument('--bn', action='store_true',
                   help='parameter-free BatchNorm on the features before the linear layer (LinearProbing.py: an '
                   'addition of this project; it makes one learning rate fit encoders whose feature scales differ)')
    p.add_argument('--cache_features', action='store_true',
                   help='compute the frozen features once, without augmentation, and train the linear layer on '
                   'them (much faster; the reference re-ran the encoder with augmentation every epoch)')


def parse_epochs(text):
    try:
        return [int(x) for x in str(text).split(',') if x.strip()]
    except ValueError:
        raise UserError(f'--lr_decay_epochs must be comma-separated integers, got {text!r}')


def check_common(opt, *, needs=('data_folder', 'tb_path')):
    """Validate flags shared by all scripts; raise UserError with one clear line."""
    if isinstance(opt.lr_decay_epochs, str):
        opt.lr_decay_epochs = parse_epochs(opt.lr_decay_epochs)
    for name in needs:
        if name == 'data_folder' and opt.dataset == 'demo':
            continue
        if not getattr(opt, name):
            raise UserError(f'--{name} is required')
    for name in ('batch_size', 'epochs', 'print_freq', 'save_freq', 'image_size', 'warm_epochs', 'feat_dim'):
        if hasattr(opt, name) and getattr(opt, name) <= 0:
            raise UserError(f'--{name} must be positive, got {getattr(opt, name)}')
    if opt.num_workers < 0:
        raise UserError(f'--num_workers must be >= 0, got {opt.num_workers}')
    if not (math.isfinite(opt.learning_rate) and opt.learning_rate > 0):   # nan and inf pass a plain "> 0"
        raise UserError(f'--learning_rate must be a positive number, got {opt.learning_rate}')
    for name in ('crop', 'crop_low'):
        if hasattr(opt, name) and not 0 < getattr(opt, name) <= 1:
            raise UserError(f'--{name} must be in (0, 1], got {getattr(opt, name)}')
    if opt.weight_decay < 0 or not 0 < opt.lr_decay_rate <= 1 or not 0 <= opt.momentum < 1:
        raise UserError('need --weight_decay >= 0, 0 < --lr_decay_rate <= 1 and 0 <= --momentum < 1')
    if opt.image_size < 32:
        raise UserError(f'--image_size must be at least 32 (64 or more recommended), got {opt.image_size}')
    if getattr(opt, 'model', None) == 'alexnet' and opt.image_size < 64:
        raise UserError(f'--model alexnet needs --image_size 64 or more (its pooling runs out of pixels), '
                        f'got {opt.image_size}')


def check_pretrain(opt):
    """``check_common`` plus the contrast flags of the two pretraining scripts (before any data is read)."""
    check_common(opt, needs=('data_folder', 'model_path', 'tb_path'))
    if opt.nce_k <= 0:
        raise UserError(f'--nce_k must be positive, got {opt.nce_k}')
    if not (math.isfinite(opt.nce_t) and opt.nce_t > 0):
        raise UserError(f'--nce_t must be a positive number, got {opt.nce_t}')
    for name in ('nce_m', 'z_momentum'):
        value = getattr(opt, name)
        if value is not None and not 0 <= value <= 1:
            raise UserError(f'--{name} must be in [0, 1], got {value}')


def command_line(script, argv):
    """The command as typed, for the resume hint: the script's name and its arguments."""
    return [os.path.basename(script)] + list(sys.argv[1:] if argv is None else argv)


def opt_to_dict(opt):
    return dict(vars(opt)) if not isinstance(opt, dict) else dict(opt)


# --------------------------------------------------------------------------- runtime: device, processes, precision

@dataclass
class Runtime:
    """Where and how a script runs: the one place that knows about devices, processes and mixed precision."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype = None
    scaler: torch.amp.GradScaler = field(default=None, repr=False)

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def autocast(self):
        """Mixed precision when --amp is on, a no-op otherwise (one code path either way)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def place(self, model):
        """Move a conv net to the device with its conv weights channels-last (NHWC); activations follow them.

        Same arithmetic, faster kernels: one SGD step of CMC's resnet18v1 at 64 px on 2 CPU cores takes 80 ms
        instead of 122 in bfloat16 and 130 instead of 179 in float32 (bench/bench_step.py); GPUs with tensor
        cores want NHWC under --amp too.
        """
        return model.to(self.device, memory_format=torch.channels_last)

    def wrap(self, model, sync_bn=False):
        """Wrap a trained model for multi-process runs (DDP); a single process gets the model itself."""
        if not self.distributed:
            return model
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == 'cuda' else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def broadcast(self, module):
        """Give every process rank 0's parameters and buffers (a memory bank or key encoder not under DDP)."""
        if self.distributed:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)
        return module

    def print(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs, flush=True)


def unwrap(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def setup_runtime(opt):
    """Pick the device, join the torchrun process group if there is one, seed, and set up mixed precision."""
    want = getattr(opt, 'device', 'auto')
    if getattr(opt, 'gpu', None) is not None:
        want = 'cuda'
    if want == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda (or --gpu) was given but no CUDA device is available; use --device cpu')
    use_cuda = want == 'cuda' or (want == 'auto' and torch.cuda.is_available())

    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank, local_rank = 0, 0
    if world_size > 1:
        rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    if use_cuda:
        index = local_rank if world_size > 1 else (getattr(opt, 'gpu', None) or 0)
        torch.cuda.set_device(index)          # so pinned memory, RNG and capability checks use this GPU, not GPU 0
        device = torch.device('cuda', index)
        torch.backends.cudnn.benchmark = opt.seed is None
    else:
        device = torch.device('cpu')

    if opt.seed is not None:
        seed_everything(opt.seed + rank)

    amp_dtype = None
    if getattr(opt, 'amp', False):
        # CPU autocast only has bfloat16; without hardware support it is emulated, correct but slower than float32.
        native = native_bf16(device)
        amp_dtype = torch.bfloat16 if device.type == 'cpu' or native else torch.float16
        if device.type == 'cpu' and not native and rank == 0:
            print('note: this CPU has no native bfloat16, so --amp will be slower than float32 here')
    # The scaler only matters for float16; disabled it is a no-op, so the step code is the same either way.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Runtime(device=device, rank=rank, world_size=world_size, amp_dtype=amp_dtype, scaler=scaler)


def native_bf16(device):
    """Whether ``device`` computes bfloat16 in hardware: Ampere or later GPUs (older ones only emulate it, slowly,
    so they get float16 + scaler), x86 CPUs with AVX512-BF16 or AMX (where --amp runs convolutions 1.3-1.7x faster
    than float32; elsewhere it is emulated)."""
    if device.type == 'cpu':
        checks = [getattr(torch.cpu, name, None) for name in ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
        return any(check() for check in checks if check is not None)
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:                          # torch versions without the argument
        return torch.cuda.get_device_capability()[0] >= 8


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state():
    """Every RNG's state in types a weights-only load accepts (numpy's key array becomes a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': random.getstate(), 'numpy': [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached], 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()      # this process's GPU only: a resume may see fewer GPUs
    return state


def set_rng_state(state):
    random.setstate(_to_python(state['python']))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda_state = state['cuda']
        torch.cuda.set_rng_state(cuda_state[0] if isinstance(cuda_state, (list, tuple)) else cuda_state)


def _to_python(x):
    """Tuples come back from a weights-only load as tuples or lists; the RNG setters want tuples."""
    if isinstance(x, list):
        return tuple(_to_python(v) for v in x)
    if isinstance(x, tuple):
        return tuple(_to_python(v) for v in x)
    return x


# --------------------------------------------------------------------------- checkpoints

# A write that fails for want of room (disk full, quota, a file-size limit) is the user's to fix, not a bug.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _no_room_error(error):
    """The disk-full OSError behind ``error``, or None. torch.save reports a failed write as a RuntimeError from its
    zip writer, with the OSError only in the exception's context."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            return error
        error = error.__cause__ or error.__context__
    return None


def _temporary_prefix(path):
    return '.' + os.path.basename(path) + '.'


def _remove_stale_temporaries(folder, path):
    """Temporary files that a killed write to ``path`` left behind (one writer per path, as in a run)."""
    prefix = _temporary_prefix(path)
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith('.tmp'):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass


def save_checkpoint(state, path):
    """Write ``state`` atomically: a temporary file in the same folder, flushed, fsynced, then renamed into place.

    A kill at any moment leaves either the old file or the new one, never a truncated one; the temporary file a
    killed write left behind is removed by the next save to the same path (one writer per path, as in a run).
    A full disk ends as a UserError naming the file, with the temporary removed and the old file untouched.
    """
    _write_atomically(path, lambda f: torch.save(state, f))


def _write_atomically(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temporaries(folder, path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(path), suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)         # mkstemp makes the file private; a checkpoint is not
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        no_room = _no_room_error(e)
        if no_room is None:
            raise
        raise UserError(f'could not write {path}: {no_room.strerror} ({_free_mib(folder)} MiB free there); free '
                        f'some space or point --model_path at a bigger disk, then resume with --resume auto '
                        f'(the checkpoints already written are intact)') from None
    _fsync_dir(folder)


def _free_mib(folder):
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize // 2 ** 20


def link_checkpoint(src, dst):
    """Make ``dst`` the same file as ``src`` (a hard link, put in place atomically), else a copy.

    A run's current.pth and its ckpt_epoch_N.pth of the same epoch hold the same bytes: linking them halves the
    disk a run takes. Safe because checkpoints are never written in place: the next save of either name makes a
    new file and leaves the other one as it was.
    """
    folder = os.path.dirname(os.path.abspath(dst))
    _remove_stale_temporaries(folder, dst)
    tmp = os.path.join(folder, f'{_temporary_prefix(dst)}{os.getpid()}.link.tmp')
    try:
        os.link(src, tmp)
    except OSError:                     # no hard links here (FAT, some network mounts): copy the bytes
        with open(src, 'rb') as source:
            _write_atomically(dst, lambda f: shutil.copyfileobj(source, f, 2 ** 22))
        return
    os.replace(tmp, dst)
    _fsync_dir(folder)


def _read_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The only non-tensor class the reference's files need: it pickled ``opt`` as an argparse.Namespace.
SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint without ever running pickled code (``weights_only=True``); ``opt`` comes back as a dict."""
    if not path or not os.path.isfile(path):
        raise UserError(f'checkpoint {path!r} does not exist; check the path')
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        code = next((line for line in lines if 'GLOBAL' in line), None)   # a class or function the pickle would call
        if code is None:                 # e.g. "Unsupported operand": bytes that are no torch.save pickle at all
            detail = next((line for line in lines if 'Unsupported' in line), lines[0] if lines else '')
            raise UserError(f'{path} is not a readable checkpoint (truncated, or not a .pth file): {detail}')
        raise UserError(f'refusing to load {path}: it holds pickled objects that could run code ({code}); '
                        f'only tensors, plain containers and argparse.Namespace are accepted')
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{path} is not a readable checkpoint (truncated, or not a .pth file): {first}')
    if not isinstance(ckpt, dict):
        raise UserError(f'{path} is not a checkpoint of this project or the reference (a {type(ckpt).__name__}, '
                        f'not a dict)')
    if isinstance(ckpt.get('opt'), argparse.Namespace):
        ckpt['opt'] = vars(ckpt['opt'])
    return ckpt


def checkpoint_section(ckpt, key, path):
    if key not in ckpt:
        raise UserError(f'{path} has no {key!r} entry (it has {sorted(ckpt)}); is it the right kind of checkpoint?')
    return ckpt[key]


def trained_model(ckpt):
    """The ``--model`` a checkpoint was trained with, from its ``opt`` (ours or the reference's), or None."""
    opt = ckpt.get('opt')
    return opt.get('model') if isinstance(opt, dict) else None


def load_weights(module, state_dict, what, path, trained_with=None):
    """``module.load_state_dict`` with a one-line error naming the model, the checkpoint's model and the keys."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        own, theirs = set(unwrap(module).state_dict()), set(state_dict)
        strip = lambda k: k.replace('module.', '')                       # noqa: E731
        missing = sorted(own - {strip(k) for k in theirs})[:3]
        unexpected = sorted({strip(k) for k in theirs} - own)[:3]
        lines = [line for line in str(e).splitlines() if 'size mismatch' in line][:1]
        origin = (f'it was trained with --model {trained_with}' if trained_with else
                  'was it trained with another --model?')
        raise UserError(f'{path} does not fit {what} ({origin}): missing keys {missing}, unexpected keys {unexpected}'
                        f'{"; " + lines[0].strip() if lines else ""}')


def check_folder_writable(path):
    """Refuse, before any work, a folder that cannot be created or written (a file in its way, no permission)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f'cannot write to {path}: {existing} is a file, not a folder; choose another path')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f'cannot write to {path}: no write permission on {existing}; choose another path')


class RunFolder:
    """A run's checkpoint folder: refuses to clobber an existing run, resolves ``--resume auto``."""

    def __init__(self, path):
        self.path = path

    def checkpoints(self):
        if not os.path.isdir(self.path):
            return []
        return sorted(f for f in os.listdir(self.path) if f.endswith('.pth'))

    def prepare(self, opt, also=()):
        """Return the checkpoint to resume from (or None), after checking the folder (and ``also``) can be written.

        Writes nothing: a run refused later (a checkpoint that does not fit) must leave no trace.
        """
        for folder in (self.path, *also):
            check_folder_writable(folder)
        resume = opt.resume
        if resume == 'auto':
            current = os.path.join(self.path, 'current.pth')
            resume = current if os.path.isfile(current) else ''
        if resume:
            if not os.path.isfile(resume):
                raise UserError(f'--resume {resume} does not exist (refusing to start from scratch; '
                                f"drop --resume to start a new run, or use --resume auto)")
        elif self.checkpoints() and not opt.overwrite:
            raise UserError(f'{self.path} already holds checkpoints ({", ".join(self.checkpoints()[:3])}); '
                            f'pass --resume auto to continue that run, or --overwrite to start over')
        return resume or None

    def save(self, state, epoch, save_freq):
        """current.pth every epoch, and ckpt_epoch_N.pth every save_freq epochs (then current.pth is a link to it)."""
        current = os.path.join(self.path, 'current.pth')
        if epoch % save_freq == 0 and state.get('resume_step', 0) == 0:
            kept = os.path.join(self.path, f'ckpt_epoch_{epoch}.pth')
            save_checkpoint(state, kept)
            link_checkpoint(kept, current)
        else:
            save_checkpoint(state, current)


# --------------------------------------------------------------------------- data loading

class ResumableSampler(torch.utils.data.Sampler):
    """Shuffled indices from (seed, epoch) alone, split across processes, whole batches only, able to start mid-epoch.

    Its order does not depend on the global RNG, so a run stopped after ``step`` batches and resumed reads
    exactly the batches it would have read. Dropping the last partial batch keeps BatchNorm away from a batch of
    one and gives every process the same number of steps.
    """

    def __init__(self, size, batch_size, seed, rank=0, world_size=1):
        self.size, self.batch_size, self.seed, self.rank, self.world_size = size, batch_size, seed, rank, world_size
        self.epoch, self.start_batch = 1, 0

    def set_epoch(self, epoch, start_batch=0):
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1000003 + self.epoch))
        order = order[self.rank:self.size // self.world_size * self.world_size:self.world_size]
        return order[:len(order) // self.batch_size * self.batch_size]

    def batches_per_epoch(self):
        return len(self._indices()) // self.batch_size

    def __iter__(self):
        return iter(self._indices()[self.start_batch * self.batch_size:].tolist())

    def __len__(self):
        return max(0, len(self._indices()) - self.start_batch * self.batch_size)


def make_loader(dataset, opt, rt, *, seed=0):
    """A training DataLoader of uint8 crops with a :class:`ResumableSampler` and its own generator."""
    sampler = ResumableSampler(len(dataset), opt.batch_size, seed, rank=rt.rank, world_size=rt.world_size)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=opt.batch_size, sampler=sampler, num_workers=opt.num_workers,
        pin_memory=rt.device.type == 'cuda', generator=generator,
        persistent_workers=False)
    return loader


def set_loader_epoch(loader, epoch, start_batch=0):
    """Position a :func:`make_loader` loader at batch ``start_batch`` of ``epoch``.

    The sampler's order and the generator that seeds the workers' RNGs (one draw per ``iter(loader)``) both derive
    from (seed, epoch) alone, so a run resumed at an epoch boundary reads and augments exactly like an uninterrupted
    one whatever the number of workers, and a resume mid-epoch draws nothing extra from a saved stream.
    """
    loader.sampler.set_epoch(epoch, start_batch)
    if loader.generator is not None:
        loader.generator.manual_seed(loader.sampler.seed * 1000003 + epoch + 500009)   # not the sampler's stream


def eval_loader(dataset, opt, rt=None):
    """An in-order loader for evaluation. Its own generator keeps it from drawing on the global RNG, so
    evaluating between epochs does not change what training does next."""
    return torch.utils.data.DataLoader(dataset, batch_size=opt.batch_size, shuffle=False, num_workers=opt.num_workers,
                                       pin_memory=rt is not None and rt.device.type == 'cuda',
                                       generator=torch.Generator())


# --------------------------------------------------------------------------- logging

class TBLogger:
    """TensorBoard scalars through torch.utils.tensorboard, with the old tensorboard_logger's ``log_value``.

    The event file is created with the first value, so a run refused or failing before it logs anything leaves
    no file behind (an existing run's TensorBoard folder stays as it was).
    """

    def __init__(self, log_dir, enabled=True):
        self.log_dir, self.enabled, self.writer = log_dir, enabled, None

    def log_value(self, tag, value, step):
        if self.enabled and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(self.log_dir, exist_ok=True)
            _quiet_no_room_in_threads()
            self.writer = SummaryWriter(log_dir=self.log_dir)
        if self.writer is not None:
            self._guard(lambda: self.writer.add_scalar(tag, float(value), step))

    def flush(self):
        if self.writer is not None:
            self._guard(self.writer.flush)

    def close(self):
        if self.writer is not None:
            self._guard(self.writer.close)
        self.enabled, self.writer = False, None

    def _guard(self, action):
        """A full disk under the event file ends as one UserError (and the logger stops trying)."""
        try:
            action()
        except Exception as e:
            no_room = _no_room_error(e)
            if no_room is None:
                raise
            self.enabled, self.writer = False, None
            raise UserError(f'could not write the TensorBoard log in {self.log_dir}: {no_room.strerror} '
                            f'({_free_mib(self.log_dir)} MiB free there); free some space or point --tb_path at a '
                            f'bigger disk, then resume with --resume auto') from None


def _quiet_no_room_in_threads():
    """TensorBoard writes from a thread, which prints a traceback when the disk is full before the main thread is
    told: keep only the main thread's one line. Other errors in threads are printed as before."""
    if getattr(threading.excepthook, 'quiet_no_room', False):
        return
    previous = threading.excepthook

    def hook(args):
        if _no_room_error(args.exc_value) is None:
            previous(args)
    hook.quiet_no_room = True
    threading.excepthook = hook


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag the epoch loop checks after each step (a scheduler's pre-emption)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:   # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False

    @property
    def requested(self):
        return self.signum is not None

    def adopt(self, votes):
        """Take the signal any process got (votes: how many processes got each of SIGNALS)."""
        got = [s for s, n in zip(self.SIGNALS, votes) if n > 0]
        self.signum = got[0] if got else None

    def agreed(self, rt):
        """Whether to stop now. In a multi-process run every process must stop after the same step (one stopping
        alone would leave the others waiting in DDP's all-reduce), so any process's signal counts for all."""
        if rt.distributed:
            votes = torch.tensor([self.signum == s for s in self.SIGNALS], dtype=torch.float32, device=rt.device)
            dist.all_reduce(votes)                                        # how many processes got each signal
            self.adopt(votes.tolist())
        return self.requested


def progress(iterable, total, desc, enabled):
    """A tqdm bar when the output is a terminal; the plain iterable otherwise (logs stay clean)."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable


# --------------------------------------------------------------------------- the epoch loop

@dataclass
class StepResult:
    """What a script's step function returns: the loss to minimise, the batch size and tensors to average."""
    loss: torch.Tensor
    batch_size: int
    metrics: dict


def format_meters(meters, fields):
    """The reference's console fields: ``name val (avg)``, tab separated."""
    return '\t'.join(f'{label} {meters[key].val:.3f} ({meters[key].avg:.3f})' for key, label in fields)


def train_epoch(*, epoch, loader, sampler, step_fn, optimizer, rt, opt, stop, fields, start_step=0,
                set_lr=None, after_step=None, modules=()):
    """One training epoch shared by the four scripts.

    ``step_fn(batch) -> StepResult`` computes the loss; this loop does timing, the optimiser step through the
    GradScaler (a no-op without float16), ``after_step`` (MoCo's EMA), the non-finite-loss check, the reference's
    console lines, and stopping after the current step on a signal.

    Returns ``(meters, steps_done)``; steps_done < steps per epoch means a signal stopped the epoch.
    """
    for m in modules:
        m.train()
    meters = {key: AverageMeter() for key, _ in fields}
    meters['BT'], meters['DT'] = AverageMeter(), AverageMeter()
    n_batches = sampler.batches_per_epoch()
    step = start_step
    end = time.time()
    for batch in progress(loader, n_batches - start_step, f'epoch {epoch}', rt.is_main):
        meters['DT'].update(time.time() - end)
        if set_lr is not None:
            set_lr(epoch, step, n_batches)
        result = step_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        rt.scaler.scale(result.loss).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
        if after_step is not None:
            after_step()
        # The step's one host sync, after the backward is queued: the loss (to stop on NaN; nothing is saved after
        # a non-finite one), the metrics, and under torchrun every process's signal votes.
        loss_value, metric_values = step_scalars(result, fields, rt, stop)
        if not math.isfinite(loss_value):          # every process sees the same sum: all stop here, one says why
            raise TrainingStopped(
                f'error: the loss is {loss_value} at epoch {epoch}, step {step + 1} of {n_batches}; stopped without '
                f'saving, the last checkpoint is kept as it was. Likely causes: a learning rate too high for this '
                f'batch size, a temperature --nce_t so low that exp(s/T) overflows, or --amp with the NCE loss '
                f'(float16 overflows); try a lower --learning_rate, a higher --nce_t or no --amp.'
                if rt.is_main else '', exit_code=3)
        for (key, _), value in zip(fields, metric_values):
            meters[key].update(value, result.batch_size)
        meters['BT'].update(time.time() - end)
        end = time.time()
        step += 1
        if rt.is_main and (step % opt.print_freq == 0):
            print(f'Train: [{epoch}][{step}/{n_batches}]\tBT {meters["BT"].val:.3f} ({meters["BT"].avg:.3f})\t'
                  f'DT {meters["DT"].val:.3f} ({meters["DT"].avg:.3f})\t' + format_meters(meters, fields), flush=True)
        if stop.requested:                     # already agreed across processes by step_scalars
            break
    return meters, step


def step_scalars(result, fields, rt, stop):
    """The loss and the logged metrics as Python floats, in ONE device-to-host copy (not one sync per metric).

    In a multi-process run one all_reduce carries the loss (summed, so a non-finite loss in any process stops all of
    them at the same step), the metrics (averaged over processes) and the signal votes (so every process stops
    after the same step: one stopping alone would leave the others waiting in DDP's all-reduce).
    """
    device = result.loss.device
    parts = [result.loss.detach().float().reshape(1)]
    parts += [torch.as_tensor(result.metrics[key], device=device).detach().float().reshape(1) for key, _ in fields]
    if rt.distributed:
        parts.append(torch.tensor([stop.signum == s for s in stop.SIGNALS], dtype=torch.float32, device=device))
        values = torch.cat(parts)
        dist.all_reduce(values)
        values[1:1 + len(fields)] /= rt.world_size
    else:
        values = torch.cat(parts)
    host = values.tolist()
    if rt.distributed:
        stop.adopt(host[1 + len(fields):])
    return host[0], host[1:1 + len(fields)]


def stop_message(stop, ckpt_path, epochs_done, resume_step, n_batches, script_argv, launcher=('python',)):
    """The one line a stopped run ends with: where it stopped and the command that continues it."""
    name = signal.Signals(stop.signum).name
    where = (f'at epoch {epochs_done + 1}, step {resume_step} of {n_batches}' if resume_step else
             f'after epoch {epochs_done}')
    command = shlex.join([*launcher, *script_argv, '--resume', ckpt_path])
    return f'stopped by {name} {where}; the position is saved in {ckpt_path}. Resume with: {command}'


# --------------------------------------------------------------------------- k-nearest-neighbour monitor

@torch.no_grad()
def extract_features(encode, loader, rt):
    """Run ``encode`` (uint8 batch on device -> B x D features) over a loader; returns (features, labels) on device."""
    feats, labels = [], []
    for images, target, _ in loader:
        with rt.autocast():
            f = encode(images.to(rt.device, non_blocking=True))
        feats.append(f.float())
        labels.append(torch.as_tensor(target).to(rt.device))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_feats, train_labels, query_feats, n_classes, k=200, t=0.07, chunk=1024):
    """Weighted kNN of Wu et al., 2018 (instance discrimination), eq. in Sec. 3.4.

    Each of the k most similar training features (cosine similarity s_i) votes for its class with weight
    exp(s_i / t); returns the class scores, Q x n_classes. Features are L2-normalised here.
    """
    train_feats = F.normalize(train_feats, dim=1)                  # N x D
    query_feats = F.normalize(query_feats, dim=1)                  # Q x D
    k = min(k, train_feats.shape[0])
    scores = []
    for q in query_feats.split(chunk):
        sim = q @ train_feats.t()                                  # q x N
        top_sim, top_idx = sim.topk(k, dim=1)                      # q x k
        weights = (top_sim / t).exp()
        votes = torch.zeros(q.shape[0], n_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)      # q x C
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(encode, train_loader, val_loader, n_classes, rt, k=200, t=0.07):
    """Top-1 (%) of the weighted kNN classifier on the val split, with features of the (unaugmented) train split."""
    train_feats, train_labels = extract_features(encode, train_loader, rt)
    val_feats, val_labels = extract_features(encode, val_loader, rt)
    pred = knn_predict(train_feats, train_labels, val_feats, n_classes, k, t).argmax(1)
    return (pred == val_labels).float().mean().item() * 100


# --------------------------------------------------------------------------- the run: resume, epochs, save, stop

class Fit:
    """The epoch-level driver shared by the four scripts: resume, epochs, TensorBoard, checkpoints, signals.

    ``modules`` maps checkpoint keys to the modules saved under them (e.g. model, contrast, model_ema or
    classifier); ``extra`` holds plain values saved too (best_acc1). A checkpoint records ``epoch``, the last
    finished epoch (the reference's meaning), and ``resume_step``, the batches already done of the next one.
    """

    def __init__(self, *, opt, rt, run, modules, optimizer, loader, step_fn, fields, tags, train_modules,
                 set_lr, after_step=None, epoch_end=None, extra=None, argv=None, tb_name=None):
        self.opt, self.rt, self.run, self.modules, self.optimizer = opt, rt, run, modules, optimizer
        self.loader, self.sampler = loader, loader.sampler
        self.step_fn, self.fields, self.tags, self.train_modules = step_fn, fields, tags, train_modules
        self.set_lr, self.after_step, self.epoch_end = set_lr, after_step, epoch_end
        self.extra = dict(extra or {})
        self.argv = argv or sys.argv
        self.tb = TBLogger(os.path.join(opt.tb_path, tb_name or opt.model_name), enabled=rt.is_main)
        self.start_epoch, self.start_step = 1, 0

    def rng_states(self):
        """Every process's RNG states, in rank order. A collective in a multi-process run: all processes call it."""
        mine = rng_state()
        if not self.rt.distributed:
            return [mine]
        states = [None] * self.rt.world_size
        dist.all_gather_object(states, mine)
        return states

    def state(self, epoch, resume_step, rngs=None):
        rngs = rngs or [rng_state()]
        state = {'opt': opt_to_dict(self.opt), 'epoch': epoch, 'resume_step': resume_step,
                 'optimizer': self.optimizer.state_dict(), 'rng': rngs[0],
                 'rng_per_process': rngs if len(rngs) > 1 else None}
        for key, module in self.modules.items():
            state[key] = unwrap(module).state_dict()
        if self.rt.scaler.is_enabled() or self.rt.amp_dtype is not None:
            state['amp'] = self.rt.scaler.state_dict()
        state.update(self.extra)
        return state

    def resume(self, path):
        ckpt = load_checkpoint(path)
        for key, module in self.modules.items():
            load_weights(unwrap(module), checkpoint_section(ckpt, key, path), f'the {key} of --model {self.opt.model}',
                         path, trained_model(ckpt))
        if 'optimizer' in ckpt:
            try:
                self.optimizer.load_state_dict(ckpt['optimizer'])
            except (ValueError, KeyError) as e:
                raise UserError(f'{path}: the optimizer state does not fit this run ({e}); was it another script?')
        if ckpt.get('amp') and self.rt.scaler.is_enabled():
            if 'scale' in ckpt['amp']:
                self.rt.scaler.load_state_dict(ckpt['amp'])
            else:                               # the reference's apex loss-scaler state: start a fresh scaler
                self.rt.print(f'{path}: its amp entry is NVIDIA apex state; the GradScaler starts afresh')
        per_process = ckpt.get('rng_per_process')
        if per_process is not None and len(per_process) == self.rt.world_size:
            set_rng_state(per_process[self.rt.rank])
        elif ckpt.get('rng') is not None:
            set_rng_state(ckpt['rng'])
        for key in self.extra:
            if key in ckpt:
                self.extra[key] = ckpt[key]
        self.start_epoch = int(ckpt.get('epoch', 0)) + 1
        self.start_step = int(ckpt.get('resume_step', 0))
        self.rt.print(f"=> resumed from {path}: epoch {self.start_epoch}, step {self.start_step}")

    def __call__(self):
        opt, rt = self.opt, self.rt
        if rt.is_main:
            resume_path = self.run.prepare(opt, also=[self.tb.log_dir])
        else:
            resume_path = opt.resume if opt.resume != 'auto' else ''
        if rt.distributed:                      # every process resumes from what the main one found
            holder = [resume_path]
            dist.broadcast_object_list(holder, src=0)
            resume_path = holder[0]
        if resume_path:
            self.resume(resume_path)
        if rt.is_main:
            os.makedirs(self.run.path, exist_ok=True)
        with StopSignal() as stop:
            for epoch in range(self.start_epoch, opt.epochs + 1):
                set_loader_epoch(self.loader, epoch, self.start_step)
                t0 = time.time()
                meters, steps = train_epoch(
                    epoch=epoch, loader=self.loader, sampler=self.sampler, step_fn=self.step_fn,
                    optimizer=self.optimizer, rt=rt, opt=opt, stop=stop, fields=self.fields,
                    start_step=self.start_step, set_lr=self.set_lr, after_step=self.after_step,
                    modules=self.train_modules)
                if steps < self.sampler.batches_per_epoch():                 # a signal arrived mid-epoch
                    self._stop(stop, epoch - 1, steps)
                self._report_skipped()
                self.start_step = 0
                rt.print(f'epoch {epoch}, total time {time.time() - t0:.2f}')
                for key, tag in self.tags:
                    self.tb.log_value(tag, meters[key].avg if key in meters else self._value(key), epoch)
                if self.epoch_end is not None:
                    self.epoch_end(epoch, meters, self)
                rngs = self.rng_states()
                if rt.is_main:
                    self.run.save(self.state(epoch, 0, rngs), epoch, opt.save_freq)
                self.tb.flush()
                if stop.agreed(rt):                    # a signal during the epoch-end work
                    self._stop(stop, epoch, 0)
        self.tb.close()
        return self.extra

    def _value(self, key):
        if key == 'learning_rate':
            return self.optimizer.param_groups[0]['lr']
        raise KeyError(key)

    def _report_skipped(self):
        """--skip_bad_images: say how many files were skipped (counted where they were read: with --num_workers 0
        here; workers warn once per file instead)."""
        skipped = getattr(self.loader.dataset, 'num_skipped', 0)
        if skipped:
            self.rt.print(f'skipped {skipped} undecodable image{"s" if skipped != 1 else ""} so far '
                          f'(--skip_bad_images)')

    def _stop(self, stop, epochs_done, resume_step):
        """Save the exact position (``epochs_done`` finished epochs plus ``resume_step`` batches) and stop."""
        path = os.path.join(self.run.path, 'current.pth')
        rngs = self.rng_states()
        if self.rt.is_main:
            save_checkpoint(self.state(epochs_done, resume_step, rngs), path)
        self.tb.close()
        argv, rest = [], list(self.argv)        # the resume command replaces the old --resume value
        while rest:
            arg = rest.pop(0)
            if arg == '--resume':
                rest = rest[1:]
            elif not arg.startswith('--resume='):
                argv.append(arg)
        launcher = (f'torchrun --nproc_per_node {self.rt.world_size}' if self.rt.distributed else 'python').split()
        message = stop_message(stop, path, epochs_done, resume_step, self.sampler.batches_per_epoch(), argv, launcher)
        raise TrainingStopped(message if self.rt.is_main else '', exit_code=128 + stop.signum)   # said once


# --------------------------------------------------------------------------- data set-up shared by the scripts

def build_split(opt, split, transform, two_crop=False):
    """``dataset.build_dataset`` for this run's flags (imported here: dataset.py itself imports util)."""
    import dataset as ds
    return ds.build_dataset(opt.dataset, opt.data_folder, split, transform, two_crop=two_crop,
                            download=opt.download, skip_bad_images=opt.skip_bad_images)


def sgd(model, opt):
    """The reference's optimiser for pretraining: SGD with momentum and weight decay over all parameters."""
    return torch.optim.SGD(model.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                           weight_decay=opt.weight_decay)


def check_sizes(opt, n_data, what='the training set'):
    if n_data == 0:
        raise UserError(f'{what} is empty')
    if opt.batch_size > n_data:
        raise UserError(f'--batch_size {opt.batch_size} is larger than {what} ({n_data} images); lower it')
    if getattr(opt, 'nce_k', None) is not None and opt.nce_k >= n_data:
        raise UserError(f'--nce_k {opt.nce_k} must be smaller than {what} ({n_data} images); lower it')


def knn_monitor(opt, rt, encode, modules):
    """An ``epoch_end`` hook printing and logging the weighted kNN top-1 every ``opt.knn_freq`` epochs.

    ``encode`` maps a uint8 batch on the device to B x D features; returns None when there is no labelled val split.
    """
    import dataset as ds
    if opt.knn_freq is None:
        opt.knn_freq = 0 if opt.dataset in ('imagenet', 'imagenet100') else 1
    if opt.knn_freq <= 0 or not rt.is_main:
        return None
    try:
        train_set = build_split(opt, 'train', ds.eval_transform(opt.image_size))
        val_set = build_split(opt, 'val', ds.eval_transform(opt.image_size))
    except UserError:
        rt.print('kNN monitor off: no labelled train/val split found')
        return None
    n_classes = len(train_set.classes)

    def loader(d):
        return eval_loader(d, opt, rt)

    train_loader, val_loader = loader(train_set), loader(val_set)

    def epoch_end(epoch, meters, fit):
        if epoch % opt.knn_freq != 0 and epoch != opt.epochs:
            return
        for m in modules:
            m.eval()
        top1 = knn_accuracy(encode, train_loader, val_loader, n_classes, rt)
        fit.extra['knn_top1'] = top1
        rt.print(f'kNN (k=200, t=0.07) top-1 on val: {top1:.2f}')
        fit.tb.log_value('knn_top1', top1, epoch)

    return epoch_end


# --------------------------------------------------------------------------- linear probing (both probe scripts)

def probe_run_name(opt, prefix=''):
    """``<pretraining run folder>_bsz_..._lr_..._decay_...``: the reference named probes after the checkpoint's folder."""
    pretrain_run = os.path.basename(os.path.dirname(os.path.abspath(opt.model_path)))
    return f'{prefix}{pretrain_run}_bsz_{opt.batch_size}_lr_{opt.learning_rate}_decay_{opt.weight_decay}'


def check_probe(opt):
    check_common(opt, needs=('data_folder', 'model_path', 'save_path', 'tb_path'))
    if not os.path.isfile(opt.model_path):
        raise UserError(f'--model_path {opt.model_path} does not exist: give the pretrained checkpoint (.pth) to probe')


def load_pretrained(make_encoder, opt):
    """Build the encoder with the checkpoint's ``--feat_dim`` and load its ``model`` entry (ours or the reference's,
    ``module.`` keys or not). Returns (encoder, checkpoint)."""
    ckpt = load_checkpoint(opt.model_path)
    pretrain_opt = ckpt.get('opt') if isinstance(ckpt.get('opt'), dict) else {}
    model = make_encoder(pretrain_opt.get('feat_dim', 128))
    load_weights(model, checkpoint_section(ckpt, 'model', opt.model_path), f'--model {opt.model}', opt.model_path,
                 trained_model(ckpt))
    return model, ckpt


class FeatureBN(nn.Module):
    """``--bn``: a parameter-free BatchNorm on the frozen features before the linear layer (2-d or 4-d input)."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, affine=False)

    def forward(self, x):
        if x.dim() == 4:                       # B x C x H x W -> B x C x HW: per-channel statistics, as BatchNorm2d
            return self.bn(x.flatten(2)).view_as(x)
        return self.bn(x)


def run_linear_probe(opt, rt, *, make_encoder, features, make_classifier, train_transform, view, argv,
                     adam=False, cosine=False):
    """Train a linear classifier on frozen features and validate it every epoch (both probe scripts).

    ``make_encoder(feat_dim)`` builds the pretrained architecture; ``features(encoder, x) -> B x C [x H x W]`` runs
    it on a normalised batch; ``make_classifier(C, n)`` builds the head for C feature channels and n classes.
    """
    import dataset as ds
    run = RunFolder(os.path.join(opt.save_path, opt.model_name))
    encoder, ckpt = load_pretrained(make_encoder, opt)
    rt.place(encoder).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    rt.print(f"==> loaded pretrained {opt.model_path} (epoch {ckpt.get('epoch', '?')})")
    view = view.to(rt.device)

    @torch.no_grad()
    def frozen(images):
        with rt.autocast():
            return features(encoder, view(images.to(rt.device, non_blocking=True))).float()

    train_set = build_split(opt, 'train', ds.eval_transform(opt.image_size) if opt.cache_features
                            else train_transform)
    val_set = build_split(opt, 'val', ds.eval_transform(opt.image_size))
    check_sizes(opt, len(train_set))
    n_label = len(train_set.classes)
    rt.print(f'number of train: {len(train_set)}, number of val: {len(val_set)}, classes: {n_label}')
    val_loader = eval_loader(val_set, opt, rt)
    probe_images = next(iter(val_loader))[0][:2]
    channels = frozen(probe_images).shape[1]
    classifier = make_classifier(channels, n_label).to(rt.device)
    feature_bn = FeatureBN(channels).to(rt.device) if opt.bn else None

    if opt.cache_features:                    # the frozen encoder runs once, not once per epoch
        cached = [(f.cpu(), t) for f, t in zip(*_features_and_targets(frozen, train_set, opt))]
        train_set = _CachedFeatures(cached)
        val_feats = list(zip(*_features_and_targets(frozen, val_set, opt)))
        val_source = [(f.unsqueeze(0), torch.as_tensor([t])) for f, t in val_feats]
        val_batches = _batched(val_source, opt.batch_size)
    loader = make_loader(train_set, opt, rt, seed=opt.seed or 0)

    params = list(classifier.parameters())
    if adam:
        optimizer = torch.optim.Adam(params, lr=opt.learning_rate, betas=(opt.beta1, opt.beta2),
                                     weight_decay=opt.weight_decay, eps=1e-8)
    else:
        optimizer = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay)
    criterion = nn.CrossEntropyLoss()

    # Several processes train one classifier: DDP averages its gradients (--syncBN also syncs the --bn statistics).
    trained_head = rt.wrap(_ProbeHead(feature_bn, classifier), sync_bn=getattr(opt, 'syncBN', False))
    classifier = unwrap(trained_head).classifier

    def head(feat):
        return trained_head(feat)

    def step(batch):
        inputs, target, _ = batch
        feat = inputs.to(rt.device, non_blocking=True).float() if opt.cache_features else frozen(inputs)
        target = target.to(rt.device, non_blocking=True)
        with rt.autocast():
            output = head(feat)
        output = output.float()
        loss = criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, min(5, n_label)))
        return StepResult(loss=loss, batch_size=target.shape[0],
                          metrics={'loss': loss, 'acc1': acc1[0], 'acc5': acc5[0]})

    def set_lr(epoch, step_in_epoch, n_batches):
        lr = cosine_learning_rate(epoch, opt) if cosine else adjust_learning_rate(epoch, opt, optimizer)
        if getattr(opt, 'warm', False):
            lr *= warmup_factor(epoch, step_in_epoch, n_batches, opt.warm_epochs)
        for group in optimizer.param_groups:
            group['lr'] = lr

    @torch.no_grad()
    def validate():
        trained_head.eval()
        meters = {k: AverageMeter() for k in ('loss', 'acc1', 'acc5')}
        batches = val_batches if opt.cache_features else ((frozen(x), t) for x, t, _ in val_loader)
        for i, (feat, target) in enumerate(batches):
            target = target.to(rt.device)
            output = head(feat.to(rt.device)).float()
            acc1, acc5 = accuracy(output, target, topk=(1, min(5, n_label)))
            n = target.shape[0]
            batch = torch.cat([criterion(output, target).reshape(1), acc1, acc5]).tolist()   # one sync per batch
            for key, value in zip(('loss', 'acc1', 'acc5'), batch):
                meters[key].update(value, n)
            if (i + 1) % opt.print_freq == 0:
                rt.print(f'Test: [{i + 1}/{len(val_loader)}]\t' + format_meters(
                    meters, [('loss', 'Loss'), ('acc1', 'Acc@1'), ('acc5', 'Acc@5')]))
        rt.print(f" * Acc@1 {meters['acc1'].avg:.3f} Acc@5 {meters['acc5'].avg:.3f}")
        return meters

    log_path = os.path.join(run.path, opt.log)

    def epoch_end(epoch, meters, fit):
        test = validate()
        for key, tag in (('acc1', 'test_acc'), ('acc5', 'test_acc5'), ('loss', 'test_loss')):
            fit.tb.log_value(tag, test[key].avg, epoch)
        fit.extra['last_acc1'], fit.extra['last_acc5'] = test['acc1'].avg, test['acc5'].avg
        if rt.is_main:
            with open(log_path, 'a') as f:
                f.write(f"epoch {epoch} time {time.strftime('%Y-%m-%d %H:%M:%S')} train_loss {meters['loss'].avg:.4f} "
                        f"train_acc {meters['acc1'].avg:.3f} test_loss {test['loss'].avg:.4f} "
                        f"test_acc {test['acc1'].avg:.3f} test_acc5 {test['acc5'].avg:.3f}\n")
        if test['acc1'].avg > fit.extra['best_acc1']:
            fit.extra['best_acc1'], fit.extra['best_acc5'] = test['acc1'].avg, test['acc5'].avg
            if rt.is_main:
                rt.print('saving best model!')
                save_checkpoint(fit.state(epoch, 0), os.path.join(run.path, f'{opt.model}_layer{opt.layer}.pth'))

    modules = {'classifier': unwrap(trained_head).classifier}
    if feature_bn is not None:
        modules['feature_bn'] = unwrap(trained_head).bn
    fit = Fit(opt=opt, rt=rt, run=run, modules=modules, optimizer=optimizer, loader=loader, step_fn=step,
              train_modules=list(modules.values()),
              fields=[('loss', 'Loss'), ('acc1', 'Acc@1'), ('acc5', 'Acc@5')],
              tags=[('acc1', 'train_acc'), ('acc5', 'train_acc5'), ('loss', 'train_loss'),
                    ('learning_rate', 'learning_rate')],
              set_lr=set_lr, epoch_end=epoch_end, argv=argv, tb_name=f'{opt.model_name}_layer{opt.layer}',
              extra={'best_acc1': 0.0, 'best_acc5': 0.0, 'last_acc1': 0.0, 'last_acc5': 0.0})
    result = fit()
    rt.print(f"best Acc@1 {result['best_acc1']:.3f} (Acc@5 {result['best_acc5']:.3f})")
    return result


def _features_and_targets(frozen, data, opt):
    loader = eval_loader(data, opt)
    feats, targets = [], []
    for x, t, _ in loader:
        feats.append(frozen(x).cpu())
        targets.append(torch.as_tensor(t))
    return torch.cat(feats), torch.cat(targets).tolist()


class _ProbeHead(nn.Module):
    """The optional parameter-free BatchNorm followed by the linear classifier."""

    def __init__(self, bn, classifier):
        super().__init__()
        self.bn, self.classifier = bn, classifier

    def forward(self, feat):
        return self.classifier(self.bn(feat) if self.bn is not None else feat)


class _CachedFeatures(torch.utils.data.Dataset):
    """Precomputed (feature, target) pairs served as (feature, target, index), like the image data sets."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        f, t = self.pairs[i]
        return f, t, i


def _batched(pairs, batch_size):
    batches = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        batches.append((torch.cat([f for f, _ in chunk]), torch.cat([t for _, t in chunk])))
    return batches
