"""The reference's per-image colour conversions (``--color_on_cpu``): its ``RGB2<space>`` classes (PIL RGB image ->
H x W x 3 float array, through scikit-image in float64 as the reference did, or through ``views.colour``'s torch
formula), and ``ReferenceViewStack`` (a PIL crop -> the named colour views, normalised, as the reference made them)."""
import numpy as np
import torch
from torchvision import transforms

from engine.errors import UserError
from views.colour import SKIMAGE_FUNCTIONS, VIEW_STATS, canonical_space, rgb_to
from views.registry import find_view, view_names


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


class ReferenceViewStack:
    """PIL RGB crop -> C x H x W float64 tensor: the named colour views (kind 'colour' of ``views.registry``) as the
    reference made them per image on the CPU: each colour space by scikit-image in float64, ToTensor (no rescaling of
    a float array), Normalize(``VIEW_STATS[space]``); then each view's channels, concatenated in ``views`` order, the
    layout ``views.ViewStack`` makes on the device. Any other view (computed, or read from files) is a UserError."""

    def __init__(self, views):
        self.views = tuple(views)
        found = {view: find_view(view) for view in self.views}
        unsupported = [view for view, entry in found.items() if entry is None or entry.kind != 'colour']
        if unsupported:
            raise UserError(f"--color_on_cpu converts colour views only ({' '.join(view_names('colour'))}, from one "
                            f"RGB image), not {' '.join(unsupported)}; drop --color_on_cpu")
        self.picked = {view: (entry.space, list(entry.picked)) for view, entry in found.items()}
        spaces = sorted({space for space, _ in self.picked.values()})
        self.converters = {space: transforms.Compose([ColourConversion(space, use_skimage=True),
                                                      transforms.ToTensor(), transforms.Normalize(*VIEW_STATS[space])])
                           for space in spaces}

    def __call__(self, img):
        converted = {space: convert(img) for space, convert in self.converters.items()}   # 3 x H x W float64 each
        parts = [converted[space][picked] for space, picked in (self.picked[view] for view in self.views)]
        return torch.cat(parts)                                                           # sum(C_v) x H x W

    def __repr__(self):
        return f"{type(self).__name__}(views={self.views})"


__all__ = (['ColourConversion', 'REFERENCE_CONVERSIONS', 'ReferenceViewStack'] +
           [f'RGB2{s}' for s in REFERENCE_CONVERSIONS])
