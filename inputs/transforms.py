"""The per-image transforms of the loader workers: CMC's and InsDis / MoCo's training crops, the probes' evaluation
crop (all uint8 C x H x W out: ``views`` converts on the device), and the reference's per-image CPU pipelines
(``reference_cmc_transform``, ``reference_views_transform``: ``--color_on_cpu``, benchmarks, equivalence tests)."""
from torchvision import transforms

from engine.errors import UserError
from inputs.crops import FastRandomResizedCrop
from views.colour import VIEW_STATS, canonical_space
from views.reference import ColourConversion, ReferenceViewStack


def cmc_train_transform(image_size=224, crop_low=0.2, fast=True):
    """CMC pretraining crops: RandomResizedCrop(scale=(crop_low, 1)), horizontal flip -> uint8.

    fast (the default): `inputs.crops.FastRandomResizedCrop`, the same seeded crops and flips resized by torch's uint8
    antialiased kernel (~2.5x PIL per core), pixels within 1 uint8 level of torchvision's. fast=False: torchvision's
    transforms, bit-identical to the reference's crops (what `reference_cmc_transform` uses)."""
    if fast:
        return FastRandomResizedCrop(image_size, scale=(crop_low, 1.0))
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(crop_low, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])


MOCO_AUGMENTATIONS = ('NULL', 'CJ')


def moco_train_transform(image_size=224, crop=0.2, aug='CJ', color_on_cpu=False):
    """InsDis / MoCo crops: 'CJ' adds RandomGrayscale(0.2) and ColorJitter(0.4 x 4); 'NULL' does not.

    uint8 3 x H x W (``views.DeviceView('RGB')`` normalises on the device); ``color_on_cpu``: the reference's
    ToTensor + Normalize(ImageNet statistics) per image instead, float32 3 x H x W."""
    if aug not in MOCO_AUGMENTATIONS:
        raise UserError(f"unknown augmentation {aug!r}: choose one of {', '.join(MOCO_AUGMENTATIONS)}")
    steps = [transforms.RandomResizedCrop(image_size, scale=(crop, 1.0))]
    if aug == 'CJ':
        steps += [transforms.RandomGrayscale(p=0.2), transforms.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    steps.append(transforms.RandomHorizontalFlip())
    steps += ([transforms.ToTensor(), transforms.Normalize(*VIEW_STATS['RGB'])] if color_on_cpu
              else [transforms.PILToTensor()])
    return transforms.Compose(steps)


def eval_transform(image_size=224):
    """Linear-probe validation: Resize(image_size * 256 / 224), CenterCrop(image_size) -> uint8."""
    return transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))),
        transforms.CenterCrop(image_size),
        transforms.PILToTensor(),
    ])


def reference_cmc_transform(image_size=224, crop_low=0.2, space='Lab'):
    """The reference's CPU pipeline: crop, flip, scikit-image conversion (float64), ToTensor, Normalize.

    ToTensor does not rescale float arrays, so values stay in the space's units until Normalize;
    the output is a float64 C x H x W tensor, as the reference produced. 'RGB' goes through
    ToTensor's usual /255 on the PIL image. Same seed -> same crop as cmc_train_transform.
    """
    space = canonical_space(space)
    mean, std = VIEW_STATS[space]
    steps = [transforms.RandomResizedCrop(image_size, scale=(crop_low, 1.0)), transforms.RandomHorizontalFlip()]
    if space != 'RGB':
        steps.append(ColourConversion(space, use_skimage=True))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def reference_views_transform(image_size=224, crop_low=0.2, views=('L', 'ab')):
    """``--color_on_cpu``: the reference's per-image CPU pipeline for CMC's named views: torchvision's
    RandomResizedCrop and flip on the PIL image (the same draws as ``cmc_train_transform(fast=False)``), then
    ``ReferenceViewStack``. Views that are one colour space's channels in order (L ab, Y CbCr) get exactly
    ``reference_cmc_transform``, the reference's transform; any other set of colour views (``--views L ab S``)
    converts each space it needs the same way. Returns float64 sum(C_v) x H x W."""
    views = tuple(views)
    stack = ReferenceViewStack(views)                      # refuses views it cannot convert
    picked = [(space, channel) for space, channels in (stack.picked[view] for view in views) for channel in channels]
    if len(stack.converters) == 1 and [channel for _, channel in picked] == [0, 1, 2]:
        return reference_cmc_transform(image_size, crop_low, picked[0][0])
    return transforms.Compose([transforms.RandomResizedCrop(image_size, scale=(crop_low, 1.0)),
                               transforms.RandomHorizontalFlip(), stack])


__all__ = ['cmc_train_transform', 'MOCO_AUGMENTATIONS', 'moco_train_transform', 'eval_transform',
           'reference_cmc_transform', 'reference_views_transform']
