"""views.kernels (the uint8 colour kernels: fast_rgb_to_*, FastView) and DeviceView on the CPU against scikit-image
and the generic formula, also under autocast."""

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from conftest import chw
from PIL import Image

import dataset
from views import kernels

PHOTOS = ('astronaut', 'coffee', 'chelsea')


@pytest.mark.parametrize('name', PHOTOS)
def test_fast_lab_matches_skimage(name):
    # float32 throughout: the cube root exp(log(t) / 3) is good to ~1e-7 relative, and a = 500 (fx - fy) multiplies
    # that by 500, so ~1e-4 is the float32 floor; measured 9e-5 over all 256^3 colours. 5e-4 leaves a margin.
    photo = getattr(skimage.data, name)()
    ours = kernels.fast_rgb_to_lab(chw(photo)).permute(1, 2, 0).double().numpy()
    assert np.abs(ours - skimage.color.rgb2lab(photo)).max() <= 5e-4


@pytest.mark.parametrize('name', PHOTOS)
def test_fast_ycbcr_matches_skimage(name):
    # A float32 affine map of values up to 240: ulp ~1.5e-5, a few roundings; measured 3.3e-5 over all colours.
    photo = getattr(skimage.data, name)()
    ours = kernels.fast_rgb_to_ycbcr(chw(photo)).permute(1, 2, 0).double().numpy()
    assert np.abs(ours - skimage.color.rgb2ycbcr(photo)).max() <= 1e-4


def test_lab_toe_and_extremes():
    # Dark colours take the linear toe of CIE f(t); black, white and the primaries bound the range.
    values = np.array([0, 1, 2, 5, 10, 20, 23, 24, 25, 30, 128, 254, 255], dtype=np.uint8)
    grid = np.stack(np.meshgrid(values, values, values, indexing='ij'), -1).reshape(len(values), -1, 3)
    ours = kernels.fast_rgb_to_lab(chw(grid)).permute(1, 2, 0).double().numpy()
    assert np.abs(ours - skimage.color.rgb2lab(grid)).max() <= 5e-4


@pytest.mark.parametrize('space', ['Lab', 'YCbCr', 'RGB'])
def test_fast_view_matches_device_view(space):
    # Same float32 maths in a different order (normalisation folded into the matrices): measured ~1e-6.
    batch = torch.stack([chw(getattr(skimage.data, name)()[:160, :160]) for name in PHOTOS])  # 3 x 3 x 160 x 160
    two_crop = torch.cat([batch, batch.flip(-1)], dim=1)  # B x 6 x H x W, as MoCo's query and key
    ours = kernels.FastView(space)(two_crop)
    assert ours.dtype == torch.float32 and ours.shape == two_crop.shape
    generic = dataset.DeviceView(space, cpu_kernel=False)(two_crop)     # the formula DeviceView runs off the CPU
    assert (ours - generic).abs().max().item() <= 1e-5
    assert torch.equal(dataset.DeviceView(space)(two_crop), ours)      # on the CPU DeviceView runs FastView's kernel


def photo_batch(names=PHOTOS, size=(256, 192)):
    """scikit-image photographs resized to size (w, h): (uint8 B x 3 x H x W, list of H x W x 3 arrays)."""
    photos = [np.asarray(Image.fromarray(getattr(skimage.data, name)()[..., :3]).resize(size, Image.BILINEAR))
              for name in names]
    return torch.stack([chw(photo) for photo in photos]), photos


# What scikit-image gives, and the kernels' stated bound to it (in each space's units; see the tests above).
SKIMAGE_BOUNDS = {'Lab': (skimage.color.rgb2lab, 5e-4), 'YCbCr': (skimage.color.rgb2ycbcr, 1e-4),
                  'RGB': (lambda photo: photo / 255.0, 1e-6)}


@pytest.mark.parametrize('space', ['Lab', 'YCbCr', 'RGB'])
def test_device_view_on_cpu_matches_skimage_and_generic(space):
    # DeviceView as training runs it on the CPU (the uint8 kernel): scikit-image's float64 view within the kernels'
    # bound (divided by std: normalised units), and the generic formula within 1e-5, on real photographs.
    batch, photos = photo_batch(PHOTOS + ('rocket', 'immunohistochemistry'))
    view = dataset.DeviceView(space)
    assert view.cpu_kernel
    ours = view(batch)
    assert ours.dtype == torch.float32 and ours.shape == batch.shape
    reference, bound = SKIMAGE_BOUNDS[space]
    mean, std = (np.array(stat).reshape(3, 1, 1) for stat in dataset.VIEW_STATS[space])
    for image, photo in zip(ours, photos):
        expected = (reference(photo).transpose(2, 0, 1) - mean) / std
        assert np.all(np.abs(image.double().numpy() - expected) <= bound / std + 1e-6)
    generic = dataset.DeviceView(space, cpu_kernel=False)(batch)
    assert (ours - generic).abs().max().item() <= 1e-5


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('space', ['Lab', 'YCbCr', 'RGB'])
def test_device_view_on_cpu_under_autocast(space, dtype):
    # Training may run the view under --amp (CPU autocast). The generic formula stays float32 there (elementwise ops
    # only); the kernel's matrix products would run in bfloat16 (errors ~1e-2) unless autocast is off inside them.
    batch, _ = photo_batch()
    plain = dataset.DeviceView(space)(batch)
    with torch.autocast('cpu', dtype=dtype):
        ours = dataset.DeviceView(space)(batch)
        generic = dataset.DeviceView(space, cpu_kernel=False)(batch)
        lab = kernels.fast_rgb_to_lab(batch)
        assert torch.is_autocast_enabled('cpu')                          # switched off inside the kernel only
    assert ours.dtype == generic.dtype == torch.float32
    assert (ours - generic).abs().max().item() <= 1e-5
    assert torch.equal(ours, plain) and torch.equal(lab, kernels.fast_rgb_to_lab(batch))
    assert torch.equal(generic, dataset.DeviceView(space, cpu_kernel=False)(batch))


def test_device_view_off_the_cpu_runs_the_generic_formula(monkeypatch):
    # Accelerators keep the generic formula: on a non-CPU device (meta: shapes only) the kernel is never called.
    def refuse(*args):
        raise AssertionError('uint8 kernel called off the CPU')
    monkeypatch.setattr(kernels, '_cpu_kernel', refuse)
    view = dataset.DeviceView('Lab').to('meta')
    out = view(torch.empty(2, 6, 8, 8, dtype=torch.uint8, device='meta'))
    assert out.device.type == 'meta' and out.dtype == torch.float32 and out.shape == (2, 6, 8, 8)
    with pytest.raises(AssertionError, match='off the CPU'):
        dataset.DeviceView('Lab')(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))   # the CPU does call it
    assert not dataset.DeviceView('HSV').cpu_kernel and not dataset.DeviceView('Lab', cpu_kernel=False).cpu_kernel


def test_conversions_reject_bad_input():
    with pytest.raises(TypeError):
        kernels.fast_rgb_to_lab(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError):
        kernels.fast_rgb_to_lab(torch.zeros(4, 4, 3, dtype=torch.uint8)[..., :2])
    with pytest.raises(ValueError):
        kernels.FastView('HSV')


def test_large_image_runs_in_chunks():
    # More pixels than one chunk: chunk boundaries must not show.
    assert kernels.CPU_CHUNK_PIXELS < 300 * 256                                     # more than one chunk
    photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((300, 256)))
    ours = kernels.fast_rgb_to_lab(chw(photo)[None]).squeeze(0).permute(1, 2, 0).double().numpy()
    assert np.abs(ours - skimage.color.rgb2lab(photo)).max() <= 5e-4
