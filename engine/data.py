"""Data loading: the resumable sampler, training and evaluation loaders, and a data set's size against the flags.
The data sets themselves are built by the ``inputs`` package and handed in."""
import signal

import torch

from engine.errors import UserError


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


# Mixes a process's rank into a seed. torch's CPU generator keeps only a seed's low 32 bits, so not rank << 32: an
# odd multiplier (2^32 / golden ratio) spreads ranks over all 32 bits, away from the small (seed, epoch) offsets.
RANK_MIX = 0x9E3779B1


def make_loader(dataset, opt, rt, *, seed=0, sharded=False):
    """A training DataLoader of uint8 crops with a :class:`ResumableSampler` and its own generator. ``sharded``:
    ``dataset`` is already this process's own share (the probe's cached features), so the sampler shuffles all of
    it, with a stream of its own per process."""
    rank, world = (0, 1) if sharded else (rt.rank, rt.world_size)
    seed = seed + (rt.rank * RANK_MIX if sharded else 0)
    sampler = ResumableSampler(len(dataset), opt.batch_size, seed, rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(seed)
    loader = Loader(
        dataset, batch_size=opt.batch_size, sampler=sampler, num_workers=opt.num_workers,
        pin_memory=rt.device.type == 'cuda', generator=generator,
        persistent_workers=False, worker_init_fn=ignore_stop_signals)
    return loader


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers start with SIGTERM and SIGINT blocked; :func:`ignore_stop_signals` (its
    ``worker_init_fn``) unblocks them once its handlers are in place. Without the block, a signal sent to the process
    group while an epoch's workers start (a scheduler stopping the run just after a checkpoint) reaches a new worker
    before ``worker_init_fn`` has run, under torch's own worker handler, which ends the worker: the run then fails
    with "DataLoader worker ... killed by signal" instead of saving and exiting 143. Only the thread that starts the
    workers blocks, and only while it does; a signal that arrives meanwhile is delivered when it unblocks. Workers
    must be forked (Linux's default start method), so that they inherit the block."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id=None):
    """A DataLoader ``worker_init_fn``: workers ignore SIGINT and their first SIGTERM. A scheduler (Slurm,
    ``timeout``, Ctrl-C) signals the whole process group; the main process then finishes its step, saves and exits
    143, and its workers are shut down by the loader, instead of dying first and ending the run with "DataLoader
    worker is killed by signal". A second SIGTERM is the loader's own ``terminate()`` of a worker slow to stop: it
    must still work, or the main process would wait for that worker forever at exit. Then it unblocks the signals
    that :class:`Loader` blocked while starting the worker (one that came meanwhile arrives now, and is ignored)."""
    signal.signal(signal.SIGTERM, _restore_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _restore_sigterm(signum, frame):
    """The first SIGTERM in a worker: ignored; the next one ends it (the default action)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def set_loader_epoch(loader, epoch, start_batch=0):
    """Position a :func:`make_loader` loader at batch ``start_batch`` of ``epoch``.

    The sampler's order and the generator that seeds the workers' RNGs (one draw per ``iter(loader)``) both derive
    from (seed, epoch, rank) alone, so a run resumed at an epoch boundary reads and augments exactly like an
    uninterrupted one whatever the number of workers, and a resume mid-epoch draws nothing extra from a saved stream.
    The rank is mixed in (as rank x RANK_MIX, so rank 0's stream is the single-process one) so that the processes of
    a torchrun job draw different crops; with --num_workers 0 the process's own RNG, seeded with seed + rank, does.
    """
    loader.sampler.set_epoch(epoch, start_batch)
    if loader.generator is not None:                   # not the sampler's stream; another one per process
        loader.generator.manual_seed(loader.sampler.seed * 1000003 + epoch + 500009 + loader.sampler.rank * RANK_MIX)


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + W, rank + 2W, ... (W processes): every image in exactly one process, none padded or
    repeated, so sums over processes are sums over the data set (``Runtime.gather_shards`` puts them back in order).
    """

    def __init__(self, size, rank=0, world_size=1):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.size, self.world_size))


def eval_loader(dataset, opt, rt=None, shard=False):
    """An in-order loader for evaluation. Its own generator keeps it from drawing on the global RNG, so
    evaluating between epochs does not change what training does next. ``shard``: this process's share only
    (:class:`ShardSampler`; all of it in a single process)."""
    sampler = ShardSampler(len(dataset), rt.rank, rt.world_size) if shard and rt is not None else None
    return Loader(dataset, batch_size=opt.batch_size, sampler=sampler, num_workers=opt.num_workers,
                  pin_memory=rt is not None and rt.device.type == 'cuda', generator=torch.Generator(),
                  worker_init_fn=ignore_stop_signals)


def check_sizes(opt, n_data, what='the training set', nce_k=None):
    """Refuse, before any work, a data set too small for --batch_size (or for --nce_k negatives)."""
    if n_data == 0:
        raise UserError(f'{what} is empty: check --data_folder and --dataset')
    if opt.batch_size > n_data:
        raise UserError(f'--batch_size {opt.batch_size} is larger than {what} ({n_data} images); lower it')
    if nce_k is not None and nce_k >= n_data:
        raise UserError(f'--nce_k {nce_k} must be smaller than {what} ({n_data} images); lower it')
