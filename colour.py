"""Colour views: batched colour-space conversions that reproduce scikit-image, their value ranges and
normalisation, uint8 kernels for the CPU (Lab, YCbCr, RGB: ``fast_rgb_to_lab``, ``fast_rgb_to_ycbcr``, ``FastView``),
``DeviceView`` (uint8 crops -> normalised view, batched on the device), ``ViewStack`` (named views),
``PrenormalisedViews`` (views the loader already converted, ``--color_on_cpu``). The reference's per-image
``RGB2<space>`` callables are in ``colour_reference``.

Colour conversions follow scikit-image 0.26 (`skimage/color/colorconv.py`) exactly: same constants, same D65 /
2-degree white point, same piecewise sRGB gamma, same HSV tie rules, same HED log/clipping, same output units.
"""
import contextlib

import numpy as np
import torch
from torch import nn

from engine.errors import UserError

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


# ---------------------------------------------------------------------------------------------
# uint8 kernels for the CPU: DeviceView's CPU path for Lab, YCbCr and RGB
# ---------------------------------------------------------------------------------------------
# Inputs are uint8, so the sRGB gamma is a 256-entry lookup table (the generic `_srgb_to_linear`, evaluated once in
# float64); the 3 x 3 matrices (white point, 1 / 255 and the view's normalisation folded in) run as one float32 matrix
# product per chunk of pixels; the CIE cube root is exp2(log2(t) / 3) (vectorised float32 exp2/log2: ~3x torch's
# pow; exp2 costs half of exp: ~10% off the kernel). A crop of up to 2^16 pixels is one chunk, so its output is
# written in place, not through a copy into a strided slice (2^15-pixel chunks: 0.89-0.93 ms per 224 px crop against
# 0.75-0.77, alone and beside a decoding process, 2026-11-30). Agreement with scikit-image 0.26 (float64) over all
# 256^3 uint8 colours: Lab max |diff| 9e-5 (L, a, b units), YCbCr 3.3e-5; with the generic formula (the normalised
# view, DeviceView(space, cpu_kernel=False)) ~1e-6 (tests/test_cpu_pipeline.py asserts <= 1e-5). Always float32:
# autocast is off inside (it would run the matrix products in bfloat16), as in the generic formula.

CPU_CHUNK_PIXELS = 1 << 16  # pixels per chunk of Lab: a 224 or 256 px crop in one
CPU_LINEAR_CHUNK_PIXELS = 1 << 18  # linear maps have one temporary: whole images (up to 512 x 512) in one product

_LINEAR_LUT = _srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).float().numpy()  # exact to float32
# X / Xn, Y / Yn, Z / Zn from linear RGB: rows of xyz_from_rgb scaled by 1 / white (float64, then float32).
_XYZN_FROM_LINEAR = torch.from_numpy((XYZ_FROM_RGB / np.array(D65_WHITE)[:, None]).astype(np.float32))
# (L, a, b) from (fx, fy, fz): L = 116 fy - 16, a = 500 (fx - fy), b = 200 (fy - fz).
_LAB_FROM_F = np.array([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
_LAB_OFFSET = (-16.0, 0.0, 0.0)
# The linear toe meets cbrt at epsilon up to scikit-image's rounded constants: add the gap back below epsilon.
_TOE_GAP = _LAB_SLOPE * _CIE_EPSILON + 16.0 / 116.0 - _CIE_EPSILON ** (1.0 / 3.0)
_TOE_SHIFT = _CIE_EPSILON - _TOE_GAP / _LAB_SLOPE  # 7.787 (t - shift) = 7.787 (t - eps) + gap


def _affine(matrix, offset, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """(3 x 3 float32 weight, 3 x 1 float32 bias) of x -> ((matrix @ x + offset) - mean) / std, folded in float64."""
    std = np.asarray(std, dtype=np.float64)[:, None]
    weight = np.asarray(matrix, dtype=np.float64) / std
    bias = (np.asarray(offset, dtype=np.float64) - np.asarray(mean, dtype=np.float64))[:, None] / std
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


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
    toe = t.sub(_TOE_SHIFT).clamp_max_(0.0).mul_(_LAB_SLOPE)
    f = t.clamp_min_(_CIE_EPSILON).log2_().mul_(1.0 / 3.0).exp2_().add_(toe)
    _addmm_into(out, bias, weight, f)


def _linear_chunk(rgb, out, weight, bias):
    """One chunk: uint8 3 x n RGB -> out = weight @ rgb + bias (weight already includes the 1 / 255)."""
    _addmm_into(out, bias, weight, rgb.to(torch.float32))


# space -> (chunk function, pixels per chunk, (matrix, offset) on what the chunk function feeds it).
_CPU_KERNELS = {'Lab': (_lab_chunk, CPU_CHUNK_PIXELS, (_LAB_FROM_F, _LAB_OFFSET)),
                'YCbCr': (_linear_chunk, CPU_LINEAR_CHUNK_PIXELS, (YCBCR_FROM_RGB / 255.0, YCBCR_OFFSET)),
                'RGB': (_linear_chunk, CPU_LINEAR_CHUNK_PIXELS, (np.eye(3) / 255.0, (0.0, 0.0, 0.0)))}
CPU_KERNEL_SPACES = tuple(_CPU_KERNELS)
# Folded (weight, bias) per space: plain (scikit-image's units) and normalised by VIEW_STATS (the view).
_PLAIN = {space: _affine(*affine) for space, (_, _, affine) in _CPU_KERNELS.items()}
_NORMALISED = {space: _affine(*affine, *VIEW_STATS[space]) for space, (_, _, affine) in _CPU_KERNELS.items()}


def _check_uint8(images):
    """Raise unless images is a uint8 CPU tensor (..., 3k, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 torch tensor, got {type(images).__name__} {getattr(images, 'dtype', '')}")
    if images.dim() < 3 or images.shape[-3] % 3 != 0:
        raise ValueError(f"expected shape (..., 3k, H, W), got {tuple(images.shape)}")
    if images.device.type != 'cpu':
        raise ValueError("the uint8 kernels run on the CPU; DeviceView runs the generic formula on other devices")


def _cpu_kernel(space, images, parameters):
    """uint8 RGB (..., 3k, H, W) on the CPU -> float32 (..., 3k, H, W): every 3-channel group, chunk by chunk."""
    _check_uint8(images)
    chunk, chunk_pixels, _ = _CPU_KERNELS[space]
    weight, bias = parameters[space]
    pixels = images.shape[-2] * images.shape[-1]
    out = torch.empty(images.shape, dtype=torch.float32)
    # float32 products under autocast too (entering the context costs more than a 224 px YCbCr product's overhead:
    # skipped when autocast is off)
    products = torch.autocast('cpu', enabled=False) if torch.is_autocast_enabled('cpu') else contextlib.nullcontext()
    with products:
        for rgb, result in zip(images.reshape(-1, 3, pixels), out.view(-1, 3, pixels)):  # 3 x HW each
            for start in range(0, pixels, chunk_pixels):
                chunk(rgb[:, start:start + chunk_pixels], result[:, start:start + chunk_pixels], weight, bias)
    return out


def fast_rgb_to_lab(images):
    """uint8 RGB (..., 3, H, W) on the CPU -> float32 CIE L*a*b*, D65 / 2 degrees, scikit-image's units.

    L in [0, 100], a in about [-86, 98], b in about [-108, 94]. Same constants as scikit-image 0.26 `rgb2lab`
    (applied to the image / 255); max |diff| to it <= 5e-4 in L, a and b units (float32 rounding of the cube root,
    amplified x500 in a): measured 9e-5 over all 256^3 colours. About 1 ms per 224 x 224 image on one core.
    """
    return _cpu_kernel('Lab', images, _PLAIN)


def fast_rgb_to_ycbcr(images):
    """uint8 RGB (..., 3, H, W) on the CPU -> float32 ITU-R BT.601 YCbCr: Y in [16, 235], Cb/Cr in [16, 240].

    scikit-image 0.26 `rgb2ycbcr` units; max |diff| to it <= 1e-4 (float32 rounding of values up to 240; measured
    3.3e-5 over all 256^3 colours).
    """
    return _cpu_kernel('YCbCr', images, _PLAIN)


class FastView:
    """uint8 RGB ((B x) 3k x H x W) on the CPU -> the normalised float32 view: DeviceView's CPU path, as a callable.

    The same function DeviceView(space) calls on CPU tensors (spaces CPU_KERNEL_SPACES), also for single images;
    picklable, so it runs inside DataLoader workers (they then return float32 instead of uint8: 4x the bytes).
    """

    def __init__(self, space='Lab'):
        self.space = canonical_space(space)
        if self.space not in _CPU_KERNELS:
            raise ValueError(f"FastView supports {', '.join(CPU_KERNEL_SPACES)}, not {self.space!r}")

    def __call__(self, images):
        return _cpu_kernel(self.space, images, _NORMALISED)

    def __repr__(self):
        return f"FastView(space={self.space!r})"


class DeviceView(nn.Module):
    """uint8 RGB crops -> normalised colour view, batched on the crops' device.

    CMC (Tian et al., 2019, Sec. 4) feeds L and ab (or Y and CbCr) as two views; this is the
    conversion step, moved from per-sample CPU float64 into one float32 batch op:
    x / 255 -> rgb_to(space) -> (x - mean) / std, for every 3-channel group (k = 2 for MoCo's
    query and key crops concatenated on channels). On CPU tensors, Lab, YCbCr and RGB take the uint8 kernels above
    (`FastView`: the same values within 1e-5, 3-4x faster per core) unless ``cpu_kernel=False``; every other device
    and space runs the generic formula.
    """

    CPU_CHUNK_PIXELS = 1 << 17  # pixels per chunk of the generic formula on CPU (about two 224 x 224 crops)

    def __init__(self, space='Lab', cpu_kernel=True):
        super().__init__()
        self.space = canonical_space(space)
        self.cpu_kernel = bool(cpu_kernel) and self.space in _CPU_KERNELS
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
        on_cpu = images.device.type == 'cpu'
        if on_cpu and self.cpu_kernel and self.mean.dtype == torch.float32:  # float32 constants: float32 output
            return _cpu_kernel(self.space, images, _NORMALISED)
        groups = images.reshape(batch, channels // 3, 3, height, width)  # B x k x 3 x H x W
        if not on_cpu:
            return self._convert(groups).reshape(batch, channels, height, width)
        # On CPU, a few images at a time keep the dozen float temporaries in cache instead of
        # allocating (and page-faulting) full-batch buffers: 2-5x faster (bench/bench_colour.py).
        out = torch.empty(groups.shape, dtype=torch.float32)
        step = max(1, self.CPU_CHUNK_PIXELS // (channels // 3 * height * width))
        for start in range(0, batch, step):
            out[start:start + step] = self._convert(groups[start:start + step])
        return out.reshape(batch, channels, height, width)

    def _convert(self, groups):
        """... x 3 x H x W uint8 -> normalised float32 view (the generic formula)."""
        return (rgb_to(self.space, groups.float().div(255)) - self.mean) / self.std

    def extra_repr(self):
        return f"space={self.space!r}, cpu_kernel={self.cpu_kernel}"


# Named views: a colour space and the channels of it that the view keeps (CMC Sec. 4: L | ab, Y | CbCr; any channel
# group of Lab, YCbCr or HSV may be a view of its own).
COLOUR_VIEWS = {'L': ('Lab', (0,)), 'ab': ('Lab', (1, 2)), 'a': ('Lab', (1,)), 'b': ('Lab', (2,)),
                'Y': ('YCbCr', (0,)), 'CbCr': ('YCbCr', (1, 2)), 'Cb': ('YCbCr', (1,)), 'Cr': ('YCbCr', (2,)),
                'H': ('HSV', (0,)), 'S': ('HSV', (1,)), 'V': ('HSV', (2,))}
# Views that carry colour (constant on a grayscale image).
CHROMA_VIEWS = ('ab', 'a', 'b', 'CbCr', 'Cb', 'Cr', 'H', 'S')


def view_channels(view, file_channels=None):
    """Input channels of a named view: its colour channels, or ``file_channels[view]`` for a view read from files."""
    if view in COLOUR_VIEWS:
        return len(COLOUR_VIEWS[view][1])
    if file_channels and view in file_channels:
        return int(file_channels[view])
    raise UserError(f"unknown view {view!r}: choose colour views among {', '.join(COLOUR_VIEWS)}, or views read "
                    f"from files with --dataset multiview_folder")


class ViewStack(nn.Module):
    """uint8 batch -> the named views, normalised and concatenated on channels in ``views`` order, on the device.

    Input layout (what the data sets serve): RGB in channels 0..2 when any colour view is asked for, then each
    view read from files (``file_channels``: {view: channels}) in ``views`` order. Each colour space is converted
    once per batch by a ``DeviceView`` (so its channels are normalised exactly as ``DeviceView`` does) and each view
    keeps its channels of it; a file view's uint8 values map onto [-1, 1] ((x / 255 - 0.5) / 0.5).
    ``ViewStack(('L', 'ab'))`` gives exactly ``DeviceView('Lab')``'s tensor.
    """

    def __init__(self, views, file_channels=None):
        super().__init__()
        self.views, file_channels = tuple(views), dict(file_channels or {})
        self.channels = [view_channels(view, file_channels) for view in self.views]
        spaces = sorted({COLOUR_VIEWS[v][0] for v in self.views if v in COLOUR_VIEWS})
        self.converters = nn.ModuleDict({space: DeviceView(space) for space in spaces})
        start, self.file_slices = (3 if spaces else 0), {}
        for view, channels in zip(self.views, self.channels):
            if view not in COLOUR_VIEWS:
                self.file_slices[view] = (start, start + channels)
                start += channels
        self.in_channels = start

    def forward(self, images):
        """images: B x in_channels x H x W uint8 -> B x sum(channels) x H x W float32."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.in_channels:
            raise UserError(f"views {' '.join(self.views)} expect B x {self.in_channels} x H x W uint8 images, got "
                            f"{images.dtype} {tuple(images.shape)}")
        converted = {space: converter(images[:, :3]) for space, converter in self.converters.items()}
        parts = []
        for view in self.views:
            if view in COLOUR_VIEWS:
                space, picked = COLOUR_VIEWS[view]
                parts.append(converted[space][:, list(picked)])           # B x C_v x H x W
            else:
                start, stop = self.file_slices[view]
                parts.append(images[:, start:stop].float().div(255).sub(0.5).div(0.5))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def extra_repr(self):
        return f"views={self.views}, channels={self.channels}"


class PrenormalisedViews(nn.Module):
    """Views the loader workers already converted and normalised (``--color_on_cpu``: the reference's per-image
    scikit-image path, ``dataset.reference_views_transform``): only cast to float32, as the reference's
    ``inputs.float()`` did, so nothing is converted twice. ``channels``: sum of the views' channels (3 for L|ab).
    """

    def __init__(self, channels):
        super().__init__()
        self.channels = int(channels)

    def forward(self, views):
        """views: B x channels x H x W float (float64 from the workers) -> float32, same shape; else UserError."""
        if not torch.is_floating_point(views) or views.dim() != 4 or views.shape[1] != self.channels:
            raise UserError(f"--color_on_cpu expects B x {self.channels} x H x W float views from the loader, got "
                            f"{views.dtype} {tuple(views.shape)} (uint8 crops go through ViewStack instead)")
        return views.float()

    def extra_repr(self):
        return f"channels={self.channels}"


__all__ = ['XYZ_FROM_RGB', 'D65_WHITE', 'RGB_FROM_HED', 'XYZ_FROM_CIERGB', 'YUV_FROM_RGB', 'YIQ_FROM_RGB',
           'YPBPR_FROM_RGB', 'YCBCR_FROM_RGB', 'YCBCR_OFFSET', 'YDBDR_FROM_RGB', 'HED_FROM_RGB', 'CIERGB_FROM_RGB',
           'COLOUR_SPACES', 'SKIMAGE_FUNCTIONS', 'canonical_space', 'rgb_to', 'VALUE_RANGES', 'VIEW_STATS',
           'CPU_KERNEL_SPACES', 'fast_rgb_to_lab', 'fast_rgb_to_ycbcr', 'FastView', 'DeviceView', 'COLOUR_VIEWS',
           'CHROMA_VIEWS', 'view_channels', 'ViewStack', 'PrenormalisedViews']
