"""inputs.folders: ImageFolderInstance (items, two crops, undecodable files) and ArrayImageDataset, on tiny generated
files."""
import os

import numpy as np
import pytest
import torch
from conftest import chw, random_images, write_class_folder
from PIL import Image
from torchvision import transforms

import dataset
from engine.errors import UserError

TO_TENSOR = transforms.PILToTensor()


def test_image_folder_instance_items(tmp_path):
    written = write_class_folder(tmp_path / 'train')
    data = dataset.ImageFolderInstance(tmp_path / 'train', transform=TO_TENSOR)
    assert data.classes == ['cat', 'dog'] and data.targets == [0, 0, 0, 1, 1, 1] and len(data) == 6
    for index in range(len(data)):
        img, target, returned_index = data[index]
        array, label = written[data.samples[index][0]]
        assert returned_index == index and target == label and torch.equal(img, chw(array))


def test_image_folder_instance_two_crop(tmp_path):
    write_class_folder(tmp_path / 'train', size=(40, 30))
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
    Image.fromarray(random_images(1, 50, 50, 7)[0]).save(buffer)
    content = buffer.read_bytes()
    buffer.write_bytes(content[: len(content) // 2])


def test_bad_image_raises_user_error_naming_file(tmp_path):
    write_class_folder(tmp_path / 'train')
    _write_bad_files(tmp_path / 'train' / 'cat')
    data = dataset.ImageFolderInstance(tmp_path / 'train', transform=TO_TENSOR)
    names = [os.path.basename(path) for path, _ in data.samples]
    for bad in ('img0_a_junk.png', 'img0_b_truncated.png'):
        with pytest.raises(UserError, match=rf'{bad}.*--skip_bad_images'):
            data[names.index(bad)]


def test_skip_bad_images_substitutes_next_item(tmp_path):
    written = write_class_folder(tmp_path / 'train')
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
    assert index == junk + 2 and target == label and torch.equal(img, chw(array))
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


def test_array_image_dataset_serves_rgb_pil(tmp_path):
    colour = random_images(2, 5, 6, 3)
    data = dataset.ArrayImageDataset(colour, np.array([1, -1]), ['a', 'b'], transform=TO_TENSOR)
    assert data.targets == [1, -1] and data.classes == ['a', 'b'] and len(data) == 2
    img, target, index = data[1]
    assert torch.equal(img, chw(colour[1])) and (target, index) == (-1, 1)
    grey = colour[..., 0]  # N x H x W
    img, _, _ = dataset.ArrayImageDataset(grey, [0, 0], ['a'], transform=TO_TENSOR)[0]
    assert img.shape == (3, 5, 6) and all(torch.equal(img[c], torch.from_numpy(grey[0])) for c in range(3))
    pair, _, _ = dataset.ArrayImageDataset(colour, [0, 0], ['a'], transform=TO_TENSOR, two_crop=True)[0]
    assert torch.equal(pair, torch.cat([chw(colour[0])] * 2))
    with pytest.raises(UserError, match='must be uint8'):
        dataset.ArrayImageDataset(colour.astype(np.float32), [0, 0], ['a'])
    with pytest.raises(UserError, match='2 images but 3 labels'):
        dataset.ArrayImageDataset(colour, [0, 0, 0], ['a'])
