"""Colour conversions, normalisation constants and DeviceView against scikit-image."""

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from PIL import Image

import dataset
from engine.errors import UserError

# Written out here (not taken from dataset.py) so the tests check the mapping too.
SKIMAGE = {
    'Lab': skimage.color.rgb2lab, 'YCbCr': skimage.color.rgb2ycbcr, 'HSV': skimage.color.rgb2hsv,
    'HED': skimage.color.rgb2hed, 'LUV': skimage.color.rgb2luv, 'YUV': skimage.color.rgb2yuv,
    'XYZ': skimage.color.rgb2xyz, 'YDbDr': skimage.color.rgb2ydbdr, 'YPbPr': skimage.color.rgb2ypbpr,
    'YIQ': skimage.color.rgb2yiq, 'CIERGB': skimage.color.rgb2rgbcie,
}
SPACES = sorted(SKIMAGE)
# of each channel's value range: float32 ops vs scikit-image's float64 (Lab's a = 500 (fx - fy) cancels to ~2e-4,
# 1e-6 of its range), plus formula differences (float32 constants, pow vs cbrt, linear toes near thresholds)
REL_TOL = 1e-4


def _photos(size=64):
    """Real photographs bundled with scikit-image, downscaled for speed (uint8 H x W x 3)."""
    names = ['astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry', 'colorwheel']
    return {name: np.array(Image.fromarray(getattr(skimage.data, name)()[..., :3]).resize((size, size),
                                                                                           Image.BILINEAR))
            for name in names}


def _edge_colours():
    """Black/white, primaries, secondaries, greys, near-greys, hue-wrap pixels, plus seeded random colours."""
    corners = [(r, g, b) for r in (0, 255) for g in (0, 255) for b in (0, 255)]
    greys = [(v, v, v) for v in (1, 2, 10, 11, 127, 128, 254)]
    near = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (255, 254, 254), (254, 255, 255), (128, 128, 129),
            (255, 0, 1), (255, 1, 0), (1, 0, 255), (255, 255, 254), (112, 0, 255), (255, 0, 255)]
    random = np.random.default_rng(0).integers(0, 256, size=(64 - len(corners) - len(greys) - len(near), 3))
    return np.concatenate([np.array(corners + greys + near), random]).astype(np.uint8).reshape(8, 8, 3)


PHOTOS = _photos()
IMAGES = dict(PHOTOS, edges=_edge_colours())


def _tolerance(space):
    low, high = dataset.VALUE_RANGES[space]
    return REL_TOL * (np.array(high) - np.array(low))


@pytest.mark.parametrize('space', SPACES)
def test_named_callable_matches_skimage(space):
    convert = getattr(dataset, f'RGB2{space}')()
    assert convert.space == space and not convert.use_skimage
    for name, image in IMAGES.items():
        ours = convert(Image.fromarray(image))
        expected = SKIMAGE[space](image)
        assert ours.shape == image.shape and ours.dtype == np.float32
        error = np.abs(ours.astype(np.float64) - expected).reshape(-1, 3).max(0)
        assert np.all(error <= _tolerance(space)), (name, error)


@pytest.mark.parametrize('space', ['Lab', 'HSV', 'HED'])
def test_skimage_backend_is_skimage(space):
    image = IMAGES['edges']
    assert np.array_equal(dataset.ColourConversion(space, use_skimage=True)(Image.fromarray(image)),
                          SKIMAGE[space](image))


def test_hsv_edge_cases_follow_the_formula():
    pixels = np.array([[[0, 0, 0], [77, 77, 77], [255, 0, 1], [255, 255, 0], [0, 255, 255], [255, 0, 255]]],
                      dtype=np.uint8)
    hsv = dataset.rgb_to('HSV', torch.from_numpy(pixels).permute(2, 0, 1).float() / 255).permute(1, 2, 0).numpy()
    # Hue in turns: grey -> 0; red max with g < b wraps to 1 - 1/(6*255); yellow 1/6; cyan 1/2; magenta 5/6.
    expected = np.array([[[0, 0, 0], [0, 0, 77 / 255], [1 - 1 / 1530, 1, 1], [1 / 6, 1, 1], [0.5, 1, 1],
                          [5 / 6, 1, 1]]])
    assert np.allclose(hsv, expected, rtol=0, atol=1e-6)  # a few float32 ops on values <= 1: a few ulps of 1 (1.2e-7)


def test_lab_of_white_and_black():
    pixels = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]])  # 3 x 1 x 2: white, black
    lab = dataset.rgb_to('Lab', pixels)
    # White's XYZ is the sRGB matrix's row sums, a hair off the D65 white point, so a, b are not exactly 0.
    white_xyz = np.array([0.412453 + 0.357580 + 0.180423, 0.212671 + 0.715160 + 0.072169,
                          0.019334 + 0.119193 + 0.950227]) / np.array([0.95047, 1.0, 1.08883])
    f = np.cbrt(white_xyz)
    expected = torch.tensor([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])], dtype=torch.float32)
    # the known offset, as scikit-image gives (-0.002455; quoted to 3 digits, hence 1e-4)
    assert abs(expected[1].item() + 0.00244) < 1e-4
    # float32 vs float64: a = 500 (fx - fy) and b = 200 (fy - fz) cancel, 500 x 2 x ~3.5 U (float32 matrix, pow) = 2e-4
    # worst case; L = 116 fy - 16 is off by ~116 x 3.5 U = 2.4e-5
    assert torch.allclose(lab[:, 0, 0], expected, rtol=0, atol=2e-4)
    # black: a, b are differences of equal f (exactly 0); L = 116 fl(16 / 116) - 16 is at most the spacing below 16
    assert torch.allclose(lab[:, 0, 1], torch.zeros(3), rtol=0, atol=1e-6)


@pytest.mark.parametrize('space', SPACES)
def test_value_ranges_match_skimage(space):
    levels = np.arange(0, 256, 5, dtype=np.uint8)  # includes 0 and 255
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing='ij'), -1).reshape(-1, 3)
    extremes = np.array([[112, 0, 255], [255, 0, 1]], dtype=np.uint8)  # LUV's v minimum, HSV's largest hue
    values = SKIMAGE[space](np.concatenate([grid, extremes])[None]).reshape(-1, 3)
    low, high = (np.array(bound) for bound in dataset.VALUE_RANGES[space])
    width = high - low
    assert np.all(values.min(0) >= low - 1e-6 * width) and np.all(values.max(0) <= high + 1e-6 * width)
    # not rounding: the 5-level grid (plus the two listed extremes) comes within 0.1% of each range's ends
    assert np.allclose(values.min(0), low, rtol=0, atol=1e-3 * width) and np.allclose(values.max(0), high, rtol=0,
                                                                                      atol=1e-3 * width)


def test_view_stats():
    assert dataset.VIEW_STATS['Lab'] == ((50, 6.025, -6.6895), (50, 92.208, 101.1675))
    assert dataset.VIEW_STATS['YCbCr'] == ((116.151, 121.080, 132.342), (109.500, 111.855, 111.964))
    assert dataset.VIEW_STATS['RGB'] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # The reference's Lab values are the midpoint / half-range of Lab's range, which the other spaces reuse.
    low, high = (np.array(bound) for bound in dataset.VALUE_RANGES['Lab'])
    # the reference's Lab values are rounded to 3-4 decimals (off by <= 2.1e-4 here)
    assert np.allclose((low + high) / 2, dataset.VIEW_STATS['Lab'][0], rtol=0, atol=1e-3)
    assert np.allclose((high - low) / 2, dataset.VIEW_STATS['Lab'][1], rtol=0, atol=1e-3)
    for space in ['HSV', 'HED', 'LUV', 'YUV', 'XYZ', 'YDbDr', 'YPbPr', 'YIQ', 'CIERGB']:
        low, high = (np.array(bound) for bound in dataset.VALUE_RANGES[space])
        mean, std = (np.array(stat) for stat in dataset.VIEW_STATS[space])
        # VIEW_STATS rounds to 6 decimals: <= 5e-7
        assert np.allclose(mean, (low + high) / 2, rtol=0, atol=1e-6) and np.allclose(std, (high - low) / 2, rtol=0,
                                                                                    atol=1e-6)
    assert set(dataset.VIEW_STATS) == set(dataset.COLOUR_SPACES) == set(SPACES) | {'RGB'}


@pytest.mark.parametrize('space', SPACES)
def test_batched_equals_per_image(space):
    batch = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in PHOTOS.values()]).float() / 255
    together = dataset.rgb_to(space, batch)  # B x 3 x H x W
    assert together.shape == batch.shape and together.dtype == torch.float32
    # the same per-pixel float32 ops batched or not; only vectorised vs scalar-tail pow may differ by an ulp or two:
    # 1e-6 of the range is > 8 ulps of its largest value
    tolerance = torch.from_numpy(_tolerance(space)).float().view(3, 1, 1) * 1e-2
    for i in range(len(batch)):
        assert torch.all((together[i] - dataset.rgb_to(space, batch[i])).abs() <= tolerance)
    pairs = dataset.rgb_to(space, batch.view(3, 2, 3, 64, 64))  # B x k x 3 x H x W
    assert torch.equal(pairs.view_as(together), together)


def test_rgb_to_rejects_bad_input():
    with pytest.raises(UserError, match='divide uint8 images by 255'):
        dataset.rgb_to('Lab', torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(UserError, match=r'\(\.\.\., 3, H, W\)'):
        dataset.rgb_to('Lab', torch.zeros(4, 4, 4))
    with pytest.raises(UserError, match="unknown colour space 'Lba'"):
        dataset.rgb_to('Lba', torch.zeros(3, 4, 4))
    assert torch.equal(dataset.rgb_to('lab', torch.ones(3, 1, 1)), dataset.rgb_to('Lab', torch.ones(3, 1, 1)))


def _expected_view(space, image):
    """(skimage(image) - mean) / std per channel, C x H x W (ImageNet-normalised RGB for 'RGB')."""
    values = image / 255.0 if space == 'RGB' else SKIMAGE[space](image)
    mean, std = (np.array(stat) for stat in dataset.VIEW_STATS[space])
    return torch.from_numpy(((values - mean) / std).transpose(2, 0, 1))


@pytest.mark.parametrize('space', ['Lab', 'YCbCr', 'RGB', 'HSV', 'LUV'])
def test_device_view_matches_skimage(space):
    photos = list(PHOTOS.values())
    uint8 = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in photos])  # B x 3 x H x W
    view = dataset.DeviceView(space)
    out = view(uint8)
    assert out.dtype == torch.float32 and out.shape == uint8.shape
    low, high = (np.array(bound) for bound in dataset.VALUE_RANGES[space])
    # REL_TOL of the range, in normalised units
    tolerance = torch.from_numpy(REL_TOL * (high - low) / np.array(dataset.VIEW_STATS[space][1])).view(3, 1, 1)
    for i, image in enumerate(photos):
        assert torch.all((out[i].double() - _expected_view(space, image)).abs() <= tolerance)
    # Six channels (MoCo's query and key crops): each half is its own image.
    pairs = view(torch.cat([uint8[:3], uint8[3:]], dim=1))  # 3 x 6 x H x W
    assert pairs.shape == (3, 6, 64, 64)
    for i in range(3):
        assert torch.all((pairs[i, :3].double() - _expected_view(space, photos[i])).abs() <= tolerance)
        assert torch.all((pairs[i, 3:].double() - _expected_view(space, photos[i + 3])).abs() <= tolerance)


def test_device_view_module_contract():
    view = dataset.DeviceView('ycbcr')
    assert view.space == 'YCbCr' and view.state_dict() == {}  # constants, not checkpointed state
    assert torch.equal(view.mean.flatten(), torch.tensor(dataset.VIEW_STATS['YCbCr'][0], dtype=torch.float32))
    uint8 = torch.from_numpy(PHOTOS['coffee']).permute(2, 0, 1)[None]
    plain = view(uint8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        autocast = view(uint8)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)
    # CPU chunking (3 chunks of 2, 2 and 1 images) gives the same as one pass.
    batch = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in list(PHOTOS.values())[:5]])
    whole = view(batch)
    view.CPU_CHUNK_PIXELS = 2 * 64 * 64
    # same per-pixel ops; chunk sizes only move the vectorised / scalar-tail split of pow: a few ulps of |v| <~ 1.5
    assert torch.allclose(view(batch), whole, atol=1e-6, rtol=0)
    with pytest.raises(UserError, match='expects uint8'):
        view(uint8.float())
    with pytest.raises(UserError, match='B x 3k x H x W'):
        view(uint8[:, :2])


@pytest.mark.parametrize('space', ['Lab', 'YCbCr', 'RGB'])
def test_reference_path_equals_device_path(space):
    image = Image.fromarray(_photos(96)['astronaut'])
    reference = dataset.reference_cmc_transform(48, 0.2, space)
    ours, view = dataset.cmc_train_transform(48, 0.2, fast=False), dataset.DeviceView(space)  # the same pixels
    outputs = []
    for seed in range(3):
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        crop = ours(image)
        # Float arrays stay float64 through ToTensor, as in the reference; RGB goes PIL -> float32.
        assert expected.dtype == (torch.float32 if space == 'RGB' else torch.float64) and crop.dtype == torch.uint8
        got = view(crop[None])[0]
        # float32 vs float64 conversion: REL_TOL of the range in normalised units (range / std = 2): 2e-4
        assert torch.allclose(got.double(), expected.double(), atol=2e-4, rtol=0)
        outputs.append(got)
    # different seeds crop differently: apart by more than the conversion tolerance above
    assert not torch.allclose(outputs[0], outputs[1], rtol=0, atol=2e-4)
