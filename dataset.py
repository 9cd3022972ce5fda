"""Data: colour views, transforms, instance data sets and data-set builders.

Design (a deliberate departure from the reference, which converted colours in float64 on the CPU
workers, one image at a time): the data loader hands **uint8 crops** (B x 3k x H x W) to
`DeviceView`, which converts colour spaces and normalises the whole batch in float32 on whatever
device the batch is on. The reference CPU path is kept (`reference_cmc_transform`) for benchmarks
and for an equivalence test.

Colour conversions follow scikit-image 0.26 (`skimage/color/colorconv.py`) exactly: same
constants, same D65 / 2-degree white point, same piecewise sRGB gamma, same HSV tie rules,
same HED log/clipping, same output units.
"""

import gzip
import os
import pickle
import warnings

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from util import UserError

# ---------------------------------------------------------------------------------------------
# Colour conversions (batched torch, float32, channel axis -3)
# ---------------------------------------------------------------------------------------------

# sRGB (D65) -> CIE XYZ, scikit-image's `xyz_from_rgb`.
XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
# CIE XYZ of the D65 illuminant, 2-degree observer (scikit-image's `lab_ref_white`).
D65_WHITE = (0.95047, 1.0, 1.08883)
# Ruifrok & Johnston (2001) stain vectors; scikit-image's `hed_from_rgb` is the inverse.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
# CIE 1931 RGB -> XYZ (Wikipedia, scaled by 1 / 0.17697 as scikit-image does).
XYZ_FROM_CIERGB = np.array([[0.49, 0.31, 0.20], [0.17697, 0.81240, 0.01063], [0.00, 0.01, 0.99]]) / 0.17697
# Linear luma/chroma matrices, rows = output channels, on RGB in [0, 1].
YUV_FROM_RGB = np.array([[0.299, 0.587, 0.114],
                         [-0.14714119, -0.28886916, 0.43601035],
                         [0.61497538, -0.51496512, -0.10001026]])
YIQ_FROM_RGB = np.array([[0.299, 0.587, 0.114],
                         [0.59590059, -0.27455667, -0.32134392],
                         [0.21153661, -0.52273617, 0.31119955]])
YPBPR_FROM_RGB = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
# ITU-R BT.601 studio swing: Y in 16..235, Cb/Cr in 16..240 (after the offset below).
YCBCR_FROM_RGB = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
YCBCR_OFFSET = (16.0, 128.0, 128.0)
YDBDR_FROM_RGB = np.array([[0.299, 0.587, 0.114], [-0.45, -0.883, 1.333], [-1.333, 1.116, 0.217]])
# Derived matrices, in float64 as scikit-image derives them.
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
CIERGB_FROM_RGB = np.linalg.inv(XYZ_FROM_CIERGB) @ XYZ_FROM_RGB

# CIE constants as scikit-image writes them (not the exact 216/24389 and 24389/27).
_CIE_EPSILON = 0.008856
_CIE_KAPPA = 903.3
_LAB_SLOPE = 7.787
# scikit-image computes Luv in float64 and adds float64's eps to the u'v' denominator.
_LUV_DENOMINATOR_EPS = float(np.finfo(np.float64).eps)
# Beer-Lambert floor used by scikit-image's `separate_stains`.
_STAIN_FLOOR = 1e-6


def _apply_matrix(matrix, x, offset=None):
    """out_i = sum_j matrix[i][j] * x_j (+ offset_i) over the channel axis (-3).

    Scalar multiply-adds rather than a matmul: stays float32 under autocast, and needs no constant
    tensor copied to the device (a blocking host-to-device copy on every call).
    """
    r, g, b = x.unbind(-3)  # each ... x H x W
    rows = [float(m0) * r + float(m1) * g + float(m2) * b for m0, m1, m2 in np.asarray(matrix)]
    if offset is not None:
        rows = [row + float(shift) for row, shift in zip(rows, offset)]
    return torch.stack(rows, dim=-3)  # ... x 3 x H x W


def _srgb_to_linear(x):
    """Undo the sRGB (IEC 61966-2-1) transfer curve, piecewise as scikit-image rgb2xyz does."""
    return torch.where(x > 0.04045, ((x + 0.055) / 1.055).pow(2.4), x / 12.92)


def _srgb_to_xyz(x):
    """sRGB -> CIE XYZ: linearise, then `xyz_from_rgb` (scikit-image rgb2xyz)."""
    return _apply_matrix(XYZ_FROM_RGB, _srgb_to_linear(x))


def _cie_cube_root(t):
    """CIE f(t): cbrt(t) above epsilon, the linear toe below (scikit-image xyz2lab)."""
    return torch.where(t > _CIE_EPSILON, t.clamp_min(_CIE_EPSILON).pow(1.0 / 3.0), _LAB_SLOPE * t + 16.0 / 116.0)


def _rgb_to_lab(x):
    """CIE L*a*b* under D65 / 2 degrees (scikit-image rgb2lab): L in [0, 100]."""
    # Dividing by the white point is folded into the matrix (rows scaled by 1 / white).
    xyz_over_white = _apply_matrix(XYZ_FROM_RGB / np.array(D65_WHITE)[:, None], _srgb_to_linear(x))
    fx, fy, fz = _cie_cube_root(xyz_over_white).unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def _rgb_to_luv(x):
    """CIE L*u*v* under D65 / 2 degrees (scikit-image rgb2luv, with its constants 0.008856, 903.3)."""
    big_x, big_y, big_z = _srgb_to_xyz(x).unbind(-3)
    xr, yr, zr = D65_WHITE
    luminance = big_y / yr
    lightness = torch.where(luminance > _CIE_EPSILON,
                            116.0 * luminance.clamp_min(_CIE_EPSILON).pow(1.0 / 3.0) - 16.0,
                            _CIE_KAPPA * luminance)
    white_denominator = xr + 15.0 * yr + 3.0 * zr
    u0, v0 = 4.0 * xr / white_denominator, 9.0 * yr / white_denominator
    denominator = big_x + 15.0 * big_y + 3.0 * big_z + _LUV_DENOMINATOR_EPS
    u = 13.0 * lightness * (4.0 * big_x / denominator - u0)
    v = 13.0 * lightness * (9.0 * big_y / denominator - v0)
    return torch.stack([lightness, u, v], dim=-3)


def _rgb_to_hsv(x):
    """HSV in [0, 1]^3 (scikit-image rgb2hsv).

    Ties for the maximum resolve as scikit-image's sequential masks do (blue over green over red);
    grey pixels (max == min) get hue 0 and saturation 0; hue wraps with a Python-style modulo.
    """
    r, g, b = x.unbind(-3)
    value = torch.maximum(torch.maximum(r, g), b)
    delta = value - torch.minimum(torch.minimum(r, g), b)
    grey = delta == 0
    # Clamped denominators keep the unselected branches finite (no NaN from 0 / 0).
    saturation = torch.where(grey, 0.0, delta / value.clamp_min(1e-12))
    safe_delta = delta.clamp_min(1e-12)
    hue_sector = torch.where(b == value, 4.0 + (r - g) / safe_delta,
                             torch.where(g == value, 2.0 + (b - r) / safe_delta, (g - b) / safe_delta))
    hue = torch.where(grey, 0.0, torch.remainder(hue_sector / 6.0, 1.0))
    return torch.stack([hue, saturation, value], dim=-3)


def _rgb_to_hed(x):
    """Haematoxylin-Eosin-DAB stain densities (scikit-image rgb2hed / separate_stains).

    Optical density log(max(rgb, 1e-6)) / log(1e-6), unmixed by `hed_from_rgb` (applied as
    row-vector @ matrix, i.e. the transpose here) and clipped at 0.
    """
    density = x.clamp_min(_STAIN_FLOOR).log() / float(np.log(_STAIN_FLOOR))
    return _apply_matrix(HED_FROM_RGB.T, density).clamp_min(0.0)


def _identity(x):
    """'RGB': no conversion (InsDis / MoCo work on RGB)."""
    return x


_CONVERTERS = {
    'RGB': _identity,
    'Lab': _rgb_to_lab,
    'YCbCr': lambda x: _apply_matrix(YCBCR_FROM_RGB, x, YCBCR_OFFSET),
    'HSV': _rgb_to_hsv,
    'HED': _rgb_to_hed,
    'LUV': _rgb_to_luv,
    'YUV': lambda x: _apply_matrix(YUV_FROM_RGB, x),
    'XYZ': _srgb_to_xyz,
    'YDbDr': lambda x: _apply_matrix(YDBDR_FROM_RGB, x),
    'YPbPr': lambda x: _apply_matrix(YPBPR_FROM_RGB, x),
    'YIQ': lambda x: _apply_matrix(YIQ_FROM_RGB, x),
    'CIERGB': lambda x: _apply_matrix(CIERGB_FROM_RGB, x),
}
COLOUR_SPACES = tuple(_CONVERTERS)
# The scikit-image function each space reproduces (used by the reference CPU path).
SKIMAGE_FUNCTIONS = {'Lab': 'rgb2lab', 'YCbCr': 'rgb2ycbcr', 'HSV': 'rgb2hsv', 'HED': 'rgb2hed',
                     'LUV': 'rgb2luv', 'YUV': 'rgb2yuv', 'XYZ': 'rgb2xyz', 'YDbDr': 'rgb2ydbdr',
                     'YPbPr': 'rgb2ypbpr', 'YIQ': 'rgb2yiq', 'CIERGB': 'rgb2rgbcie'}


def canonical_space(space):
    """The canonical spelling of a colour-space name (case-insensitive), or UserError."""
    by_lower = {name.lower(): name for name in COLOUR_SPACES}
    try:
        return by_lower[str(space).lower()]
    except KeyError:
        raise UserError(f"unknown colour space {space!r}: choose one of {', '.join(COLOUR_SPACES)}") from None


def rgb_to(space, x):
    """Convert float RGB in [0, 1], shape (..., 3, H, W), to `space` in scikit-image's units.

    Batched, float32, on x's device; no host synchronisation. `space` is one of COLOUR_SPACES.
    """
    convert = _CONVERTERS[canonical_space(space)]
    if not torch.is_floating_point(x):
        raise UserError(f"rgb_to expects float RGB in [0, 1], got {x.dtype}: divide uint8 images by 255 first")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise UserError(f"rgb_to expects shape (..., 3, H, W), got {tuple(x.shape)}")
    return convert(x.float())


# ---------------------------------------------------------------------------------------------
# Value ranges and normalisation constants (the one place they live)
# ---------------------------------------------------------------------------------------------

# Per-channel (min, max) over all 256^3 uint8 RGB colours, computed once with scikit-image 0.26
# (6 decimals). HSV and RGB use their nominal [0, 1].
VALUE_RANGES = {
    'RGB': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    'Lab': ((0.0, -86.183030, -107.857300), (100.0, 98.233054, 94.478122)),
    'YCbCr': ((16.0, 16.0, 16.0), (235.0, 240.0, 240.0)),
    'HSV': ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    'HED': ((0.0, 0.0, 0.0), (1.877983, 1.134730, 1.573588)),
    'LUV': ((0.0, -83.077908, -134.097903), (100.0, 175.014474, 107.399053)),
    'YUV': ((0.0, -0.436010, -0.614975), (1.0, 0.436010, 0.614975)),
    'XYZ': ((0.0, 0.0, 0.0), (0.950456, 1.0, 1.088754)),
    'YDbDr': ((0.0, -1.333, -1.333), (1.0, 1.333, 1.333)),
    'YPbPr': ((0.0, -0.5, -0.5), (1.0, 0.5, 0.5)),
    'YIQ': ((0.0, -0.595901, -0.522736), (1.0, 0.595901, 0.522736)),
    'CIERGB': ((-0.014662, 0.0, 0.0), (0.163547, 0.182881, 0.192776)),
}


def _midpoint_half_range(space):
    """(mean, std) = (midpoint, half-range) of each channel's value range: maps it onto [-1, 1]."""
    low, high = VALUE_RANGES[space]
    return (tuple(round((h + l) / 2, 6) for l, h in zip(low, high)),
            tuple(round((h - l) / 2, 6) for l, h in zip(low, high)))


# (mean, std) per channel for Normalize / DeviceView. Lab and YCbCr are the reference's values
# (Lab's are the midpoint / half-range of its range, rounded); RGB is the ImageNet statistics;
# every other space uses the midpoint / half-range of VALUE_RANGES, the same rule as Lab.
VIEW_STATS = {space: _midpoint_half_range(space) for space in COLOUR_SPACES}
VIEW_STATS.update({
    'Lab': ((50.0, 6.025, -6.6895), (50.0, 92.208, 101.1675)),
    'YCbCr': ((116.151, 121.080, 132.342), (109.500, 111.855, 111.964)),
    'RGB': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
})


class DeviceView(nn.Module):
    """uint8 RGB crops -> normalised colour view, batched on the crops' device.

    CMC (Tian et al., 2019, Sec. 4) feeds L and ab (or Y and CbCr) as two views; this is the
    conversion step, moved from per-sample CPU float64 into one float32 batch op:
    x / 255 -> rgb_to(space) -> (x - mean) / std, for every 3-channel group (k = 2 for MoCo's
    query and key crops concatenated on channels).
    """

    CPU_CHUNK_PIXELS = 1 << 17  # pixels per chunk on CPU (about two 224 x 224 crops)

    def __init__(self, space='Lab'):
        super().__init__()
        self.space = canonical_space(space)
        mean, std = VIEW_STATS[self.space]
        # Constants, not learned state: non-persistent so checkpoints do not depend on them.
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def forward(self, images):
        """images: B x 3k x H x W uint8 -> B x 3k x H x W float32."""
        if images.dtype != torch.uint8:
            raise UserError(f"DeviceView expects uint8 images (PILToTensor output), got {images.dtype}")
        if images.dim() != 4 or images.shape[1] % 3 != 0:
            raise UserError(f"DeviceView expects B x 3k x H x W images, got shape {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        groups = images.reshape(batch, channels // 3, 3, height, width)  # B x k x 3 x H x W
        if images.device.type != 'cpu':
            return self._convert(groups).reshape(batch, channels, height, width)
        # On CPU, a few images at a time keep the dozen float temporaries in cache instead of
        # allocating (and page-faulting) full-batch buffers: 2-5x faster (bench/bench_colour.py).
        out = torch.empty(groups.shape, dtype=torch.float32)
        step = max(1, self.CPU_CHUNK_PIXELS // (channels // 3 * height * width))
        for start in range(0, batch, step):
            out[start:start + step] = self._convert(groups[start:start + step])
        return out.reshape(batch, channels, height, width)

    def _convert(self, groups):
        """... x 3 x H x W uint8 -> normalised float32 view."""
        return (rgb_to(self.space, groups.float().div(255)) - self.mean) / self.std

    def extra_repr(self):
        return f"space={self.space!r}"


class ColourConversion:
    """Callable PIL RGB image -> H x W x 3 float array in `space` (the reference's RGB2<space>).

    use_skimage=False (default) runs our torch conversion, so tests of these callables validate
    the code DeviceView runs; use_skimage=True calls scikit-image in float64 like the reference.
    """

    space = None  # set by the named subclasses, or passed in

    def __init__(self, space=None, use_skimage=False):
        self.space = canonical_space(space or self.space)
        self.use_skimage = use_skimage

    def __call__(self, img):
        rgb = np.array(img.convert('RGB') if img.mode != 'RGB' else img, dtype=np.uint8)  # H x W x 3, writable
        if self.space == 'RGB':
            return rgb.astype(np.float64 if self.use_skimage else np.float32) / 255.0
        if self.use_skimage:
            import skimage.color  # only the reference path needs scikit-image
            return getattr(skimage.color, SKIMAGE_FUNCTIONS[self.space])(rgb)
        chw = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)  # 3 x H x W
        return rgb_to(self.space, chw).permute(1, 2, 0).numpy()

    def __repr__(self):
        return f"{type(self).__name__}(space={self.space!r}, use_skimage={self.use_skimage})"


# The reference's names, kept so old code and scripts read the same: RGB2Lab, RGB2YCbCr, RGB2HSV, RGB2HED, RGB2LUV,
# RGB2YUV, RGB2XYZ, RGB2YDbDr, RGB2YPbPr, RGB2YIQ and RGB2CIERGB, each a ColourConversion fixed to its space.
REFERENCE_CONVERSIONS = ('Lab', 'YCbCr', 'HSV', 'HED', 'LUV', 'YUV', 'XYZ', 'YDbDr', 'YPbPr', 'YIQ', 'CIERGB')
for _space in REFERENCE_CONVERSIONS:
    globals()[f'RGB2{_space}'] = type(f'RGB2{_space}', (ColourConversion,), {
        'space': _space, '__module__': __name__,
        '__doc__': f'PIL RGB image -> H x W x 3 float array equal to scikit-image {SKIMAGE_FUNCTIONS[_space]}.'})


# ---------------------------------------------------------------------------------------------
# Transforms (PIL in, uint8 C x H x W tensor out; DeviceView does the rest)
# ---------------------------------------------------------------------------------------------

def cmc_train_transform(image_size=224, crop_low=0.2):
    """CMC pretraining crops: RandomResizedCrop(scale=(crop_low, 1)), horizontal flip -> uint8."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(crop_low, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])


MOCO_AUGMENTATIONS = ('NULL', 'CJ')


def moco_train_transform(image_size=224, crop=0.2, aug='CJ'):
    """InsDis / MoCo crops: 'CJ' adds RandomGrayscale(0.2) and ColorJitter(0.4 x 4); 'NULL' does not."""
    if aug not in MOCO_AUGMENTATIONS:
        raise UserError(f"unknown augmentation {aug!r}: choose one of {', '.join(MOCO_AUGMENTATIONS)}")
    steps = [transforms.RandomResizedCrop(image_size, scale=(crop, 1.0))]
    if aug == 'CJ':
        steps += [transforms.RandomGrayscale(p=0.2), transforms.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    steps += [transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    return transforms.Compose(steps)


def eval_transform(image_size=224):
    """Linear-probe validation: Resize(image_size * 256 / 224), CenterCrop(image_size) -> uint8."""
    return transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224))),
        transforms.CenterCrop(image_size),
        transforms.PILToTensor(),
    ])


def reference_cmc_transform(image_size=224, crop_low=0.2, space='Lab'):
    """The reference's CPU pipeline: crop, flip, scikit-image conversion (float64), ToTensor, Normalize.

    ToTensor does not rescale float arrays, so values stay in the space's units until Normalize;
    the output is a float64 C x H x W tensor, as the reference produced. 'RGB' goes through
    ToTensor's usual /255 on the PIL image. Same seed -> same crop as cmc_train_transform.
    """
    space = canonical_space(space)
    mean, std = VIEW_STATS[space]
    steps = [transforms.RandomResizedCrop(image_size, scale=(crop_low, 1.0)), transforms.RandomHorizontalFlip()]
    if space != 'RGB':
        steps.append(ColourConversion(space, use_skimage=True))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


# ---------------------------------------------------------------------------------------------
# Data sets: items are (img, target, index)
# ---------------------------------------------------------------------------------------------

def _instance_item(image, target, index, transform, target_transform, two_crop):
    """(img, target, index); with two_crop, two independent transforms concatenated on channels."""
    img = transform(image) if transform is not None else image
    if two_crop:
        img = torch.cat([img, transform(image)], dim=0)  # 2C x H x W
    if target_transform is not None:
        target = target_transform(target)
    return img, target, index


def _check_two_crop(transform, two_crop):
    """two_crop concatenates tensors, so it needs a transform that makes them."""
    if two_crop and transform is None:
        raise UserError("two_crop needs a transform that returns tensors (the two crops are concatenated on channels)")


# What a broken or unreadable image file raises while PIL decodes it.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFolderInstance(datasets.ImageFolder):
    """ImageFolder whose items are (img, target, index), the index keying the memory bank.

    two_crop: the transform runs twice and the results are concatenated on channels (MoCo's query
    and key). skip_bad_images: an undecodable file is replaced by the next decodable item (its
    image, target and index are returned) and remembered in `skipped_files` / `num_skipped`.
    Those counters live in the process that read the item: with DataLoader workers the parent's
    copy stays 0 (each worker warns once per skipped file instead).
    """

    def __init__(self, root, transform=None, target_transform=None, two_crop=False, skip_bad_images=False):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise UserError(f"image folder {root} does not exist: expected class sub-folders with .jpg/.png files")
        _check_two_crop(transform, two_crop)
        try:
            super().__init__(root, transform=transform, target_transform=target_transform)
        except FileNotFoundError as error:
            detail = str(error).splitlines()[0] if str(error) else ''
            raise UserError(f"no images found under {root}: expected class sub-folders with .jpg/.png files"
                            f" ({detail})") from None
        self.two_crop = two_crop
        self.skip_bad_images = skip_bad_images
        self.skipped_files = set()

    @property
    def num_skipped(self):
        """How many distinct undecodable files this process has skipped."""
        return len(self.skipped_files)

    def _load_decodable(self, index):
        """(PIL image, target, index) of `index`, or of the next decodable item when skipping."""
        for offset in range(len(self.samples)):
            current = (index + offset) % len(self.samples)
            path, target = self.samples[current]
            try:
                return self.loader(path), target, current
            except _DECODE_ERRORS as error:
                reason = (str(error).splitlines() or [''])[0]
                if not self.skip_bad_images:
                    raise UserError(f"cannot decode image {path} ({type(error).__name__}: {reason}); "
                                    f"delete or replace it, or pass --skip_bad_images to skip such files") from None
                if path not in self.skipped_files:
                    self.skipped_files.add(path)
                    warnings.warn(f"skipping undecodable image {path} ({type(error).__name__}: {reason})")
        raise UserError(f"none of the {len(self.samples)} images under {self.root} could be decoded")

    def __getitem__(self, index):
        image, target, index = self._load_decodable(index)
        return _instance_item(image, target, index, self.transform, self.target_transform, self.two_crop)


class ArrayImageDataset(Dataset):
    """In-memory uint8 images (N x H x W x 3, or N x H x W greyscale) served as RGB PIL images.

    Items are (img, target, index); greyscale images become 3-channel RGB (channel replicated), so
    every model sees RGB. `.classes` lists class names, `.targets` the labels (-1 = unlabelled).
    """

    def __init__(self, images, labels, classes, transform=None, two_crop=False, target_transform=None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise UserError(f"images must be uint8 N x H x W x 3 or N x H x W, got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        _check_two_crop(transform, two_crop)
        self.images = images
        self.targets = [int(label) for label in np.asarray(labels).reshape(-1)]
        self.classes = [str(name) for name in classes]
        self.transform = transform
        self.target_transform = target_transform
        self.two_crop = two_crop

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        # Copies one image: the array may be a strided view (STL-10) or a memory map.
        image = Image.fromarray(np.ascontiguousarray(self.images[index])).convert('RGB')
        return _instance_item(image, self.targets[index], index, self.transform, self.target_transform,
                              self.two_crop)


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

DATASET_NAMES = ('imagenet', 'imagenet100', 'folder', 'stl10', 'cifar10', 'fashion-mnist', 'demo')
SPLITS = ('pretrain', 'train', 'val')
GRAYSCALE_DATASETS = {'fashion-mnist'}
DEMO_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'emoji64.npz')
STL10_CLASSES = ['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck']
_STL10_SIDE = 96
_CIFAR10_SIDE = 32


def build_dataset(name, data_folder, split, transform, two_crop=False, download=False, skip_bad_images=False):
    """A data set whose items are (img, target, index), with `.classes` and `.targets` (-1 = unlabelled).

    split: 'pretrain' (what pretraining reads: train, or train+unlabeled for STL-10), 'train' or
    'val' (the test set for torchvision sets). Nothing is downloaded unless download=True.
    'demo' reads data_folder if it is an .npz file or a folder holding emoji64.npz, else the
    bundled data/emoji64.npz.
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if name == 'demo':
        return _build_demo(data_folder, split, transform, two_crop)
    if not data_folder:
        raise UserError(f"--data_folder is required for dataset {name!r}")
    data_folder = os.fspath(data_folder)
    if name in ('imagenet', 'imagenet100', 'folder'):
        return _build_image_folder(data_folder, split, transform, two_crop, skip_bad_images)
    if name == 'stl10':
        images, labels, classes = _read_stl10(data_folder, split, download)
    elif name == 'cifar10':
        images, labels, classes = _read_cifar10(data_folder, train=split != 'val', download=download)
    else:
        images, labels, classes = _read_fashion_mnist(data_folder, train=split != 'val', download=download)
    return ArrayImageDataset(images, labels, classes, transform=transform, two_crop=two_crop)


def _build_image_folder(data_folder, split, transform, two_crop, skip_bad_images):
    """ImageFolderInstance on data_folder/train (pretrain, train) or data_folder/val."""
    if not os.path.isdir(data_folder):
        raise UserError(f"data folder {data_folder} does not exist: expected {data_folder}/train and "
                        f"{data_folder}/val, each with one sub-folder of images per class")
    sub_folder = 'val' if split == 'val' else 'train'
    root = os.path.join(data_folder, sub_folder)
    if not os.path.isdir(root):
        raise UserError(f"data folder {data_folder} has no '{sub_folder}' sub-folder: expected {data_folder}/train "
                        f"and {data_folder}/val, each with one sub-folder of images per class")
    return ImageFolderInstance(root, transform=transform, two_crop=two_crop, skip_bad_images=skip_bad_images)


def _missing_files_error(dataset, folder, missing):
    """The one-line error for a torchvision-format data set whose files are not there."""
    return UserError(f"{dataset} files not found in {folder} (missing: {', '.join(missing)}): "
                     f"put them there or pass --download to fetch them")


def _read_stl10(data_folder, split, download):
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
        raise _missing_files_error('STL-10', folder, missing())

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


def _read_cifar10(data_folder, train, download):
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
        raise _missing_files_error('CIFAR-10', folder, missing())

    def load(name):
        path = os.path.join(folder, name)
        try:
            with open(path, 'rb') as f:
                return _ArrayUnpickler(f, encoding='latin1').load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise UserError(f'{path} is not a CIFAR-10 batch ({error}); re-download it with --download') from None

    entries = [load(name) for name in batches]
    images = np.concatenate([np.asarray(entry['data'], dtype=np.uint8) for entry in entries])
    images = images.reshape(-1, 3, _CIFAR10_SIDE, _CIFAR10_SIDE).transpose(0, 2, 3, 1)  # N x H x W x C
    labels = np.concatenate([np.asarray(entry['labels'], dtype=np.int64) for entry in entries])
    return images, labels, list(load('batches.meta')['label_names'])


def _read_fashion_mnist(data_folder, train, download):
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
        raise _missing_files_error('Fashion-MNIST', f'{folders[0]} or {folders[1]}', missing)
    images, labels = _read_idx(paths['images']), _read_idx(paths['labels'])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f'Fashion-MNIST files in {os.path.dirname(paths["images"])} do not match '
                        f'({images.shape} images, {labels.shape} labels); re-download them')
    return images, labels.astype(np.int64), list(datasets.FashionMNIST.classes)


def _read_idx(path):
    """An idx file (LeCun's MNIST format): magic 0x0000 0x08 ndim, big-endian dims, then uint8 data."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f'cannot read {path}: {e}; re-download it')
    if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
        raise UserError(f'{path} is not an idx file of uint8 data')
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f'{path} is truncated ({body.size} of {int(np.prod(dims))} values); re-download it')
    return body.reshape(dims)


def _build_demo(data_folder, split, transform, two_crop):
    """The bundled emoji set (data/emoji64.npz): 64 x 64 RGB images with class labels and emoji codes."""
    path = DEMO_FILE
    if data_folder:
        data_folder = os.fspath(data_folder)
        path = data_folder if data_folder.endswith('.npz') else os.path.join(data_folder, 'emoji64.npz')
    if not os.path.isfile(path):
        raise UserError(f"demo data file {path} not found: it ships with the repository as data/emoji64.npz")
    prefix = 'val' if split == 'val' else 'train'
    with np.load(path, allow_pickle=False) as archive:  # no pickles: a data file must not run code
        missing = [key for key in (f'{prefix}_images', f'{prefix}_labels', 'classes') if key not in archive]
        if missing:
            raise UserError(f"demo data file {path} lacks {', '.join(missing)}: regenerate it")
        try:
            images, labels, classes = archive[f'{prefix}_images'], archive[f'{prefix}_labels'], archive['classes']
            codes = archive[f'{prefix}_codes'] if f'{prefix}_codes' in archive else None
        except ValueError as error:  # object arrays need pickle
            raise UserError(f"demo data file {path} is not plain arrays ({error}): "
                            f"store strings as str arrays") from None
    dataset = ArrayImageDataset(images, labels, classes.tolist(), transform=transform, two_crop=two_crop)
    dataset.codes = None if codes is None else [str(code) for code in codes]
    return dataset
