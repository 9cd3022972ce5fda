"""The runtime: device choice, the torchrun process group, mixed precision, --compile, seeds and RNG state."""
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
    local_rank: int = 0
    n_data_parallel: int = 1                   # GPUs one process drives through nn.DataParallel (1: none)
    amp_dtype: torch.dtype = None
    scaler: torch.amp.GradScaler = field(default=None, repr=False)
    # Where processes vote on stopping each step: a gloo group, so the vote is a CPU message that never waits on the
    # GPU's stream (None: the default group, already gloo on the CPU).
    signal_group: object = field(default=None, repr=False)

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def is_local_main(self):
        """The first process of its node (LOCAL_RANK 0): the one that writes a node's checkpoints when the nodes do
        not share a file system (``engine.fit.Fit``)."""
        return self.local_rank == 0

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

    def wrap(self, model, sync_bn=False, unused_parameters=False):
        """Wrap a trained model: DDP under torchrun, nn.DataParallel when one process drives several GPUs (the
        reference's recipes; each GPU runs a replica on its slice of the batch, the outputs are gathered on the
        first GPU, where memory banks, queue and losses stay), the model itself otherwise.
        ``unused_parameters``: some parameters get no gradient in every step (the predictive baseline never uses
        the encoders' heads); DDP then has to look for them, or it stops at the second step."""
        if self.n_data_parallel > 1:                                       # device_ids[0] is self.device
            return nn.DataParallel(AutocastIn(model, self), device_ids=list(range(self.n_data_parallel)))
        if not self.distributed:
            return model
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == 'cuda' else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused_parameters)

    def broadcast_norm_buffers(self, *modules):
        """Give every process rank 0's BatchNorm running statistics. DDP re-broadcasts them before each forward, so
        after an epoch's last step each process holds its own: evaluating or saving then would mix encoders."""
        if self.distributed:
            for module in modules:
                for m in unwrap(module).modules():
                    if isinstance(m, nn.modules.batchnorm._NormBase):
                        for tensor in m.buffers():
                            dist.broadcast(tensor.data, src=0)

    def broadcast(self, module):
        """Give every process rank 0's parameters and buffers (a memory bank or key encoder not under DDP)."""
        if self.distributed:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)
        return module

    def print(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def gather_shards(self, rows):
        """Put back together a tensor computed on ``engine.data.ShardSampler`` shards: this process holds rows
        rank, rank + W, ... of an N-row result (N_r x ...); every process gets all N rows, in order (N x ...).
        The identity in a single process."""
        if not self.distributed:
            return rows
        counts = torch.tensor([rows.shape[0]], device=rows.device)
        sizes = [torch.zeros_like(counts) for _ in range(self.world_size)]
        dist.all_gather(sizes, counts)
        total, most = sum(int(n) for n in sizes), max(int(n) for n in sizes)
        padded = rows.new_zeros((most, *rows.shape[1:]))
        padded[:rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        # row m of process r is row m * W + r of the result; shorter shards are only short at the end
        return torch.stack(parts, 1).reshape(most * self.world_size, *rows.shape[1:])[:total]

    def all_sum(self, values):
        """The sum over processes of a 1-d float tensor (itself in a single process)."""
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values)
        return values


class AutocastIn(nn.Module):
    """Runs ``module`` under ``rt.autocast()`` inside each DataParallel replica: autocast is thread-local, and
    DataParallel's replica threads re-enter it with the device's default dtype (float16 on CUDA), not --amp's."""

    def __init__(self, module, rt):
        super().__init__()
        self.module, self.rt = module, rt

    def forward(self, *args, **kwargs):
        with self.rt.autocast():
            return self.module(*args, **kwargs)


def unwrap(model):
    """The model inside DDP or DataParallel wrappers; the model itself otherwise (checkpoints save this one, so
    their keys never start with ``module.``)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel, AutocastIn)):
        model = model.module
    return model


def choose_parallel(n_visible_gpus, world_size, gpu_flag=None, device_flag='auto', torchrun=False):
    """How a script uses the machine, as a pure function of what it sees (tested on the CPU):
    'ddp' when torchrun started several processes (WORLD_SIZE > 1); 'dataparallel' when one process that torchrun
    did not start sees several GPUs and was neither pinned to one (--gpu N) nor sent to the CPU (--device cpu);
    'single' otherwise (torchrun --nproc_per_node 1 included: one process per GPU is what torchrun asks for)."""
    if world_size > 1:
        return 'ddp'
    if torchrun or device_flag == 'cpu' or gpu_flag is not None or n_visible_gpus < 2:
        return 'single'
    return 'dataparallel'


def setup_runtime(opt):
    """Pick the device, join the torchrun process group if there is one, seed, and set up mixed precision."""
    use_cuda = _wants_cuda(opt.device, opt.gpu)
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank, local_rank = 0, 0
    torchrun = 'TORCHELASTIC_RUN_ID' in os.environ or 'LOCAL_RANK' in os.environ
    _check_gpu_flag(opt.gpu, use_cuda, torchrun)
    signal_group = None
    if world_size > 1:
        rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
        signal_group = dist.new_group(backend='gloo') if use_cuda else None
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
    n_gpus = torch.cuda.device_count() if use_cuda else 0
    mode = choose_parallel(n_gpus, world_size, opt.gpu, opt.device, torchrun)
    rt = Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank, amp_dtype=amp_dtype,
                 scaler=scaler, n_data_parallel=n_gpus if mode == 'dataparallel' else 1, signal_group=signal_group)
    if mode == 'dataparallel':
        rt.print(f'using {n_gpus} GPUs in one process (nn.DataParallel, as the reference; memory bank, queue and '
                 f'losses on cuda:0); torchrun --nproc_per_node {n_gpus} (DDP) is faster, and --gpu N uses one GPU')
    return rt


# torch.compile's backend for --compile. inductor generates kernels (C++ on the CPU: ~75 s for resnet18v1);
# aot_eager traces the same graphs, forward and backward, and runs them with eager kernels (what tests use: seconds).
COMPILE_BACKEND_ENV = 'CMC_COMPILE_BACKEND'


def compile_in_place(module):
    """``torch.compile`` ``module`` in place (``nn.Module.compile``) and return it. In place, not
    ``torch.compile(module)``: a wrapper would add ``_orig_mod.`` to every state-dict key, so checkpoints would change
    and resume break; here keys, parameters and optimizer state are the module's own. Compiling happens at the
    first call (and again for each new input shape or train/eval mode). Backend: $CMC_COMPILE_BACKEND, default
    inductor; an unknown name is a UserError."""
    backend = os.environ.get(COMPILE_BACKEND_ENV) or 'inductor'
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(f'{COMPILE_BACKEND_ENV}={backend!r} is not a torch.compile backend; choose one of '
                        f'{", ".join(sorted(known))}')
    module.compile(backend=backend)
    return module


def choose_seed(opt, rank=0, world_size=1):
    """Without --seed, draw one (the same in every process), say it and keep it in ``opt`` (so in the checkpoint):
    otherwise every run would read its data in the same order. ``opt.seed_drawn`` records which it was."""
    opt.seed_drawn = opt.seed is None
    if not opt.seed_drawn:
        return
    holder = [int.from_bytes(os.urandom(4), 'little') % 2 ** 31]
    if world_size > 1:
        dist.broadcast_object_list(holder, src=0)
    opt.seed = holder[0]                       # said by the fit driver, once it knows whether the run resumes


def _check_gpu_flag(gpu, use_cuda, torchrun):
    """--gpu N names a GPU this process can see, and is not given under torchrun (each process takes LOCAL_RANK)."""
    if gpu is None:
        return
    if torchrun:
        raise UserError(f'--gpu {gpu} with torchrun: each process uses the GPU of its LOCAL_RANK; drop --gpu (choose '
                        f'the GPUs with CUDA_VISIBLE_DEVICES)')
    if use_cuda and not 0 <= gpu < torch.cuda.device_count():
        raise UserError(f'--gpu {gpu}: this process sees {torch.cuda.device_count()} GPU(s), numbered from 0 '
                        f'(CUDA_VISIBLE_DEVICES renumbers them)')


def _wants_cuda(device, gpu):
    """Whether to run on CUDA: --device cuda or --gpu N ask for it (and fail without it), auto takes it if present."""
    want = 'cuda' if gpu is not None else device
    if want == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda (or --gpu) was given but no CUDA device is available; use --device cpu')
    return want == 'cuda' or (want == 'auto' and torch.cuda.is_available())


def _amp_dtype(device, rank):
    """bfloat16 where the device computes it natively (and always on the CPU), else float16 with a GradScaler.
    The environment variable CMC_AMP_DTYPE=float16|bfloat16 forces one (to test the float16 + GradScaler path on
    a CPU or a bfloat16 GPU)."""
    forced = os.environ.get('CMC_AMP_DTYPE')
    if forced:
        if forced not in ('float16', 'bfloat16'):
            raise UserError(f'CMC_AMP_DTYPE must be float16 or bfloat16, got {forced!r}')
        return getattr(torch, forced)
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
