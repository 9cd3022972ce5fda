"""The runtime: device choice, the torchrun process group, mixed precision, seeds and RNG state."""
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from engine.errors import UserError


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
    """The model inside a DDP (or DataParallel) wrapper; the model itself otherwise."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def setup_runtime(opt):
    """Pick the device, join the torchrun process group if there is one, seed, and set up mixed precision."""
    use_cuda = _wants_cuda(opt.device, opt.gpu)
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank, local_rank = 0, 0
    if world_size > 1:
        rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    choose_seed(opt, rank, world_size)
    if use_cuda:
        index = local_rank if world_size > 1 else (opt.gpu or 0)
        torch.cuda.set_device(index)          # so pinned memory, RNG and capability checks use this GPU, not GPU 0
        device = torch.device('cuda', index)
        torch.backends.cudnn.benchmark = opt.seed_drawn         # autotuned kernels unless --seed asks to repeat
    else:
        device = torch.device('cpu')
    seed_everything(opt.seed + rank)
    amp_dtype = _amp_dtype(device, rank) if opt.amp else None
    # The scaler only matters for float16; disabled it is a no-op, so the step code is the same either way.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Runtime(device=device, rank=rank, world_size=world_size, amp_dtype=amp_dtype, scaler=scaler)


def choose_seed(opt, rank=0, world_size=1):
    """Without --seed, draw one (the same in every process), say it and keep it in ``opt`` (so in the checkpoint):
    otherwise every run would read its data in the same order. ``opt.seed_drawn`` records which it was."""
    opt.seed_drawn = opt.seed is None
    if not opt.seed_drawn:
        return
    holder = [int.from_bytes(os.urandom(4), 'little') % 2 ** 31]
    if world_size > 1:
        dist.broadcast_object_list(holder, src=0)
    opt.seed = holder[0]
    if rank == 0:
        print(f'no --seed given: drew seed {opt.seed} (pass --seed {opt.seed} to repeat this run)', flush=True)


def _wants_cuda(device, gpu):
    """Whether to run on CUDA: --device cuda or --gpu N ask for it (and fail without it), auto takes it if present."""
    want = 'cuda' if gpu is not None else device
    if want == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda (or --gpu) was given but no CUDA device is available; use --device cpu')
    return want == 'cuda' or (want == 'auto' and torch.cuda.is_available())


def _amp_dtype(device, rank):
    """bfloat16 where the device computes it natively (and always on the CPU), else float16 with a GradScaler."""
    # CPU autocast only has bfloat16; without hardware support it is emulated, correct but slower than float32.
    native = native_bf16(device)
    if device.type == 'cpu' and not native and rank == 0:
        print('note: this CPU has no native bfloat16, so --amp will be slower than float32 here')
    return torch.bfloat16 if device.type == 'cpu' or native else torch.float16


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
