"""Shared fixtures: a tiny generated ImageFolder (real PNG files) and a helper to run a script's main()."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

# Tiny models: one thread is as fast and does not fight the subprocesses some tests start for the two cores.
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The device the tests that build models and contrast memories run on, and the --device the script tests pass:
# TEST_DEVICE=cuda runs the same suite on a GPU (bench/gpu.sh does); the CPU by default.
TEST_DEVICE = os.environ.get('TEST_DEVICE', 'cpu')


@pytest.fixture
def device():
    return torch.device(TEST_DEVICE)


def make_image_folder(root, classes=3, per_class=8, size=72, splits=('train', 'val'), seed=0, ext='png'):
    """Class-coloured noisy squares, so that a probe has something to learn, saved as ``ext``; returns root."""
    rng = np.random.RandomState(seed)
    palette = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 200, 40)]
    for split in splits:
        for c in range(classes):
            folder = os.path.join(root, split, f'class_{c}')
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                img = rng.randint(0, 256, (size, size, 3)).astype(np.float32) * 0.3
                x0, y0 = rng.randint(0, size // 2, 2)
                img[y0:y0 + size // 2, x0:x0 + size // 2] += np.array(palette[c % 4]) * 0.7
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f'{i}.{ext}'))
    return str(root)


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


def random_images(count, height, width, seed):
    """count x height x width x 3 uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def chw(image_hwc):
    """An H x W x C uint8 array as a C x H x W tensor (PILToTensor's layout)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image_hwc).transpose(2, 0, 1)))


def write_class_folder(root, per_class=3, size=(12, 10)):
    """root/{cat,dog}/img{i}.png with random pixels; returns {path: (array, class index)}."""
    written = {}
    for label, name in enumerate(['cat', 'dog']):
        os.makedirs(root / name)
        for i, array in enumerate(random_images(per_class, size[1], size[0], seed=10 * label + 1)):
            path = str(root / name / f'img{i}.png')
            Image.fromarray(array).save(path)
            written[path] = (array, label)
    return written


# How writers that keep no OSError report a full disk: torch.save to a path (its C++ zip writer) and safetensors.
TORCH_ZIP_FAILURE = '[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0'
SAFETENSORS_NO_ROOM = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                       'device" }) (os error 28)')


def no_room_left(monkeypatch, folder):
    """Make os.statvfs say that ``folder``'s file system has no free block left (other folders as they are)."""
    real = os.statvfs
    full = os.statvfs_result((4096, 4096, 100, 0, 0, 10, 0, 0, 0, 255))     # f_bavail 0
    monkeypatch.setattr(os, 'statvfs', lambda path: full if str(path) == str(folder) else real(path))
