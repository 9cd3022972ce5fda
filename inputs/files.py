"""Readers of the torchvision-format data sets' files into uint8 arrays: STL-10 (binary), CIFAR-10 (python batches),
Fashion-MNIST (idx). Each returns (images N x H x W x C or N x H x W, labels int64 N, class names); missing or broken
files raise `UserError` with what to do. Nothing is downloaded unless asked (``download=True``: torchvision fetches
and verifies the archive).
"""
import gzip
import os
import pickle

import numpy as np
from torchvision import datasets

from engine.errors import UserError

STL10_CLASSES = ['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck']
_STL10_SIDE = 96
_CIFAR10_SIDE = 32


def missing_files_error(dataset, folder, missing):
    """The one-line error for a torchvision-format data set whose files are not there."""
    return UserError(f"{dataset} files not found in {folder} (missing: {', '.join(missing)}): "
                     f"put them there or pass --download to fetch them")


def read_stl10(data_folder, split, download):
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
        raise missing_files_error('STL-10', folder, missing())

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


def read_cifar10(data_folder, train, download):
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
        raise missing_files_error('CIFAR-10', folder, missing())

    def load(name):
        path = os.path.join(folder, name)
        try:
            with open(path, 'rb') as f:
                return _ArrayUnpickler(f, encoding='latin1').load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise UserError(f'{path} is not a CIFAR-10 batch ({error}); delete it and pass --download') from None

    entries = [load(name) for name in batches]
    images = np.concatenate([np.asarray(entry['data'], dtype=np.uint8) for entry in entries])
    images = images.reshape(-1, 3, _CIFAR10_SIDE, _CIFAR10_SIDE).transpose(0, 2, 3, 1)  # N x H x W x C
    labels = np.concatenate([np.asarray(entry['labels'], dtype=np.int64) for entry in entries])
    return images, labels, list(load('batches.meta')['label_names'])


def read_fashion_mnist(data_folder, train, download):
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
        raise missing_files_error('Fashion-MNIST', f'{folders[0]} or {folders[1]}', missing)
    images, labels = read_idx(paths['images']), read_idx(paths['labels'])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f'Fashion-MNIST files in {os.path.dirname(paths["images"])} do not match '
                        f'({images.shape} images, {labels.shape} labels); delete them and pass --download')
    return images, labels.astype(np.int64), list(datasets.FashionMNIST.classes)


def read_idx(path):
    """An idx file (LeCun's MNIST format): magic 0x0000 0x08 ndim, big-endian dims, then uint8 data."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f'cannot read {path}: {e}; delete it and pass --download')
    if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
        raise UserError(f'{path} is not an idx file of uint8 data: delete it and pass --download')
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f'{path} is truncated ({body.size} of {int(np.prod(dims))} values); delete it and pass '
                        f'--download')
    return body.reshape(dims)
