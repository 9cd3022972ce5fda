"""--color_on_cpu (the reference's per-image scikit-image path in the loader) against the device path (uint8 crops,
colour.ViewStack): the same normalised views within 1e-4 of each channel's range, and the same first training step."""
import functools
import os

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import dataset
import train_CMC
from views import COLOUR_VIEWS, VALUE_RANGES, VIEW_STATS, DeviceView, ViewStack
from engine.data import set_loader_epoch
from engine.errors import UserError
from engine.runtime import setup_runtime

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry', 'colorwheel')
SIZE = 64          # crop size: small, so the float64 scikit-image path stays fast
REL_TOL = 1e-4     # of each channel's value range: what --color_on_cpu promises


def _photo(name, side=96):
    """A scikit-image photograph, downscaled (PIL RGB, side x side)."""
    return Image.fromarray(getattr(skimage.data, name)()[..., :3]).resize((side, side), Image.BILINEAR)


def _view_tolerance(views):
    """Per output channel (views order): REL_TOL of the channel's value range in normalised units (range / std)."""
    tol = []
    for view in views:
        space, picked = COLOUR_VIEWS[view]
        (low, high), std = VALUE_RANGES[space], VIEW_STATS[space][1]
        tol += [REL_TOL * (high[c] - low[c]) / std[c] for c in picked]
    return torch.tensor(tol, dtype=torch.float64).view(-1, 1, 1)


def _opt(views, *extra):
    return train_CMC.parse_option(['--dataset', 'demo', '--image_size', str(SIZE), '--model_path', 'unused',
                                   '--tb_path', 'unused', '--color_on_cpu', '--views', *views, *extra])


@pytest.mark.parametrize('views', [('L', 'ab'), ('Y', 'CbCr'), ('L', 'ab', 'S'), ('Y', 'CbCr', 'H', 'V')])
def test_cpu_views_equal_device_views(views):
    # the loader's transform under --color_on_cpu, as train_CMC builds it
    reference = train_CMC.train_transform(_opt(views))
    # the device path on the same pixels: torchvision's crops (the reference's draws), then ViewStack
    crops, on_device = dataset.cmc_train_transform(SIZE, 0.2, fast=False), ViewStack(views)
    tol = _view_tolerance(views)
    for seed, name in enumerate(PHOTOS):
        image = _photo(name)
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        got = on_device(crops(image)[None])[0]
        assert expected.dtype == torch.float64 and got.dtype == torch.float32       # as the reference made them
        assert expected.shape == got.shape == (len(tol), SIZE, SIZE)
        worst = ((got.double() - expected).abs() - tol).amax()
        assert worst <= 0, f'{name}: off by {worst:.3g} beyond {REL_TOL} of the range'


def test_legacy_views_are_the_reference_transform():
    """--view Lab / YCbCr under --color_on_cpu run exactly the reference's transform: crop, flip, scikit-image
    float64 conversion, ToTensor, Normalize."""
    for space, views in (('Lab', ('L', 'ab')), ('YCbCr', ('Y', 'CbCr'))):
        steps = train_CMC.train_transform(_opt(views)).transforms
        assert [type(step).__name__ for step in steps] == ['RandomResizedCrop', 'RandomHorizontalFlip',
                                                           'ColourConversion', 'ToTensor', 'Normalize']
        assert steps[2].space == space and steps[2].use_skimage
        assert (tuple(steps[4].mean), tuple(steps[4].std)) == VIEW_STATS[space]


def test_moco_rgb_on_cpu_equals_device():
    image, seed = _photo('coffee'), 3
    torch.manual_seed(seed)
    expected = dataset.moco_train_transform(SIZE, 0.2, 'CJ', color_on_cpu=True)(image)
    torch.manual_seed(seed)
    got = DeviceView('RGB')(dataset.moco_train_transform(SIZE, 0.2, 'CJ')(image)[None])[0]
    # RGB's range [0, 1] over std ~0.225: 1e-4 of it is ~4.4e-4 in normalised units; both are float32 here
    assert torch.allclose(got, expected, atol=REL_TOL / 0.229, rtol=0)


def test_unsupported_views_are_one_clear_error():
    with pytest.raises(UserError, match='--color_on_cpu converts colour views of one RGB image'):
        train_CMC.parse_option(['--dataset', 'multiview_folder', '--data_folder', 'x', '--model_path', 'm',
                                '--tb_path', 't', '--color_on_cpu', '--views', 'L', 'depth'])
    with pytest.raises(UserError, match=r'--color_on_cpu converts colour views only \(L ab'):
        dataset.ReferenceViewStack(('L', 'depth'))


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
    """24 real photographs (4 crops of each of 6), 80 px PNGs, in an ImageFolder with 2 classes."""
    root = tmp_path_factory.mktemp('photos')
    for i, name in enumerate(PHOTOS):
        image = _photo(name, side=160)
        for j, (left, top) in enumerate([(0, 0), (80, 0), (0, 80), (80, 80)]):
            folder = root / 'train' / f'class_{i % 2}'
            os.makedirs(folder, exist_ok=True)
            image.crop((left, top, left + 80, top + 80)).save(folder / f'{name}_{j}.png')
    return str(root)


def _first_step(argv):
    """(loss, encoders' input with its gradient) of the first training step of train_CMC with argv."""
    opt = train_CMC.parse_option(argv)
    rt = setup_runtime(opt)                          # seeds everything from --seed: the same init both ways
    parts = train_CMC.build(opt, rt)
    seen = {}

    def keep(module, inputs, output):                # the normalised views, as a leaf whose gradient we read
        seen['x'] = output.detach().requires_grad_()
        return seen['x']

    parts.train_view.register_forward_hook(keep)
    set_loader_epoch(parts.loader, 1)
    parts.method.train()
    result = parts.stepper(next(iter(parts.loader)), rt.device)
    result.loss.backward()
    return result.loss.item(), seen['x']


@pytest.mark.parametrize('view', ['Lab', 'YCbCr'])
def test_training_step_agrees(tmp_path, photo_folder, monkeypatch, view):
    argv = ['--dataset', 'folder', '--data_folder', photo_folder, '--model_path', str(tmp_path / 'm'),
            '--tb_path', str(tmp_path / 't'), '--model', 'resnet18v1', '--image_size', str(SIZE), '--batch_size', '8',
            '--nce_k', '8', '--softmax', '--num_workers', '0', '--device', 'cpu', '--seed', '0', '--knn_freq', '0',
            '--view', view]
    # The device path with torchvision's crops, the draws the reference transform makes: the same pixels both ways
    # (the default fast crop is within 1 uint8 level of them, tests/views/test_kernels.py).
    monkeypatch.setattr(train_CMC, 'cmc_train_transform', functools.partial(dataset.cmc_train_transform, fast=False))
    loss_device, x_device = _first_step(argv)
    loss_cpu, x_cpu = _first_step(argv + ['--color_on_cpu'])
    assert x_cpu.dtype == x_device.dtype == torch.float32
    assert (x_cpu - x_device).abs().max() <= 2 * REL_TOL        # 1e-4 of the range: 2 in normalised units
    # Tolerance, derived: the loss is a smooth function of the views x (softmax loss, no Z fixed from the batch), so
    # to first order loss_cpu - loss_device = sum(dloss/dx * (x_cpu - x_device)), the gradient measured on the device
    # path (second order is ~delta^2, nothing at delta ~ 5e-7); plus float32 rounding of the forward pass itself (the
    # same ops on inputs that differ in their last bits round differently): 2e-6 of the loss, ~32 float32 ulps
    # (measured 3-7e-7 of it with resnet18v1 and alexnet; the first-order term is 0-2e-6).
    first_order = (x_device.grad.double() * (x_cpu - x_device).double()).sum().abs().item()
    tolerance = first_order + 2e-6 * abs(loss_device)
    assert abs(loss_cpu - loss_device) <= tolerance, (loss_cpu, loss_device, tolerance)
    assert np.isfinite(loss_device) and loss_device > 0
