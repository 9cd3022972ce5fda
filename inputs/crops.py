"""Random-resized crops on the CPU workers: reduced-scale JPEG decoding and torch-resized uint8 crops.

Conventions (one for the whole module):
  * images are **uint8 torch tensors, channels first**: (..., C, H, W), as `PILToTensor` and the data loader make them;
  * crops are boxes (top, left, height, width) in full-resolution pixels, as torchvision's
    `RandomResizedCrop.get_params` returns them.

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

from inputs.decode import to_rgb


# Agreement of a draft (reduced-scale) decode with a full decode of the same box, per crop, in uint8 levels: the bounds
# tests/inputs/test_crops.py asserts. Measured on scikit-image photographs saved as JPEG quality 90 at 500 x 375, 200
# random boxes each, 64 and 112 px outputs: mean |diff| 0.3-1.8 on average, 3.1 at worst (1/4 scale, astronaut);
# max |diff| 55 at worst (a single pixel on a sharp edge). At scale 1 (no draft) the result is torchvision's exactly.
DRAFT_TOLERANCE = {'mean_abs': 4.0, 'max_abs': 80}


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
        image = to_rgb(image)
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

    For JPEG files opened lazily (`inputs.decode.lazy_loader`, or `Image.open` without `.convert`), decodes at 1/2,
    1/4 or 1/8 scale when the crop still has at least S x S pixels there; other images (PNG, already decoded, small
    crops) take the full decode. Picklable (plain attributes), so it works in DataLoader workers.
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
# 0.15). tests/inputs/test_crops.py asserts these bounds.
TORCH_RESIZE_TOLERANCE = {'mean_abs': 0.25, 'max_abs': 1}


def _pixels(image):
    """PIL image -> uint8 tensor 1 x C x H x W (a channels-last view of PIL's H x W x C bytes; C is 3, or 1 for 'L').

    Other modes (P, RGBA, CMYK...) become RGB first, as torchvision's default loader would have made them. A uint8
    C x H x W tensor (`read_rgb`'s) is taken as it is."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected a uint8 C x H x W tensor with C = 1 or 3, got {image.dtype} "
                             f"{tuple(image.shape)}")
        return image[None]
    if image.mode not in ('RGB', 'L'):
        image = to_rgb(image)
    array = np.asarray(image)       # read-only: only read below (interpolate writes a new tensor)
    if array.ndim == 2:
        array = array[:, :, None]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)       # torch's note that the array is read-only
        return torch.from_numpy(array).permute(2, 0, 1)[None]


def torch_resized_crop(image, box, size, flip=False):
    """Crop box (top, left, h, w; integers) of a PIL image or a uint8 C x H x W tensor and resize it to size x size:
    uint8 C x S x S, contiguous.

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

    Also takes a uint8 C x H x W tensor (`inputs.decode.read_rgb`'s output; ``accepts_tensors``, so
    `inputs.decode.image_loader` picks that loader). Draws the box and the flip exactly as torchvision (same seeded
    draws, same order), then: a reduced-scale JPEG decode when the file is not decoded yet and the box has 2x the
    output to spare (`decode_crop`, PIL resize of
    the fractional box), else `torch_resized_crop` (within 1 uint8 level of torchvision's pixels). Grayscale ('L')
    images stay one channel, as PILToTensor leaves them. Picklable, so it runs in DataLoader workers.
    """

    accepts_tensors = True

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), flip_p=0.5):
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p

    def __call__(self, image):
        box = transforms.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        flip = bool(torch.rand(1) < self.flip_p)
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        draft = isinstance(image, Image.Image) and _is_unloaded_jpeg(image) and image.mode == 'RGB'
        if draft and draft_scale(image.size, box, size) > 1:
            return decode_crop(image, box, size, flip=flip)
        return torch_resized_crop(image, box, size, flip)

    def __repr__(self):
        return f"FastRandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p})"


__all__ = ['draft_scale', 'decode_crop', 'draft_random_resized_crop', 'DraftRandomResizedCrop', 'DRAFT_TOLERANCE',
           'torch_resized_crop', 'FastRandomResizedCrop', 'TORCH_RESIZE_TOLERANCE']
