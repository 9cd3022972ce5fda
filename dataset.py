"""Data: transforms, instance data sets and data-set builders; the colour views live in ``colour`` and are
re-exported here under the reference's names (``RGB2Lab``, ``RGB2YCbCr``, ...).

Design (a deliberate departure from the reference, which converted colours in float64 on the CPU
workers, one image at a time): the data loader hands **uint8 crops** (B x 3k x H x W) to
`colour.DeviceView`, which converts colour spaces and normalises the whole batch in float32 on whatever
device the batch is on. The reference CPU path is kept (`reference_cmc_transform`, and
`reference_views_transform` for any set of colour views) for benchmarks, equivalence tests and ``--color_on_cpu``.
"""

import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

import cpu_pipeline
from colour import *  # noqa: F401,F403  the colour names, importable from here as in the reference
from colour import COLOUR_VIEWS, VIEW_STATS, canonical_space
from colour_reference import *  # noqa: F401,F403  RGB2Lab, RGB2YCbCr, ..., as in the reference
from colour_reference import ColourConversion
from dataset_files import STL10_CLASSES, read_cifar10, read_fashion_mnist, read_stl10  # noqa: F401  (STL10_CLASSES)
from engine.errors import MissingSplit, UserError

# ---------------------------------------------------------------------------------------------
# Transforms (PIL in, or read_rgb's uint8 tensor for cmc_train_transform; uint8 C x H x W out; DeviceView does the rest)
# ---------------------------------------------------------------------------------------------

def cmc_train_transform(image_size=224, crop_low=0.2, fast=True):
    """CMC pretraining crops: RandomResizedCrop(scale=(crop_low, 1)), horizontal flip -> uint8.

    fast (the default): `cpu_pipeline.FastRandomResizedCrop`, the same seeded crops and flips resized by torch's uint8
    antialiased kernel (~2.5x PIL per core), pixels within 1 uint8 level of torchvision's. fast=False: torchvision's
    transforms, bit-identical to the reference's crops (what `reference_cmc_transform` uses)."""
    if fast:
        return cpu_pipeline.FastRandomResizedCrop(image_size, scale=(crop_low, 1.0))
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(crop_low, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])


MOCO_AUGMENTATIONS = ('NULL', 'CJ')


def moco_train_transform(image_size=224, crop=0.2, aug='CJ', color_on_cpu=False):
    """InsDis / MoCo crops: 'CJ' adds RandomGrayscale(0.2) and ColorJitter(0.4 x 4); 'NULL' does not.

    uint8 3 x H x W (``colour.DeviceView('RGB')`` normalises on the device); ``color_on_cpu``: the reference's
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


class ReferenceViewStack:
    """PIL RGB crop -> C x H x W float64 tensor: the named colour views (``colour.COLOUR_VIEWS``) as the reference
    made them per image on the CPU: each colour space by scikit-image in float64, ToTensor (no rescaling of a float
    array), Normalize(``VIEW_STATS[space]``); then each view's channels, concatenated in ``views`` order, the
    layout ``colour.ViewStack`` makes on the device. A view read from files is a UserError."""

    def __init__(self, views):
        self.views = tuple(views)
        unsupported = [view for view in self.views if view not in COLOUR_VIEWS]
        if unsupported:
            raise UserError(f"--color_on_cpu converts colour views only ({' '.join(COLOUR_VIEWS)}, from one RGB "
                            f"image), not {' '.join(unsupported)}; drop --color_on_cpu")
        spaces = sorted({COLOUR_VIEWS[view][0] for view in self.views})
        self.converters = {space: transforms.Compose([ColourConversion(space, use_skimage=True),
                                                      transforms.ToTensor(), transforms.Normalize(*VIEW_STATS[space])])
                           for space in spaces}

    def __call__(self, img):
        converted = {space: convert(img) for space, convert in self.converters.items()}   # 3 x H x W float64 each
        parts = [converted[COLOUR_VIEWS[view][0]][list(COLOUR_VIEWS[view][1])] for view in self.views]
        return torch.cat(parts)                                                           # sum(C_v) x H x W

    def __repr__(self):
        return f"{type(self).__name__}(views={self.views})"


def reference_views_transform(image_size=224, crop_low=0.2, views=('L', 'ab')):
    """``--color_on_cpu``: the reference's per-image CPU pipeline for CMC's named views: torchvision's
    RandomResizedCrop and flip on the PIL image (the same draws as ``cmc_train_transform(fast=False)``), then
    ``ReferenceViewStack``. Views that are one colour space's channels in order (L ab, Y CbCr) get exactly
    ``reference_cmc_transform``, the reference's transform; any other set of colour views (``--views L ab S``)
    converts each space it needs the same way. Returns float64 sum(C_v) x H x W."""
    views = tuple(views)
    stack = ReferenceViewStack(views)                      # refuses views it cannot convert
    picked = [(COLOUR_VIEWS[view][0], channel) for view in views for channel in COLOUR_VIEWS[view][1]]
    if len(stack.converters) == 1 and [channel for _, channel in picked] == [0, 1, 2]:
        return reference_cmc_transform(image_size, crop_low, picked[0][0])
    return transforms.Compose([transforms.RandomResizedCrop(image_size, scale=(crop_low, 1.0)),
                               transforms.RandomHorizontalFlip(), stack])


# ---------------------------------------------------------------------------------------------
# Data sets: items are (img, target, index)
# ---------------------------------------------------------------------------------------------

def _instance_item(image, target, index, transform, target_transform, two_crop):
    """(img, target, index); with two_crop, two independent transforms concatenated on channels."""
    img = transform(image) if transform is not None else image
    if two_crop:
        img = torch.cat([img, transform(image)], dim=0)  # 2C x H x W
    if target_transform is not None:
        target = target_transform(target)
    return img, target, index


def _check_two_crop(transform, two_crop):
    """two_crop concatenates tensors, so it needs a transform that makes them."""
    if two_crop and transform is None:
        raise UserError("two_crop needs a transform that returns tensors (the two crops are concatenated on channels)")


def class_map(own, reference, where):
    """{own class index: index of the same class name in ``reference``}, so that labels from two splits mean the
    same class. A class of ``own`` missing from ``reference`` is a UserError naming it (its images could never be
    classified right)."""
    extra = [name for name in own if name not in reference]
    if extra:
        shown = ', '.join(repr(name) for name in extra[:5]) + (f' and {len(extra) - 5} more' if len(extra) > 5 else '')
        plural, them = ('s', 'them') if len(extra) > 1 else ('', 'it')
        by_case = {name.lower(): name for name in reference}
        twins = [f'{name!r} / {by_case[name.lower()]!r}' for name in extra if name.lower() in by_case]
        shown += f' (train has {", ".join(twins)}: the names differ in case)' if twins else ''
        raise UserError(f"{where} has class folder{plural} {shown} that the train split lacks; add {them} to train, "
                        f"or remove {them} from val")
    position = {name: i for i, name in enumerate(reference)}
    return {i: position[name] for i, name in enumerate(own)}


class ImageFolderInstance(datasets.ImageFolder):
    """ImageFolder whose items are (img, target, index), the index keying the memory bank.

    two_crop: the transform runs twice and the results are concatenated on channels (MoCo's query
    and key). skip_bad_images: an undecodable file is replaced by the next decodable item (its
    image, target and index are returned) and remembered in `skipped_files` / `num_skipped`.
    Those counters live in the process that read the item: with DataLoader workers the parent's
    copy stays 0 (each worker warns once per skipped file instead). A transform that takes tensors
    (``accepts_tensors``: `cpu_pipeline.FastRandomResizedCrop`) gets JPEG files as uint8 tensors
    (`cpu_pipeline.read_rgb`, the same pixels), every other transform PIL RGB images.
    """

    def __init__(self, root, transform=None, target_transform=None, two_crop=False, skip_bad_images=False):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise UserError(f"image folder {root} does not exist: expected class sub-folders with .jpg/.png files")
        _check_two_crop(transform, two_crop)
        try:
            super().__init__(root, transform=transform, target_transform=target_transform,
                             loader=cpu_pipeline.image_loader(transform))
        except FileNotFoundError as error:
            detail = str(error).splitlines()[0] if str(error) else ''
            raise UserError(f"no images found under {root}: expected class sub-folders with .jpg/.png files"
                            f" ({detail})") from None
        self.two_crop = two_crop
        self.skip_bad_images = skip_bad_images
        self.skipped_files = set()

    @property
    def num_skipped(self):
        """How many distinct undecodable files this process has skipped."""
        return len(self.skipped_files)

    def _load_decodable(self, index):
        """(image, target, index) of `index`, or of the next decodable item when skipping (the image: what the loader
        gives, a PIL image or `read_rgb`'s uint8 tensor)."""
        for offset in range(len(self.samples)):
            current = (index + offset) % len(self.samples)
            path, target = self.samples[current]
            try:
                return self.loader(path), target, current
            except cpu_pipeline.DECODE_ERRORS as error:
                reason = (str(error).splitlines() or [''])[0]
                if not self.skip_bad_images:
                    raise UserError(f"cannot decode image {path} ({type(error).__name__}: {reason}); "
                                    f"delete or replace it, or pass --skip_bad_images to skip such files") from None
                if path not in self.skipped_files:
                    self.skipped_files.add(path)
                    warnings.warn(f"skipping undecodable image {path} ({type(error).__name__}: {reason})")
        raise UserError(f"none of the {len(self.samples)} images under {self.root} could be decoded")

    def image(self, index):
        """The untransformed RGB image of item ``index`` (PIL), as decoded from its file."""
        return datasets.folder.default_loader(self.samples[index][0])

    def relabel(self, classes):
        """Number this set's classes as ``classes`` (another split's list, matched by name); see ``class_map``."""
        mapping = class_map(self.classes, classes, self.root)
        self.samples = [(path, mapping[target]) for path, target in self.samples]
        self.imgs, self.targets = self.samples, [target for _, target in self.samples]
        self.classes, self.class_to_idx = list(classes), {name: i for i, name in enumerate(classes)}

    def __getitem__(self, index):
        image, target, index = self._load_decodable(index)
        return _instance_item(image, target, index, self.transform, self.target_transform, self.two_crop)


class ArrayImageDataset(Dataset):
    """In-memory uint8 images (N x H x W x 3, or N x H x W greyscale) served as RGB PIL images.

    Items are (img, target, index); greyscale images become 3-channel RGB (channel replicated), so
    every model sees RGB. `.classes` lists class names, `.targets` the labels (-1 = unlabelled).
    """

    def __init__(self, images, labels, classes, transform=None, two_crop=False, target_transform=None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise UserError(f"images must be uint8 N x H x W x 3 or N x H x W, got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        _check_two_crop(transform, two_crop)
        self.images = images
        self.targets = [int(label) for label in np.asarray(labels).reshape(-1)]
        self.classes = [str(name) for name in classes]
        self.transform = transform
        self.target_transform = target_transform
        self.two_crop = two_crop

    def __len__(self):
        return len(self.images)

    def image(self, index):
        """The untransformed RGB image of item ``index`` (PIL)."""
        return Image.fromarray(np.ascontiguousarray(self.images[index])).convert('RGB')

    def relabel(self, classes):
        """Number this set's classes as ``classes`` (another split's list, matched by name); see ``class_map``."""
        mapping = class_map(self.classes, classes, 'the data set')
        self.targets = [mapping[t] if t >= 0 else t for t in self.targets]
        self.classes = list(classes)

    def __getitem__(self, index):
        # Copies one image: the array may be a strided view (STL-10) or a memory map.
        image = Image.fromarray(np.ascontiguousarray(self.images[index])).convert('RGB')
        return _instance_item(image, self.targets[index], index, self.transform, self.target_transform,
                              self.two_crop)


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

DATASET_NAMES = ('imagenet', 'imagenet100', 'folder', 'stl10', 'cifar10', 'fashion-mnist', 'demo', 'multiview_folder')
SPLITS = ('pretrain', 'train', 'val')
GRAYSCALE_DATASETS = {'fashion-mnist'}
DEMO_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'emoji64.npz')


def build_dataset(name, data_folder, split, transform, two_crop=False, download=False, skip_bad_images=False,
                  views=None):
    """A data set whose items are (img, target, index), with `.classes` and `.targets` (-1 = unlabelled).

    split: 'pretrain' (what pretraining reads: train, or train+unlabeled for STL-10), 'train' or
    'val' (the test set for torchvision sets). Nothing is downloaded unless download=True.
    'demo' reads data_folder if it is an .npz file or a folder holding emoji64.npz, else the
    bundled data/emoji64.npz. 'multiview_folder' reads data_folder/<split>/<view>/<class>/<file> for ``views``
    (see multiview_data).
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if name == 'demo':
        return _build_demo(data_folder, split, transform, two_crop)
    if not data_folder:
        raise UserError(f"--data_folder is required for dataset {name!r}")
    data_folder = os.fspath(data_folder)
    if name == 'multiview_folder':
        from multiview_data import build_multiview_folder
        if two_crop:
            raise UserError("--dataset multiview_folder is for CMC's views (train_CMC.py, LinearProbing.py), not "
                            "two crops of one image")
        return build_multiview_folder(data_folder, split, transform, views)
    if name in ('imagenet', 'imagenet100', 'folder'):
        return _build_image_folder(data_folder, split, transform, two_crop, skip_bad_images)
    if name == 'stl10':
        images, labels, classes = read_stl10(data_folder, split, download)
    elif name == 'cifar10':
        images, labels, classes = read_cifar10(data_folder, train=split != 'val', download=download)
    else:
        images, labels, classes = read_fashion_mnist(data_folder, train=split != 'val', download=download)
    return ArrayImageDataset(images, labels, classes, transform=transform, two_crop=two_crop)


def _build_image_folder(data_folder, split, transform, two_crop, skip_bad_images):
    """ImageFolderInstance on data_folder/train (pretrain, train) or data_folder/val."""
    if not os.path.isdir(data_folder):
        raise UserError(f"data folder {data_folder} does not exist: expected {data_folder}/train and "
                        f"{data_folder}/val, each with one sub-folder of images per class")
    sub_folder = 'val' if split == 'val' else 'train'
    root = os.path.join(data_folder, sub_folder)
    if not os.path.isdir(root):
        raise MissingSplit(f"data folder {data_folder} has no '{sub_folder}' sub-folder: expected {data_folder}/train "
                        f"and {data_folder}/val, each with one sub-folder of images per class")
    return ImageFolderInstance(root, transform=transform, two_crop=two_crop, skip_bad_images=skip_bad_images)


def _build_demo(data_folder, split, transform, two_crop):
    """The bundled emoji set (data/emoji64.npz): 64 x 64 RGB images with class labels and emoji codes."""
    path = DEMO_FILE
    if data_folder:
        data_folder = os.fspath(data_folder)
        path = data_folder if data_folder.endswith('.npz') else os.path.join(data_folder, 'emoji64.npz')
    if not os.path.isfile(path):
        raise UserError(f"demo data file {path} not found: it ships with the repository as data/emoji64.npz")
    prefix = 'val' if split == 'val' else 'train'
    with np.load(path, allow_pickle=False) as archive:  # no pickles: a data file must not run code
        missing = [key for key in (f'{prefix}_images', f'{prefix}_labels', 'classes') if key not in archive]
        if missing:
            raise UserError(f"demo data file {path} lacks {', '.join(missing)}: regenerate it")
        try:
            images, labels, classes = archive[f'{prefix}_images'], archive[f'{prefix}_labels'], archive['classes']
            codes = archive[f'{prefix}_codes'] if f'{prefix}_codes' in archive else None
        except ValueError as error:  # object arrays need pickle
            raise UserError(f"demo data file {path} is not plain arrays ({error}): "
                            f"store strings as str arrays") from None
    dataset = ArrayImageDataset(images, labels, classes.tolist(), transform=transform, two_crop=two_crop)
    dataset.codes = None if codes is None else [str(code) for code in codes]
    return dataset
