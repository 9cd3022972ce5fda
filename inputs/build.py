"""``build_dataset``: the data set a ``--dataset`` name reads, for a split (pretrain, train, val)."""
import os

import numpy as np

from engine.errors import MissingSplit, UserError
from inputs.files import read_cifar10, read_fashion_mnist, read_stl10
from inputs.folders import ArrayImageDataset, ImageFolderInstance
from inputs.multiview import build_multiview_folder


DATASET_NAMES = ('imagenet', 'imagenet100', 'folder', 'stl10', 'cifar10', 'fashion-mnist', 'demo', 'multiview_folder')
SPLITS = ('pretrain', 'train', 'val')
GRAYSCALE_DATASETS = {'fashion-mnist'}
DEMO_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'emoji64.npz')


def build_dataset(name, data_folder, split, transform, two_crop=False, download=False, skip_bad_images=False,
                  views=None):
    """A data set whose items are (img, target, index), with `.classes` and `.targets` (-1 = unlabelled).

    split: 'pretrain' (what pretraining reads: train, or train+unlabeled for STL-10), 'train' or
    'val' (the test set for torchvision sets). Nothing is downloaded unless download=True.
    'demo' reads data_folder if it is an .npz file or a folder holding emoji64.npz, else the
    bundled data/emoji64.npz. 'multiview_folder' reads data_folder/<split>/<view>/<class>/<file> for ``views``
    (see inputs.multiview).
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
        if two_crop or not views:              # InsDis / MoCo and their probe read one RGB image per item
            raise UserError("--dataset multiview_folder holds CMC's views (train_CMC.py, LinearProbing.py); this "
                            "script reads one RGB image per item: use --dataset folder with a data folder of "
                            "train/<class>/<image> (and val/)")
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


__all__ = ['DATASET_NAMES', 'SPLITS', 'GRAYSCALE_DATASETS', 'DEMO_FILE', 'build_dataset']
