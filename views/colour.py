"""Colour spaces: batched conversions that reproduce scikit-image (``rgb_to``), their value ranges and the
normalisation constants of every colour view (``VIEW_STATS``). The uint8 CPU kernels are in ``views.kernels``,
``DeviceView`` (uint8 crops -> a normalised colour space on the device) in ``views.device``.

Colour conversions follow scikit-image 0.26 (`skimage/color/colorconv.py`) exactly: same constants, same D65 /
2-degree white point, same piecewise sRGB gamma, same HSV tie rules, same HED log/clipping, same output units.
"""
import numpy as np
import torch

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
CIE_EPSILON = 0.008856
_CIE_KAPPA = 903.3
LAB_SLOPE = 7.787
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


def srgb_to_linear(x):
    """Undo the sRGB (IEC 61966-2-1) transfer curve, piecewise as scikit-image rgb2xyz does."""
    return torch.where(x > 0.04045, ((x + 0.055) / 1.055).pow(2.4), x / 12.92)


def _srgb_to_xyz(x):
    """sRGB -> CIE XYZ: linearise, then `xyz_from_rgb` (scikit-image rgb2xyz)."""
    return _apply_matrix(XYZ_FROM_RGB, srgb_to_linear(x))


def _cie_cube_root(t):
    """CIE f(t): cbrt(t) above epsilon, the linear toe below (scikit-image xyz2lab)."""
    return torch.where(t > CIE_EPSILON, t.clamp_min(CIE_EPSILON).pow(1.0 / 3.0), LAB_SLOPE * t + 16.0 / 116.0)


def _rgb_to_lab(x):
    """CIE L*a*b* under D65 / 2 degrees (scikit-image rgb2lab): L in [0, 100]."""
    # Dividing by the white point is folded into the matrix (rows scaled by 1 / white).
    xyz_over_white = _apply_matrix(XYZ_FROM_RGB / np.array(D65_WHITE)[:, None], srgb_to_linear(x))
    fx, fy, fz = _cie_cube_root(xyz_over_white).unbind(-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def _rgb_to_luv(x):
    """CIE L*u*v* under D65 / 2 degrees (scikit-image rgb2luv, with its constants 0.008856, 903.3)."""
    big_x, big_y, big_z = _srgb_to_xyz(x).unbind(-3)
    xr, yr, zr = D65_WHITE
    luminance = big_y / yr
    lightness = torch.where(luminance > CIE_EPSILON,
                            116.0 * luminance.clamp_min(CIE_EPSILON).pow(1.0 / 3.0) - 16.0,
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
