"""uint8 colour kernels for the CPU: ``DeviceView``'s CPU path for Lab, YCbCr and RGB (``fast_rgb_to_lab``,
``fast_rgb_to_ycbcr``, ``FastView``), the same values as the generic formula of ``views.colour`` within 1e-5 and
3-4x faster per core."""
import contextlib

import numpy as np
import torch

from views.colour import (CIE_EPSILON, LAB_SLOPE, D65_WHITE, VIEW_STATS, XYZ_FROM_RGB, YCBCR_FROM_RGB, YCBCR_OFFSET,
                          srgb_to_linear, canonical_space)

# Inputs are uint8, so the sRGB gamma is a 256-entry lookup table (the generic `srgb_to_linear`, evaluated once in
# float64); the 3 x 3 matrices (white point, 1 / 255 and the view's normalisation folded in) run as one float32 matrix
# product per chunk of pixels; the CIE cube root is exp2(log2(t) / 3) (vectorised float32 exp2/log2: ~3x torch's
# pow; exp2 costs half of exp: ~10% off the kernel). A crop of up to 2^16 pixels is one chunk, so its output is
# written in place, not through a copy into a strided slice (2^15-pixel chunks: 0.89-0.93 ms per 224 px crop against
# 0.75-0.77, alone and beside a decoding process, 2026-11-30). Agreement with scikit-image 0.26 (float64) over all
# 256^3 uint8 colours: Lab max |diff| 9e-5 (L, a, b units), YCbCr 3.3e-5; with the generic formula (the normalised
# view, DeviceView(space, cpu_kernel=False)) ~1e-6 (tests/views/test_kernels.py asserts <= 1e-5). Always float32:
# autocast is off inside (it would run the matrix products in bfloat16), as in the generic formula.

CPU_CHUNK_PIXELS = 1 << 16  # pixels per chunk of Lab: a 224 or 256 px crop in one
CPU_LINEAR_CHUNK_PIXELS = 1 << 18  # linear maps have one temporary: whole images (up to 512 x 512) in one product

_LINEAR_LUT = srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).float().numpy()  # exact to float32
# X / Xn, Y / Yn, Z / Zn from linear RGB: rows of xyz_from_rgb scaled by 1 / white (float64, then float32).
_XYZN_FROM_LINEAR = torch.from_numpy((XYZ_FROM_RGB / np.array(D65_WHITE)[:, None]).astype(np.float32))
# (L, a, b) from (fx, fy, fz): L = 116 fy - 16, a = 500 (fx - fy), b = 200 (fy - fz).
_LAB_FROM_F = np.array([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])
_LAB_OFFSET = (-16.0, 0.0, 0.0)
# The linear toe meets cbrt at epsilon up to scikit-image's rounded constants: add the gap back below epsilon.
_TOE_GAP = LAB_SLOPE * CIE_EPSILON + 16.0 / 116.0 - CIE_EPSILON ** (1.0 / 3.0)
_TOE_SHIFT = CIE_EPSILON - _TOE_GAP / LAB_SLOPE  # 7.787 (t - shift) = 7.787 (t - eps) + gap


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
    toe = t.sub(_TOE_SHIFT).clamp_max_(0.0).mul_(LAB_SLOPE)
    f = t.clamp_min_(CIE_EPSILON).log2_().mul_(1.0 / 3.0).exp2_().add_(toe)
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


def normalised_view(space, images):
    """uint8 RGB (..., 3k, H, W) on the CPU -> float32, each 3-channel group converted to ``space`` and normalised
    by ``VIEW_STATS[space]``: what ``DeviceView(space)`` returns for CPU tensors (spaces ``CPU_KERNEL_SPACES``)."""
    return _cpu_kernel(space, images, _NORMALISED)


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
        return normalised_view(self.space, images)

    def __repr__(self):
        return f"FastView(space={self.space!r})"


__all__ = ['CPU_KERNEL_SPACES', 'CPU_CHUNK_PIXELS', 'CPU_LINEAR_CHUNK_PIXELS', 'fast_rgb_to_lab', 'fast_rgb_to_ycbcr',
           'normalised_view', 'FastView']
