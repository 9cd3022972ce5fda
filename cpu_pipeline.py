"""Fast CPU input-pipeline pieces: uint8 colour conversions and reduced-scale JPEG decoding for random crops.

Conventions (one for the whole module):
  * images are **uint8 torch tensors, channels first**: (..., 3, H, W), as `PILToTensor` and the data loader make
    them; conversions return float32 tensors of the same shape on the CPU;
  * crops are boxes (top, left, height, width) in full-resolution pixels, as torchvision's
    `RandomResizedCrop.get_params` returns them.

Colour (`fast_rgb_to_lab`, `fast_rgb_to_ycbcr`, `FastView`): because inputs are uint8, the sRGB gamma is a 256-entry
lookup table (exact up to float32 rounding); the 3 x 3 colour matrices (white point and normalisation folded in) run
as one float32 matrix product per chunk of pixels; the CIE cube root is exp(log(t) / 3) (vectorised float32 exp/log).
Lab runs in chunks of 2^15 pixels, so every temporary stays in cache. Agreement with scikit-image 0.26 (float64),
measured over all 256^3 uint8 colours: Lab max |diff| 9e-5 (L, a, b units; bound 5e-4), YCbCr 3.3e-5 (bound 1e-4).

Decoding (`decode_crop`, `draft_random_resized_crop`, `DraftRandomResizedCrop`): JPEG's DCT can decode at 1/2, 1/4 or
1/8 scale for a fraction of the cost (PIL `Image.draft`). A random-resized crop is decoded at the smallest such scale
at which the crop box still has at least the output resolution, so the final bilinear (antialiased) downscale only
ever shrinks; the result then differs from a full-resolution decode of the same box only by the DCT-domain
pre-filtering: mean |diff| ~1 uint8 level (<= 4 per crop), see `DRAFT_TOLERANCE`. With no reduction the result is
exactly torchvision's RandomResizedCrop + RandomHorizontalFlip + PILToTensor.
"""

import math
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

# from colour, not dataset: dataset imports this module
from colour import VIEW_STATS, XYZ_FROM_RGB, D65_WHITE, YCBCR_FROM_RGB, YCBCR_OFFSET, canonical_space

# scikit-image's CIE constants (xyz2lab), so that we agree with it rather than with the exact 216/24389.
CIE_EPSILON = 0.008856
CIE_SLOPE = 7.787
CHUNK_PIXELS = 1 << 15  # pixels per chunk of Lab: 3 float32 channels = 384 KiB, its temporaries stay in L2
LINEAR_CHUNK_PIXELS = 1 << 18  # linear maps have one temporary: whole images (up to 512 x 512) in one product

# Agreement of a draft (reduced-scale) decode with a full decode of the same box, per crop, in uint8 levels: the bounds
# tests/test_cpu_pipeline.py asserts. Measured on scikit-image photographs saved as JPEG quality 90 at 500 x 375, 200
# random boxes each, 64 and 112 px outputs: mean |diff| 0.3-1.8 on average, 3.1 at worst (1/4 scale, astronaut);
# max |diff| 55 at worst (a single pixel on a sharp edge). At scale 1 (no draft) the result is torchvision's exactly.
DRAFT_TOLERANCE = {'mean_abs': 4.0, 'max_abs': 80}


def _srgb_linear_lut():
    """256 float64 values: the sRGB transfer curve undone for v / 255 (piecewise, as scikit-image rgb2xyz)."""
    v = np.arange(256, dtype=np.float64) / 255.0
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


_LINEAR_LUT = _srgb_linear_lut().astype(np.float32)
# XYZ / white point from linear RGB: rows of xyz_from_rgb scaled by 1 / white (float64, then float32).
_XYZN_FROM_LINEAR = torch.from_numpy((XYZ_FROM_RGB / np.array(D65_WHITE)[:, None]).astype(np.float32))
# (L, a, b) from (fx, fy, fz): L = 116 fy - 16, a = 500 (fx - fy), b = 200 (fy - fz).
_LAB_FROM_F = np.array([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
_LAB_OFFSET = np.array([-16.0, 0.0, 0.0])
# The linear toe meets cbrt at epsilon up to scikit-image's rounded constants: add the gap back below epsilon.
_TOE_GAP = CIE_SLOPE * CIE_EPSILON + 16.0 / 116.0 - CIE_EPSILON ** (1.0 / 3.0)
_TOE_SHIFT = CIE_EPSILON - _TOE_GAP / CIE_SLOPE  # 7.787 (t - shift) = 7.787 (t - eps) + gap


def _affine(matrix, offset, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """(3 x 3 float32 matrix, 3 x 1 float32 bias) of x -> ((matrix @ x + offset) - mean) / std."""
    std = np.asarray(std, dtype=np.float64)[:, None]
    weight = np.asarray(matrix, dtype=np.float64) / std
    bias = (np.asarray(offset, dtype=np.float64) - np.asarray(mean, dtype=np.float64))[:, None] / std
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


def _check_uint8(images):
    """Raise unless images is a uint8 CPU tensor (..., 3, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 torch tensor, got {type(images).__name__} "
                        f"{getattr(images, 'dtype', '')}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected shape (..., 3, H, W), got {tuple(images.shape)}")
    if images.device.type != 'cpu':
        raise ValueError("cpu_pipeline conversions run on the CPU; use dataset.DeviceView on other devices")


def _run_chunks(images, convert, chunk_pixels=CHUNK_PIXELS):
    """Apply convert(uint8 3 x n, float32 3 x n out) chunk by chunk; returns float32 (..., 3, H, W)."""
    _check_uint8(images)
    height, width = images.shape[-2:]
    flat_in = images.reshape(-1, 3, height * width)
    out = torch.empty(images.shape, dtype=torch.float32)
    flat_out = out.view(-1, 3, height * width)
    for index in range(flat_in.shape[0]):
        for start in range(0, height * width, chunk_pixels):
            stop = start + chunk_pixels
            convert(flat_in[index, :, start:stop], flat_out[index, :, start:stop])
    return out


def _addmm_into(out, bias, weight, x):
    """out = weight @ x + bias, written in place (directly when out is contiguous, else through a copy)."""
    if out.is_contiguous():
        torch.addmm(bias, weight, x, out=out)
    else:
        out.copy_(torch.addmm(bias, weight, x))


def _lab_chunk(rgb, out, weight, bias):
    """One chunk: uint8 3 x n RGB -> out (3 x n float32) = weight @ f(XYZ / white) + bias."""
    linear = torch.from_numpy(np.take(_LINEAR_LUT, rgb.numpy()))  # 3 x n, exact sRGB linearisation
    t = torch.mm(_XYZN_FROM_LINEAR, linear)  # 3 x n: X / Xn, Y / Yn, Z / Zn
    # CIE f(t) = cbrt(t) above epsilon, 7.787 t + 16/116 below, branch-free: cbrt(max(t, eps)) + toe, where
    # toe = min(7.787 (t - eps) + gap, 0) and gap (-3e-7) is where scikit-image's rounded constants make the line miss
    # cbrt(eps). (Only t within 4e-8 above eps gets a spurious toe, of under 3e-7.)
    toe = t.sub(_TOE_SHIFT).clamp_max_(0.0).mul_(CIE_SLOPE)
    f = t.clamp_min_(CIE_EPSILON).log_().mul_(1.0 / 3.0).exp_().add_(toe)
    _addmm_into(out, bias, weight, f)


def _linear_chunk(rgb, out, weight, bias):
    """One chunk: uint8 3 x n RGB -> out = weight @ rgb + bias (weight already includes the 1 / 255)."""
    _addmm_into(out, bias, weight, rgb.to(torch.float32))


def _lab_parameters(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """Folded (weight, bias) for Lab, optionally normalised."""
    return _affine(_LAB_FROM_F, _LAB_OFFSET, mean, std)


def _ycbcr_parameters(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """Folded (weight, bias) for YCbCr from uint8 values (the 1 / 255 is in the matrix)."""
    return _affine(YCBCR_FROM_RGB / 255.0, YCBCR_OFFSET, mean, std)


def _rgb_parameters(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """Folded (weight, bias) for RGB in [0, 1] from uint8 values, optionally normalised."""
    return _affine(np.eye(3) / 255.0, (0.0, 0.0, 0.0), mean, std)


_LAB_PLAIN = _lab_parameters()
_YCBCR_PLAIN = _ycbcr_parameters()


def fast_rgb_to_lab(images):
    """uint8 RGB (..., 3, H, W) -> float32 CIE L*a*b* (..., 3, H, W), D65 / 2 degrees, scikit-image's units.

    L in [0, 100], a in about [-86, 98], b in about [-108, 94]. Same constants as scikit-image 0.26 `rgb2lab`
    (applied to the image / 255); max |diff| to it <= 5e-4 in L, a and b units (float32 rounding of the cube root,
    amplified x500 in a): measured 9e-5 over all 256^3 colours. CPU; about 1 ms per 224 x 224 image on one core.
    """
    weight, bias = _LAB_PLAIN
    return _run_chunks(images, lambda rgb, out: _lab_chunk(rgb, out, weight, bias))


def fast_rgb_to_ycbcr(images):
    """uint8 RGB (..., 3, H, W) -> float32 ITU-R BT.601 YCbCr (..., 3, H, W): Y in [16, 235], Cb/Cr in [16, 240].

    scikit-image 0.26 `rgb2ycbcr` units; max |diff| to it <= 1e-4 (float32 rounding of values up to
    240; measured 3.3e-5 over all 256^3 colours).
    """
    weight, bias = _YCBCR_PLAIN
    return _run_chunks(images, lambda rgb, out: _linear_chunk(rgb, out, weight, bias), LINEAR_CHUNK_PIXELS)


_PARAMETERS = {'Lab': (_lab_parameters, _lab_chunk), 'YCbCr': (_ycbcr_parameters, _linear_chunk),
               'RGB': (_rgb_parameters, _linear_chunk)}


class FastView:
    """uint8 RGB (B x 3k x H x W, or 3k x H x W) -> normalised float32 view: the CPU twin of `dataset.DeviceView`.

    Same output as DeviceView(space) (conversion, then (x - VIEW_STATS mean) / std, for every 3-channel group),
    with the normalisation folded into the conversion's matrices. Spaces: 'RGB', 'Lab', 'YCbCr'. Picklable, so it
    also runs inside DataLoader workers (they then return float32 instead of uint8: 4x the bytes).
    Agreement with DeviceView: max |diff| < 1e-4 (normalised units).
    """

    def __init__(self, space='Lab'):
        self.space = canonical_space(space)
        if self.space not in _PARAMETERS:
            raise ValueError(f"FastView supports {', '.join(_PARAMETERS)}, not {self.space!r}")

    def __call__(self, images):
        make, chunk = _PARAMETERS[self.space]
        weight, bias = make(*VIEW_STATS[self.space])
        if images.dim() < 3 or images.shape[-3] % 3 != 0:
            raise ValueError(f"expected (B x) 3k x H x W images, got {tuple(images.shape)}")
        groups = images.reshape(*images.shape[:-3], images.shape[-3] // 3, 3, *images.shape[-2:])
        pixels = CHUNK_PIXELS if self.space == 'Lab' else LINEAR_CHUNK_PIXELS
        out = _run_chunks(groups, lambda rgb, dest: chunk(rgb, dest, weight, bias), pixels)
        return out.reshape(images.shape)

    def __repr__(self):
        return f"FastView(space={self.space!r})"


# ---------------------------------------------------------------------------------------------------------------------
# Reduced-scale JPEG decoding for random-resized crops
# ---------------------------------------------------------------------------------------------------------------------

def draft_scale(image_size, box, size, max_scale=8):
    """Largest k in (1, 2, 4, 8), k <= max_scale, with the crop box (top, left, h, w) >= size x size pixels at 1/k.

    image_size is (width, height) of the full image. Returns 1 when no reduction keeps the output resolution.
    """
    _, _, height, width = box
    out_h, out_w = (size, size) if isinstance(size, int) else size
    scale = 1
    for candidate in (2, 4, 8):
        fits = height / candidate >= out_h and width / candidate >= out_w
        small_enough = image_size[0] // candidate >= 1 and image_size[1] // candidate >= 1
        if candidate <= max_scale and fits and small_enough:
            scale = candidate
    return scale


def _is_unloaded_jpeg(image):
    """True when image is a JPEG whose pixels PIL has not decoded yet (so draft can still change the decode)."""
    return image.format == 'JPEG' and len(getattr(image, 'tile', ())) == 1


def _crop_resize(image, box, out_size):
    """Crop box (left, upper, right, lower; fractional allowed) and resize it to out_size (w, h), BILINEAR, uint8.

    Crops the enclosing whole-pixel box first, so that (like torchvision's crop-then-resize) the filter never reads
    pixels beyond it; an integer box gives exactly torchvision's `resized_crop` result.
    """
    left, upper = math.floor(box[0]), math.floor(box[1])
    right = min(math.ceil(box[2]), image.size[0])
    lower = min(math.ceil(box[3]), image.size[1])
    region = image.crop((left, upper, right, lower))
    inner = (box[0] - left, box[1] - upper, min(box[2], right) - left, min(box[3], lower) - upper)
    if inner == (0, 0, right - left, lower - upper):
        return region.resize(out_size, Image.BILINEAR)
    return region.resize(out_size, Image.BILINEAR, box=inner)


def decode_crop(image, box, size, flip=False, use_draft=True):
    """Decode `box` (top, left, h, w; full-resolution pixels) of a PIL image to a uint8 3 x S x S tensor.

    When the image is a JPEG not yet loaded and use_draft, it is decoded at 1/k scale (k = `draft_scale`), the box is
    divided by k (fractional coordinates kept), and PIL resizes that box to size x size (BILINEAR, which
    antialiases when shrinking), on uint8. Otherwise the full image is decoded (same resize). flip mirrors left-right.
    size: int (square) or (h, w). Output: uint8 tensor 3 x h x w (a channels-first view of an h x w x 3 buffer,
    like PILToTensor's).
    """
    top, left, height, width = box
    out_h, out_w = (size, size) if isinstance(size, int) else size
    scale = 1.0
    if use_draft and _is_unloaded_jpeg(image):
        k = draft_scale(image.size, box, (out_h, out_w))
        if k > 1:
            full_width = image.size[0]
            drafted = image.draft('RGB', (full_width // k, image.size[1] // k))
            if drafted is not None:
                scale = full_width / drafted[1][2]  # PIL reports the reduced extent of the full image
    if image.mode != 'RGB':
        image = image.convert('RGB')
    crop = _crop_resize(image, (left / scale, top / scale, (left + width) / scale, (top + height) / scale),
                        (out_w, out_h))
    if flip:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1)  # 3 x h x w view, as PILToTensor


def draft_random_resized_crop(image, size, scale=(0.2, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), flip_p=0.5,
                              use_draft=True):
    """Random-resized crop + horizontal flip of a PIL image to a uint8 3 x S x S tensor, decoding JPEG at reduced scale.

    Draws the box exactly as torchvision (`RandomResizedCrop.get_params`, then `torch.rand(1) < flip_p`), so a seeded
    run picks the same crops and flips as RandomResizedCrop + RandomHorizontalFlip; pixels match a full decode within
    `DRAFT_TOLERANCE` (identical when no reduced scale applies).
    """
    box = transforms.RandomResizedCrop.get_params(image, list(scale), list(ratio))
    flip = bool(torch.rand(1) < flip_p)
    return decode_crop(image, box, size, flip=flip, use_draft=use_draft)


class DraftRandomResizedCrop:
    """Transform: PIL image -> uint8 3 x S x S tensor; replaces RandomResizedCrop + RandomHorizontalFlip + PILToTensor.

    For JPEG files opened lazily (`lazy_loader`, or `Image.open` without `.convert`), decodes at 1/2, 1/4 or 1/8 scale
    when the crop still has at least S x S pixels there; other images (PNG, already decoded, small crops) take the
    full decode. Picklable (plain attributes), so it works in DataLoader workers.
    """

    def __init__(self, size, scale=(0.2, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), flip_p=0.5, use_draft=True):
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.flip_p = flip_p
        self.use_draft = use_draft

    def __call__(self, image):
        return draft_random_resized_crop(image, self.size, self.scale, self.ratio, self.flip_p, self.use_draft)

    def __repr__(self):
        return (f"DraftRandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"flip_p={self.flip_p}, use_draft={self.use_draft})")


# ---------------------------------------------------------------------------------------------------------------------
# Crop and resize on uint8 with torch's antialiased kernel
# ---------------------------------------------------------------------------------------------------------------------

# torch's uint8 antialiased bilinear resize against torchvision's PIL resized_crop of the same integer box, per crop:
# measured on 500 x 375 JPEG photographs, 300 random boxes, 224 px: max |diff| 1 uint8 level, mean 0.02 (worst crop
# 0.15). tests/test_cpu_pipeline.py asserts these bounds.
TORCH_RESIZE_TOLERANCE = {'mean_abs': 0.25, 'max_abs': 1}


def _pixels(image):
    """PIL image -> uint8 tensor 1 x C x H x W (a channels-last view of PIL's H x W x C bytes; C is 3, or 1 for 'L').

    Other modes (P, RGBA, CMYK...) become RGB first, as torchvision's default loader would have made them."""
    if image.mode not in ('RGB', 'L'):
        image = image.convert('RGB')
    array = np.asarray(image)       # read-only: only read below (interpolate writes a new tensor)
    if array.ndim == 2:
        array = array[:, :, None]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)       # torch's note that the array is read-only
        return torch.from_numpy(array).permute(2, 0, 1)[None]


def torch_resized_crop(image, box, size, flip=False):
    """Crop box (top, left, h, w; integers) of a PIL image and resize it to size x size: uint8 C x S x S, contiguous.

    torch's uint8 bilinear resize with antialias=True (a vectorised kernel, ~2.5x PIL's per core for 224 px crops),
    within `TORCH_RESIZE_TOLERANCE` of torchvision's RandomResizedCrop on the same box (PIL BILINEAR, which
    antialiases when shrinking). flip mirrors left-right.
    """
    top, left, height, width = box
    out_h, out_w = (size, size) if isinstance(size, int) else size
    region = _pixels(image)[:, :, top:top + height, left:left + width]
    out = torch.nn.functional.interpolate(region, size=(out_h, out_w), mode='bilinear', antialias=True,
                                          align_corners=False)[0]
    if flip:
        out = out.flip(-1)
    return out.contiguous()


class FastRandomResizedCrop:
    """Transform: PIL image -> uint8 C x S x S tensor; replaces RandomResizedCrop + RandomHorizontalFlip + PILToTensor.

    Draws the box and the flip exactly as torchvision (same seeded draws, same order), then: a reduced-scale JPEG
    decode when the file is not decoded yet and the box has 2x the output to spare (`decode_crop`, PIL resize of the
    fractional box), else `torch_resized_crop` (within 1 uint8 level of torchvision's pixels). Grayscale ('L')
    images stay one channel, as PILToTensor leaves them. Picklable, so it runs in DataLoader workers.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), flip_p=0.5):
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p

    def __call__(self, image):
        box = transforms.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        flip = bool(torch.rand(1) < self.flip_p)
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if _is_unloaded_jpeg(image) and image.mode == 'RGB' and draft_scale(image.size, box, size) > 1:
            return decode_crop(image, box, size, flip=flip)
        return torch_resized_crop(image, box, size, flip)

    def __repr__(self):
        return f"FastRandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p})"


def lazy_loader(path):
    """ImageFolder loader that opens without decoding (PIL decodes on first pixel access), so draft still applies.

    Unlike torchvision's default loader it does not `.convert('RGB')` up front; `decode_crop` converts after the
    (possibly reduced) decode.
    """
    return Image.open(path)


__all__ = ['fast_rgb_to_lab', 'fast_rgb_to_ycbcr', 'FastView', 'draft_scale', 'decode_crop',
           'draft_random_resized_crop', 'DraftRandomResizedCrop', 'lazy_loader', 'DRAFT_TOLERANCE',
           'torch_resized_crop', 'FastRandomResizedCrop', 'TORCH_RESIZE_TOLERANCE',
           'CIE_EPSILON', 'CIE_SLOPE', 'CHUNK_PIXELS', 'LINEAR_CHUNK_PIXELS']
