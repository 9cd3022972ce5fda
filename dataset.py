"""Data: transforms, instance data sets and data-set builders; the colour views live in ``colour`` and are
re-exported here under the reference's names (``RGB2Lab``, ``RGB2YCbCr``, ...).

Design (a deliberate departure from the reference, which converted colours in float64 on the CPU
workers, one image at a time): the data loader hands **uint8 crops** (B x 3k x H x W) to
`colour.DeviceView`, which converts colour spaces and normalises the whole batch in float32 on whatever
device the batch is on. The reference CPU path is kept (`reference_cmc_transform`, and
`reference_views_transform` for any set of colour views) for benchmarks, equivalence tests and ``--color_on_cpu``.
"""

import gzip
import os
import pickle
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
from engine.errors import MissingSplit, UserError

# ---------------------------------------------------------------------------------------------
# Transforms (PIL in, uint8 C x H x W tensor out; DeviceView does the rest)
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


# What a broken or unreadable image file raises while PIL decodes it.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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
        """(PIL image, target, index) of `index`, or of the next decodable item when skipping."""
        for offset in range(len(self.samples)):
            current = (index + offset) % len(self.samples)
            path, target = self.samples[current]
            try:
                return self.loader(path), target, current
            except _DECODE_ERRORS as error:
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
STL10_CLASSES = ['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck']
_STL10_SIDE = 96
_CIFAR10_SIDE = 32


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
        images, labels, classes = _read_stl10(data_folder, split, download)
    elif name == 'cifar10':
        images, labels, classes = _read_cifar10(data_folder, train=split != 'val', download=download)
    else:
        images, labels, classes = _read_fashion_mnist(data_folder, train=split != 'val', download=download)
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


def _missing_files_error(dataset, folder, missing):
    """The one-line error for a torchvision-format data set whose files are not there."""
    return UserError(f"{dataset} files not found in {folder} (missing: {', '.join(missing)}): "
                     f"put them there or pass --download to fetch them")


def _read_stl10(data_folder, split, download):
    """STL-10 binaries (stl10_binary/*.bin) as NHWC uint8 memory maps, labels 0..9 or -1 (unlabelled).

    Read here rather than through torchvision's STL10, which md5-hashes all 2.6 GB on every start;
    file sizes are checked instead.
    """
    folder = os.path.join(data_folder, 'stl10_binary')
    parts = {'pretrain': [('train_X.bin', 'train_y.bin'), ('unlabeled_X.bin', None)],
             'train': [('train_X.bin', 'train_y.bin')],
             'val': [('test_X.bin', 'test_y.bin')]}[split]
    needed = [name for pair in parts for name in pair if name]

    def missing():
        return [name for name in needed if not os.path.isfile(os.path.join(folder, name))]

    if missing() and download:
        datasets.STL10(data_folder, split='test', download=True)  # fetches and verifies the whole archive
    if missing():
        raise _missing_files_error('STL-10', folder, missing())

    record = 3 * _STL10_SIDE * _STL10_SIDE
    images, labels = [], []
    for images_name, labels_name in parts:
        path = os.path.join(folder, images_name)
        size = os.path.getsize(path)
        if size == 0 or size % record:
            raise UserError(f"{path} is truncated or not an STL-10 image file ({size} bytes, not a multiple of "
                            f"{record}): delete it and pass --download")
        # Stored as N x C x W x H (column-major images); transpose to N x H x W x C without copying.
        stored = np.memmap(path, dtype=np.uint8, mode='r').reshape(-1, 3, _STL10_SIDE, _STL10_SIDE)
        images.append(stored.transpose(0, 3, 2, 1))
        if labels_name is None:
            labels.append(np.full(len(stored), -1, dtype=np.int64))
        else:
            label_path = os.path.join(folder, labels_name)
            file_labels = np.fromfile(label_path, dtype=np.uint8).astype(np.int64) - 1  # stored 1-based
            if len(file_labels) != len(stored):
                raise UserError(f"{label_path} has {len(file_labels)} labels for {len(stored)} images: "
                                f"delete the STL-10 files and pass --download")
            labels.append(file_labels)
    images = images[0] if len(images) == 1 else np.concatenate(images)
    class_file = os.path.join(folder, 'class_names.txt')
    classes = STL10_CLASSES
    if os.path.isfile(class_file):
        with open(class_file) as f:
            classes = [line for line in f.read().splitlines() if line]
    return images, np.concatenate(labels), classes


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: allow only what they hold (dicts, lists, numpy arrays), so a tampered
    file cannot run code."""
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'),
               ('numpy._core.multiarray', 'scalar'), ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'it asks for {module}.{name}, which a data file never needs')


def _read_cifar10(data_folder, train, download):
    """CIFAR-10 python batches (cifar-10-batches-py/) as NHWC uint8, labels 0..9.

    Read here because torchvision's CIFAR10 insists on md5 sums of the files (so it also rejects any
    re-packed copy); the format is torchvision's: latin1 pickles with 'data' N x 3072 and 'labels'.
    """
    folder = os.path.join(data_folder, 'cifar-10-batches-py')
    batches = [f'data_batch_{i}' for i in range(1, 6)] if train else ['test_batch']
    needed = batches + ['batches.meta']

    def missing():
        return [name for name in needed if not os.path.isfile(os.path.join(folder, name))]

    if missing() and download:
        datasets.CIFAR10(data_folder, train=train, download=True)
    if missing():
        raise _missing_files_error('CIFAR-10', folder, missing())

    def load(name):
        path = os.path.join(folder, name)
        try:
            with open(path, 'rb') as f:
                return _ArrayUnpickler(f, encoding='latin1').load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise UserError(f'{path} is not a CIFAR-10 batch ({error}); re-download it with --download') from None

    entries = [load(name) for name in batches]
    images = np.concatenate([np.asarray(entry['data'], dtype=np.uint8) for entry in entries])
    images = images.reshape(-1, 3, _CIFAR10_SIDE, _CIFAR10_SIDE).transpose(0, 2, 3, 1)  # N x H x W x C
    labels = np.concatenate([np.asarray(entry['labels'], dtype=np.int64) for entry in entries])
    return images, labels, list(load('batches.meta')['label_names'])


def _read_fashion_mnist(data_folder, train, download):
    """Fashion-MNIST from its idx files (plain or .gz), greyscale N x 28 x 28 uint8.

    Looked for in data_folder itself (the layout of Debian's dataset-fashion-mnist: /usr/share/datasets/fashion-mnist)
    and in data_folder/FashionMNIST/raw (torchvision's layout, where --download puts them). Nothing is written.
    """
    prefix = 'train' if train else 't10k'
    names = {'images': f'{prefix}-images-idx3-ubyte', 'labels': f'{prefix}-labels-idx1-ubyte'}
    folders = [data_folder, os.path.join(data_folder, 'FashionMNIST', 'raw')]

    def find(name):
        for folder in folders:
            for candidate in (name, name + '.gz'):
                if os.path.isfile(os.path.join(folder, candidate)):
                    return os.path.join(folder, candidate)
        return None

    if download and not all(find(n) for n in names.values()):
        datasets.FashionMNIST(data_folder, train=train, download=True)
    paths = {key: find(name) for key, name in names.items()}
    missing = [names[key] + '[.gz]' for key, path in paths.items() if path is None]
    if missing:
        raise _missing_files_error('Fashion-MNIST', f'{folders[0]} or {folders[1]}', missing)
    images, labels = _read_idx(paths['images']), _read_idx(paths['labels'])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f'Fashion-MNIST files in {os.path.dirname(paths["images"])} do not match '
                        f'({images.shape} images, {labels.shape} labels); re-download them')
    return images, labels.astype(np.int64), list(datasets.FashionMNIST.classes)


def _read_idx(path):
    """An idx file (LeCun's MNIST format): magic 0x0000 0x08 ndim, big-endian dims, then uint8 data."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f'cannot read {path}: {e}; re-download it')
    if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
        raise UserError(f'{path} is not an idx file of uint8 data')
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f'{path} is truncated ({body.size} of {int(np.prod(dims))} values); re-download it')
    return body.reshape(dims)


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
