"""inputs.build.build_dataset for image folders and the bundled demo file; inputs.files (STL-10, CIFAR-10,
Fashion-MNIST) through it, on files written here in each format."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import chw, random_images, write_class_folder
from torchvision import transforms

import dataset
from engine.errors import UserError

TO_TENSOR = transforms.PILToTensor()


def test_build_folder_datasets(tmp_path):
    write_class_folder(tmp_path / 'train')
    write_class_folder(tmp_path / 'val', per_class=1)
    for name in ('imagenet', 'imagenet100', 'folder'):
        for split, size in (('pretrain', 6), ('train', 6), ('val', 2)):
            data = dataset.build_dataset(name, str(tmp_path), split, TO_TENSOR, two_crop=False)
            assert isinstance(data, dataset.ImageFolderInstance) and len(data) == size
            assert data.root == str(tmp_path / ('val' if split == 'val' else 'train'))
    data = dataset.build_dataset('imagenet', tmp_path, 'train', dataset.cmc_train_transform(8), two_crop=True)
    assert data[0][0].shape == (6, 8, 8)
    os.rename(tmp_path / 'val', tmp_path / 'validation')
    with pytest.raises(UserError, match="has no 'val' sub-folder"):
        dataset.build_dataset('folder', tmp_path, 'val', TO_TENSOR)
    with pytest.raises(UserError, match='does not exist'):
        dataset.build_dataset('imagenet', tmp_path / 'nowhere', 'train', TO_TENSOR)
    with pytest.raises(UserError, match='--data_folder is required'):
        dataset.build_dataset('imagenet', None, 'train', TO_TENSOR)
    with pytest.raises(UserError, match="unknown dataset 'imagenet1k'"):
        dataset.build_dataset('imagenet1k', tmp_path, 'train', TO_TENSOR)
    with pytest.raises(UserError, match="unknown split 'test'"):
        dataset.build_dataset('imagenet', tmp_path, 'test', TO_TENSOR)


def _write_stl10(root, counts, seed=0):
    """STL-10 binaries as distributed: images stored N x C x W x H (column-major), labels 1-based."""
    folder = root / 'stl10_binary'
    os.makedirs(folder)
    written = {}
    for offset, (prefix, count) in enumerate(counts.items()):
        images = random_images(count, 96, 96, seed + offset)
        (folder / f'{prefix}_X.bin').write_bytes(images.transpose(0, 3, 2, 1).tobytes())
        labels = np.random.default_rng(seed + offset).integers(1, 11, size=count).astype(np.uint8)
        if prefix != 'unlabeled':
            (folder / f'{prefix}_y.bin').write_bytes(labels.tobytes())
        written[prefix] = (images, labels.astype(int) - 1)
    return written


def test_build_stl10(tmp_path):
    written = _write_stl10(tmp_path, {'train': 3, 'unlabeled': 2, 'test': 2})
    pretrain = dataset.build_dataset('stl10', tmp_path, 'pretrain', TO_TENSOR)
    train_images, train_labels = written['train']
    assert len(pretrain) == 5 and pretrain.targets == train_labels.tolist() + [-1, -1]
    assert pretrain.classes == dataset.STL10_CLASSES
    for index, expected in enumerate(list(train_images) + list(written['unlabeled'][0])):
        img, target, returned_index = pretrain[index]
        assert returned_index == index and torch.equal(img, chw(expected))
    (tmp_path / 'stl10_binary' / 'class_names.txt').write_text('\n'.join(f'c{i}' for i in range(10)) + '\n')
    val = dataset.build_dataset('stl10', tmp_path, 'val', TO_TENSOR)
    assert len(val) == 2 and val.targets == written['test'][1].tolist() and val.classes[9] == 'c9'
    assert torch.equal(val[1][0], chw(written['test'][0][1]))
    train = dataset.build_dataset('stl10', tmp_path, 'train', TO_TENSOR, two_crop=True)
    assert len(train) == 3 and train[2][0].shape == (6, 96, 96)


def test_build_stl10_errors(tmp_path):
    written = _write_stl10(tmp_path, {'train': 2, 'test': 1})
    before = sorted(os.listdir(tmp_path / 'stl10_binary'))
    missing = r'STL-10 files not found in .*stl10_binary \(missing: unlabeled_X.bin\).*--download'
    with pytest.raises(UserError, match=missing):
        dataset.build_dataset('stl10', tmp_path, 'pretrain', TO_TENSOR)
    assert sorted(os.listdir(tmp_path / 'stl10_binary')) == before  # nothing fetched
    assert len(dataset.build_dataset('stl10', tmp_path, 'train', TO_TENSOR)) == 2  # labelled splits still work
    (tmp_path / 'stl10_binary' / 'test_X.bin').write_bytes(written['test'][0].tobytes()[:1000])
    with pytest.raises(UserError, match='test_X.bin is truncated'):
        dataset.build_dataset('stl10', tmp_path, 'val', TO_TENSOR)


def _write_cifar10(root):
    folder = root / 'cifar-10-batches-py'
    os.makedirs(folder)
    written = {}
    for seed, name in enumerate([f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']):
        images = random_images(2, 32, 32, seed)
        labels = [seed % 10, (seed + 3) % 10]
        entry = {'batch_label': name, 'labels': labels, 'data': images.transpose(0, 3, 1, 2).reshape(2, -1),
                 'filenames': ['a.png', 'b.png']}
        with open(folder / name, 'wb') as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (images, labels)
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': [f'class{i}' for i in range(10)], 'num_vis': 3072}, f, protocol=2)
    return written


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path):
    _write_cifar10(tmp_path)
    marker = tmp_path / 'pwned'
    with open(tmp_path / 'cifar-10-batches-py' / 'test_batch', 'wb') as f:
        pickle.dump({'labels': [0], 'data': _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(UserError, match=r'test_batch is not a CIFAR-10 batch .*asks for io.open'):
        dataset.build_dataset('cifar10', tmp_path, 'val', TO_TENSOR)
    assert not marker.exists()


def test_build_cifar10(tmp_path):
    written = _write_cifar10(tmp_path)
    train = dataset.build_dataset('cifar10', tmp_path, 'pretrain', TO_TENSOR)
    assert len(train) == 10 and train.classes[3] == 'class3'
    assert train.targets == [label for i in range(1, 6) for label in written[f'data_batch_{i}'][1]]
    img, target, index = train[7]  # batch 4, second image
    images, labels = written['data_batch_4']
    assert torch.equal(img, chw(images[1])) and (target, index) == (labels[1], 7)
    val = dataset.build_dataset('cifar10', tmp_path, 'val', TO_TENSOR, download=True)  # present: no fetch
    assert len(val) == 2 and torch.equal(val[0][0], chw(written['test_batch'][0][0]))
    os.remove(tmp_path / 'cifar-10-batches-py' / 'data_batch_3')
    with pytest.raises(UserError, match=r'CIFAR-10 files not found .*missing: data_batch_3\).*--download'):
        dataset.build_dataset('cifar10', tmp_path, 'train', TO_TENSOR)


def _idx_bytes(array):
    """IDX format (LeCun): magic 0x0000 08 <ndim>, big-endian int32 dims, then uint8 data."""
    return struct.pack('>I', 0x0800 + array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()


def _write_fashion_mnist(root):
    raw = root / 'FashionMNIST' / 'raw'
    os.makedirs(raw)
    written = {}
    for seed, prefix in enumerate(['train', 't10k']):
        images = random_images(3, 28, 28, seed)[..., 0]
        labels = np.array([seed, 9, 4], dtype=np.uint8)
        files = {f'{prefix}-images-idx3-ubyte': _idx_bytes(images), f'{prefix}-labels-idx1-ubyte': _idx_bytes(labels)}
        for name, content in files.items():
            if prefix == 't10k':  # as distributed: gzipped
                with gzip.open(raw / f'{name}.gz', 'wb') as f:
                    f.write(content)
            else:
                (raw / name).write_bytes(content)
        written[prefix] = (images, labels.tolist())
    return written


def test_build_fashion_mnist(tmp_path):
    written = _write_fashion_mnist(tmp_path)
    assert dataset.GRAYSCALE_DATASETS == {'fashion-mnist'}
    for split, prefix in (('pretrain', 'train'), ('train', 'train'), ('val', 't10k')):
        data = dataset.build_dataset('fashion-mnist', tmp_path, split, TO_TENSOR)
        images, labels = written[prefix]
        assert len(data) == 3 and data.targets == labels and data.classes[0] == 'T-shirt/top'
        img, target, index = data[2]
        assert img.shape == (3, 28, 28) and (target, index) == (labels[2], 2)
        assert all(torch.equal(img[c], torch.from_numpy(images[2])) for c in range(3))  # grey -> RGB


def test_build_fashion_mnist_missing(tmp_path):
    with pytest.raises(UserError, match=r'Fashion-MNIST files not found in .*FashionMNIST.raw.*--download'):
        dataset.build_dataset('fashion-mnist', tmp_path, 'train', TO_TENSOR)
    assert not (tmp_path / 'FashionMNIST' / 'raw').exists() or os.listdir(tmp_path / 'FashionMNIST' / 'raw') == []


def test_build_fashion_mnist_flat_gz_layout_writes_nothing(tmp_path):
    """Debian's dataset-fashion-mnist layout: the four .gz files straight in the folder."""
    _write_fashion_mnist(tmp_path)
    flat = tmp_path / 'flat'
    flat.mkdir()
    raw = tmp_path / 'FashionMNIST' / 'raw'
    for name in os.listdir(raw):
        content = (raw / name).read_bytes()
        if not name.endswith('.gz'):
            name, content = name + '.gz', gzip.compress(content)
        (flat / name).write_bytes(content)
    before = sorted(os.listdir(flat))
    data = dataset.build_dataset('fashion-mnist', flat, 'train', TO_TENSOR)
    assert data.targets == [0, 9, 4] and sorted(os.listdir(flat)) == before


REAL_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


@pytest.mark.skipif(not os.path.isdir(REAL_FASHION_MNIST), reason='Debian package dataset-fashion-mnist not installed')
def test_real_fashion_mnist_files():
    train = dataset.build_dataset('fashion-mnist', REAL_FASHION_MNIST, 'train', None)
    val = dataset.build_dataset('fashion-mnist', REAL_FASHION_MNIST, 'val', None)
    assert (len(train), len(val)) == (60000, 10000)
    assert np.bincount(np.asarray(train.targets)).tolist() == [6000] * 10
    assert np.bincount(np.asarray(val.targets)).tolist() == [1000] * 10
    assert train.targets[0] == 9 and train.classes[9] == 'Ankle boot'   # the first training image is an ankle boot


def _write_demo(path):
    content = {'train_images': random_images(4, 64, 64, 5), 'train_labels': np.array([0, 1, 2, 1]),
               'val_images': random_images(2, 64, 64, 6), 'val_labels': np.array([2, 0]),
               'classes': np.array(['smiley', 'animal', 'food']),
               'train_codes': np.array(['1F600', '1F436', '1F34E', '1F431']), 'val_codes': np.array(['1F355', '1F603'])}
    np.savez(path, **content)
    return content


def test_build_demo(tmp_path):
    content = _write_demo(tmp_path / 'emoji64.npz')
    for data_folder in (tmp_path / 'emoji64.npz', tmp_path):
        train = dataset.build_dataset('demo', data_folder, 'pretrain', TO_TENSOR)
        assert len(train) == 4 and train.targets == [0, 1, 2, 1] and train.classes == ['smiley', 'animal', 'food']
        assert train.codes == ['1F600', '1F436', '1F34E', '1F431']
        img, target, index = train[3]
        assert torch.equal(img, chw(content['train_images'][3])) and (target, index) == (1, 3)
    val = dataset.build_dataset('demo', tmp_path, 'val', dataset.moco_train_transform(32), two_crop=True)
    assert len(val) == 2 and val.targets == [2, 0] and val[0][0].shape == (6, 32, 32)
    with pytest.raises(UserError, match='demo data file .*elsewhere.npz not found'):
        dataset.build_dataset('demo', tmp_path / 'elsewhere.npz', 'train', TO_TENSOR)
    np.savez(tmp_path / 'objects.npz', **dict(content, classes=np.array(['a', 'b', 'c'], dtype=object)))
    with pytest.raises(UserError, match='objects.npz is not plain arrays'):
        dataset.build_dataset('demo', tmp_path / 'objects.npz', 'train', TO_TENSOR)
    assert dataset.DEMO_FILE == os.path.join(os.path.dirname(os.path.abspath(dataset.__file__)), 'data', 'emoji64.npz')


def test_a_multiview_folder_for_a_script_without_views_is_one_line(tmp_path):
    """train_moco_ins.py and eval_moco_ins.py read one RGB image per item: no views to read from a multiview folder."""
    for two_crop in (False, True):
        with pytest.raises(UserError, match="--dataset multiview_folder holds CMC's views .* use --dataset folder"):
            dataset.build_dataset('multiview_folder', str(tmp_path), 'train', None, two_crop=two_crop, views=None)
