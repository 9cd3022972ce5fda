"""Transforms, ImageFolderInstance, ArrayImageDataset and build_dataset on tiny generated files."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import dataset
from engine.errors import UserError

TO_TENSOR = transforms.PILToTensor()


def _random_images(count, height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def _chw(image_hwc):
    return torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1)))


# ----------------------------------------------------------------------------------------- transforms

def test_train_transforms_give_uint8_crops():
    image = Image.fromarray(_random_images(1, 80, 100, 0)[0])
    for transform in (dataset.cmc_train_transform(64, 0.2), dataset.moco_train_transform(64, 0.2, 'CJ'),
                      dataset.moco_train_transform(64, 0.2, 'NULL')):
        torch.manual_seed(0)
        first = transform(image)
        torch.manual_seed(0)
        assert torch.equal(transform(image), first)  # seeded -> reproducible
        assert first.dtype == torch.uint8 and first.shape == (3, 64, 64)
        assert not torch.equal(transform(image), first)  # random crops
    with pytest.raises(UserError, match="unknown augmentation 'XX'"):
        dataset.moco_train_transform(64, 0.2, 'XX')


def test_moco_colour_augmentation_only_with_cj():
    flat = Image.new('RGB', (40, 30), (200, 30, 90))
    torch.manual_seed(0)
    null = [dataset.moco_train_transform(16, 0.2, 'NULL')(flat) for _ in range(10)]
    cj = [dataset.moco_train_transform(16, 0.2, 'CJ')(flat) for _ in range(20)]
    colour = torch.tensor([200, 30, 90], dtype=torch.uint8).view(3, 1, 1)
    assert all(torch.equal(crop, colour.expand(3, 16, 16)) for crop in null)  # crops of a flat image
    assert sum(torch.equal(crop, colour.expand(3, 16, 16)) for crop in cj) == 0
    assert any(torch.equal(crop[0], crop[1]) and torch.equal(crop[1], crop[2]) for crop in cj)  # some grey


@pytest.mark.parametrize('image_size, resized', [(64, 73), (224, 256)])
def test_eval_transform_sizes(image_size, resized):
    transform = dataset.eval_transform(image_size)
    assert transform.transforms[0].size == resized and transform.transforms[1].size == (image_size, image_size)
    array = _random_images(1, 300, 400, 1)[0]
    out = transform(Image.fromarray(array))
    assert out.dtype == torch.uint8 and out.shape == (3, image_size, image_size)
    # Same as PIL: shorter side -> resized, centre crop (torchvision rounds the offsets).
    width = int(resized * 400 / 300)
    big = Image.fromarray(array).resize((width, resized), Image.BILINEAR)
    left, top = int(round((width - image_size) / 2)), int(round((resized - image_size) / 2))
    expected = np.asarray(big.crop((left, top, left + image_size, top + image_size)))
    assert torch.equal(out, _chw(expected))


# ------------------------------------------------------------------------------ ImageFolderInstance

def _write_folder(root, per_class=3, size=(12, 10)):
    """root/{cat,dog}/img{i}.png with random pixels; returns {path: (array, class index)}."""
    written = {}
    for label, name in enumerate(['cat', 'dog']):
        os.makedirs(root / name)
        for i, array in enumerate(_random_images(per_class, size[1], size[0], seed=10 * label + 1)):
            path = str(root / name / f'img{i}.png')
            Image.fromarray(array).save(path)
            written[path] = (array, label)
    return written


def test_image_folder_instance_items(tmp_path):
    written = _write_folder(tmp_path / 'train')
    data = dataset.ImageFolderInstance(tmp_path / 'train', transform=TO_TENSOR)
    assert data.classes == ['cat', 'dog'] and data.targets == [0, 0, 0, 1, 1, 1] and len(data) == 6
    for index in range(len(data)):
        img, target, returned_index = data[index]
        array, label = written[data.samples[index][0]]
        assert returned_index == index and target == label and torch.equal(img, _chw(array))


def test_image_folder_instance_two_crop(tmp_path):
    _write_folder(tmp_path / 'train', size=(40, 30))
    data = dataset.ImageFolderInstance(tmp_path / 'train', transform=dataset.cmc_train_transform(16), two_crop=True)
    torch.manual_seed(0)
    img, target, index = data[4]
    assert img.shape == (6, 16, 16) and img.dtype == torch.uint8 and (target, index) == (1, 4)
    assert not torch.equal(img[:3], img[3:])  # two independent crops
    with pytest.raises(UserError, match='two_crop needs a transform'):
        dataset.ImageFolderInstance(tmp_path / 'train', two_crop=True)


def _write_bad_files(class_folder):
    with open(class_folder / 'img0_a_junk.png', 'wb') as f:
        f.write(b'this is not an image')
    buffer = class_folder / 'img0_b_truncated.png'
    Image.fromarray(_random_images(1, 50, 50, 7)[0]).save(buffer)
    content = buffer.read_bytes()
    buffer.write_bytes(content[: len(content) // 2])


def test_bad_image_raises_user_error_naming_file(tmp_path):
    _write_folder(tmp_path / 'train')
    _write_bad_files(tmp_path / 'train' / 'cat')
    data = dataset.ImageFolderInstance(tmp_path / 'train', transform=TO_TENSOR)
    names = [os.path.basename(path) for path, _ in data.samples]
    for bad in ('img0_a_junk.png', 'img0_b_truncated.png'):
        with pytest.raises(UserError, match=rf'{bad}.*--skip_bad_images'):
            data[names.index(bad)]


def test_skip_bad_images_substitutes_next_item(tmp_path):
    written = _write_folder(tmp_path / 'train')
    _write_bad_files(tmp_path / 'train' / 'cat')
    (tmp_path / 'train' / 'dog' / 'img9_last.png').write_bytes(b'broken')
    data = dataset.ImageFolderInstance(tmp_path / 'train', transform=TO_TENSOR, skip_bad_images=True)
    names = [os.path.basename(path) for path, _ in data.samples]
    junk = names.index('img0_a_junk.png')
    assert names[junk + 1] == 'img0_b_truncated.png'  # two bad files in a row
    with pytest.warns(UserWarning) as warned:
        img, target, index = data[junk]
    assert ['img0_a_junk.png' in str(w.message) for w in warned] == [True, False]
    assert 'img0_b_truncated.png (OSError: image file is truncated)' in str(warned[1].message)
    array, label = written[data.samples[junk + 2][0]]
    assert index == junk + 2 and target == label and torch.equal(img, _chw(array))
    assert data.num_skipped == 2
    data[junk]  # the same files again: not counted twice
    assert data.num_skipped == 2
    with pytest.warns(UserWarning, match='img9_last.png'):
        img, target, index = data[len(data) - 1]  # the last item wraps around to the first
    assert index == 0 and data.num_skipped == 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match=f'image folder {tmp_path / "missing"} does not exist'):
        dataset.ImageFolderInstance(tmp_path / 'missing')
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(UserError, match=f'no images found under {tmp_path / "empty"}: expected class sub-folders'):
        dataset.ImageFolderInstance(tmp_path / 'empty')
    os.makedirs(tmp_path / 'no_images' / 'cat')
    (tmp_path / 'no_images' / 'cat' / 'notes.txt').write_text('not an image')
    with pytest.raises(UserError, match='no images found under .*no_images'):
        dataset.ImageFolderInstance(tmp_path / 'no_images')


# ------------------------------------------------------------------------------- ArrayImageDataset

def test_array_image_dataset_serves_rgb_pil(tmp_path):
    colour = _random_images(2, 5, 6, 3)
    data = dataset.ArrayImageDataset(colour, np.array([1, -1]), ['a', 'b'], transform=TO_TENSOR)
    assert data.targets == [1, -1] and data.classes == ['a', 'b'] and len(data) == 2
    img, target, index = data[1]
    assert torch.equal(img, _chw(colour[1])) and (target, index) == (-1, 1)
    grey = colour[..., 0]  # N x H x W
    img, _, _ = dataset.ArrayImageDataset(grey, [0, 0], ['a'], transform=TO_TENSOR)[0]
    assert img.shape == (3, 5, 6) and all(torch.equal(img[c], torch.from_numpy(grey[0])) for c in range(3))
    pair, _, _ = dataset.ArrayImageDataset(colour, [0, 0], ['a'], transform=TO_TENSOR, two_crop=True)[0]
    assert torch.equal(pair, torch.cat([_chw(colour[0])] * 2))
    with pytest.raises(UserError, match='must be uint8'):
        dataset.ArrayImageDataset(colour.astype(np.float32), [0, 0], ['a'])
    with pytest.raises(UserError, match='2 images but 3 labels'):
        dataset.ArrayImageDataset(colour, [0, 0, 0], ['a'])


# ---------------------------------------------------------------------------------- build_dataset

def test_build_folder_datasets(tmp_path):
    _write_folder(tmp_path / 'train')
    _write_folder(tmp_path / 'val', per_class=1)
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
        images = _random_images(count, 96, 96, seed + offset)
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
        assert returned_index == index and torch.equal(img, _chw(expected))
    (tmp_path / 'stl10_binary' / 'class_names.txt').write_text('\n'.join(f'c{i}' for i in range(10)) + '\n')
    val = dataset.build_dataset('stl10', tmp_path, 'val', TO_TENSOR)
    assert len(val) == 2 and val.targets == written['test'][1].tolist() and val.classes[9] == 'c9'
    assert torch.equal(val[1][0], _chw(written['test'][0][1]))
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
        images = _random_images(2, 32, 32, seed)
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
    assert torch.equal(img, _chw(images[1])) and (target, index) == (labels[1], 7)
    val = dataset.build_dataset('cifar10', tmp_path, 'val', TO_TENSOR, download=True)  # present: no fetch
    assert len(val) == 2 and torch.equal(val[0][0], _chw(written['test_batch'][0][0]))
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
        images = _random_images(3, 28, 28, seed)[..., 0]
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
    content = {'train_images': _random_images(4, 64, 64, 5), 'train_labels': np.array([0, 1, 2, 1]),
               'val_images': _random_images(2, 64, 64, 6), 'val_labels': np.array([2, 0]),
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
        assert torch.equal(img, _chw(content['train_images'][3])) and (target, index) == (1, 3)
    val = dataset.build_dataset('demo', tmp_path, 'val', dataset.moco_train_transform(32), two_crop=True)
    assert len(val) == 2 and val.targets == [2, 0] and val[0][0].shape == (6, 32, 32)
    with pytest.raises(UserError, match='demo data file .*elsewhere.npz not found'):
        dataset.build_dataset('demo', tmp_path / 'elsewhere.npz', 'train', TO_TENSOR)
    np.savez(tmp_path / 'objects.npz', **dict(content, classes=np.array(['a', 'b', 'c'], dtype=object)))
    with pytest.raises(UserError, match='objects.npz is not plain arrays'):
        dataset.build_dataset('demo', tmp_path / 'objects.npz', 'train', TO_TENSOR)
    assert dataset.DEMO_FILE == os.path.join(os.path.dirname(os.path.abspath(dataset.__file__)), 'data', 'emoji64.npz')
