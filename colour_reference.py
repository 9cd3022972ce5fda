"""The reference's per-image colour conversions (its ``RGB2<space>`` classes, ``--color_on_cpu``): PIL RGB image ->
H x W x 3 float array, through scikit-image in float64 as the reference did, or through ``colour``'s torch formula."""
import numpy as np
import torch

from colour import SKIMAGE_FUNCTIONS, canonical_space, rgb_to


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

__all__ = ['ColourConversion', 'REFERENCE_CONVERSIONS'] + [f'RGB2{s}' for s in REFERENCE_CONVERSIONS]
