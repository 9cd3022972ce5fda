"""Data loading: the resumable sampler, training and evaluation loaders, splits and their sizes."""
import numpy as np
import torch

import dataset as ds
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


def build_split(opt, split, transform, two_crop=False):
    """``dataset.build_dataset`` for this run's flags."""
    return ds.build_dataset(opt.dataset, opt.data_folder, split, transform, two_crop=two_crop,
                            download=opt.download, skip_bad_images=opt.skip_bad_images)


def align_classes(train_set, val_set, say):
    """Number the val split's labels as the train split's, by class name (each split lists its own class folders,
    so a val folder lacking a class would otherwise shift every later label). Says so in one line when val lacks
    classes; a val class that train lacks is a UserError (``dataset.class_map``)."""
    if list(val_set.classes) == list(train_set.classes):
        return
    missing = [name for name in train_set.classes if name not in val_set.classes]
    val_set.relabel(train_set.classes)
    if missing:
        say(f'note: the val split lacks {len(missing)} of the {len(train_set.classes)} train classes '
            f'({", ".join(missing[:5])}{", ..." if len(missing) > 5 else ""}); its labels follow the train split\'s '
            f'numbering, by class name')


def check_sizes(opt, n_data, what='the training set', nce_k=None):
    """Refuse, before any work, a data set too small for --batch_size (or for --nce_k negatives)."""
    if n_data == 0:
        raise UserError(f'{what} is empty')
    if opt.batch_size > n_data:
        raise UserError(f'--batch_size {opt.batch_size} is larger than {what} ({n_data} images); lower it')
    if nce_k is not None and nce_k >= n_data:
        raise UserError(f'--nce_k {nce_k} must be smaller than {what} ({n_data} images); lower it')


COLOUR_SAMPLE = 32      # images looked at: a few dozen, decoded once, before any training
GREY_SPREAD = 2         # max |R-G|, |G-B| in uint8 levels of a grayscale image (JPEG rounding leaves 1-2)
COLOUR_VIEWS = {'Lab': 'ab', 'YCbCr': 'CbCr'}


def check_colour(dataset, view, say, advice, sample=COLOUR_SAMPLE):
    """Refuse a data set whose images carry no colour when a view needs it: a grayscale image's ab (CbCr) channels
    are constant, so that encoder would learn nothing while the run looks normal. Looks at ``sample`` images spread
    evenly over the set; all grayscale is a UserError ending with ``advice``, some grayscale is one line of note."""
    if view not in COLOUR_VIEWS:
        return
    picks = sorted(set(np.linspace(0, len(dataset) - 1, min(sample, len(dataset))).round().astype(int).tolist()))
    grey = seen = 0
    for index in picks:
        try:
            pixels = np.asarray(dataset.image(index), dtype=np.int16)      # H x W x 3
        except (OSError, ValueError, SyntaxError):                         # a bad file is the loader's to report
            continue
        seen += 1
        grey += int((pixels.max(axis=2) - pixels.min(axis=2)).max() <= GREY_SPREAD)
    chroma = COLOUR_VIEWS[view]
    if seen and grey == seen:
        raise UserError(f'--view {view} needs colour images, but all {seen} images sampled from the training set are '
                        f'grayscale (equal R, G and B), so its {chroma} view would be constant; {advice}')
    if grey:
        say(f'note: {grey} of {seen} images sampled from the training set ({100 * grey / seen:.0f}%) are grayscale: '
            f'their {chroma} view is constant')
