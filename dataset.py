"""The reference's ``dataset`` module, importable as before: ``ImageFolderInstance`` and the per-image colour
conversions ``RGB2Lab``, ``RGB2YCbCr``, ``RGB2HSV``, ``RGB2HED``, ``RGB2LUV``, ``RGB2YUV``, ``RGB2XYZ``, ``RGB2YDbDr``,
``RGB2YPbPr``, ``RGB2YIQ``, ``RGB2CIERGB``; and, under the names this project's earlier releases gave them, its data
sets, transforms and colour views.

Nothing lives here: the inputs (image folders, file formats, decoding, multiview folders, transforms) are the
``inputs`` package, the views (colour spaces, the registry, ``DeviceView``) the ``views`` package.
"""
from inputs.build import DATASET_NAMES, DEMO_FILE, GRAYSCALE_DATASETS, SPLITS, build_dataset
from inputs.files import STL10_CLASSES, read_cifar10, read_fashion_mnist, read_stl10
from inputs.folders import ArrayImageDataset, ImageFolderInstance, class_map
from inputs.transforms import (MOCO_AUGMENTATIONS, cmc_train_transform, eval_transform, moco_train_transform,
                               reference_cmc_transform, reference_views_transform)
from views.colour import COLOUR_SPACES, SKIMAGE_FUNCTIONS, VALUE_RANGES, VIEW_STATS, canonical_space, rgb_to
from views.device import DeviceView, PrenormalisedViews
from views.kernels import FastView, fast_rgb_to_lab, fast_rgb_to_ycbcr
from views.reference import (REFERENCE_CONVERSIONS, ColourConversion, ReferenceViewStack, RGB2CIERGB, RGB2HED,
                             RGB2HSV, RGB2Lab, RGB2LUV, RGB2XYZ, RGB2YCbCr, RGB2YDbDr, RGB2YIQ, RGB2YPbPr, RGB2YUV)
from views.registry import CHROMA_VIEWS, COLOUR_VIEWS
from views.stack import ViewStack

__all__ = [
    # the reference's names
    'ImageFolderInstance', 'RGB2Lab', 'RGB2YCbCr', 'RGB2HSV', 'RGB2HED', 'RGB2LUV', 'RGB2YUV', 'RGB2XYZ', 'RGB2YDbDr',
    'RGB2YPbPr', 'RGB2YIQ', 'RGB2CIERGB',
    # inputs
    'DATASET_NAMES', 'DEMO_FILE', 'GRAYSCALE_DATASETS', 'SPLITS', 'build_dataset', 'STL10_CLASSES', 'read_cifar10',
    'read_fashion_mnist', 'read_stl10', 'ArrayImageDataset', 'class_map', 'MOCO_AUGMENTATIONS', 'cmc_train_transform',
    'eval_transform', 'moco_train_transform', 'reference_cmc_transform', 'reference_views_transform',
    # views
    'COLOUR_SPACES', 'SKIMAGE_FUNCTIONS', 'VALUE_RANGES', 'VIEW_STATS', 'canonical_space', 'rgb_to', 'DeviceView',
    'PrenormalisedViews', 'FastView', 'fast_rgb_to_lab', 'fast_rgb_to_ycbcr', 'REFERENCE_CONVERSIONS',
    'ColourConversion', 'ReferenceViewStack', 'CHROMA_VIEWS', 'COLOUR_VIEWS', 'ViewStack',
]
