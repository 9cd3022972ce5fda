"""inputs.splits: the colour check reads the registry (a view registered with chroma=True is refused on grayscale
data, one without is not), on in-memory images."""
import numpy as np
import pytest

import views
from engine.errors import UserError
from inputs.folders import ArrayImageDataset
from inputs.splits import check_colour


def grey_and_colour(grey, colour=0, size=8):
    """``grey`` grayscale images (R = G = B) then ``colour`` saturated ones, in memory."""
    rng = np.random.RandomState(0)
    images = [np.repeat(rng.randint(0, 256, (size, size, 1)), 3, axis=2) for _ in range(grey)]
    images += [rng.randint(0, 256, (size, size, 3)) for _ in range(colour)]
    return ArrayImageDataset(np.stack(images).astype(np.uint8), [0] * len(images), ['c'])


def test_the_colour_check_follows_each_views_chroma_flag():
    views.register_view('splits_chroma', 1, lambda rgb: rgb[:, :1].float(), chroma=True)
    views.register_view('splits_luma', 1, lambda rgb: rgb[:, :1].float())
    notes = []
    data = grey_and_colour(6)
    check_colour(data, ['L', 'splits_luma'], notes.append, advice='unused')        # no view needs colour
    with pytest.raises(UserError) as error:
        check_colour(data, ['L', 'splits_luma', 'splits_chroma'], notes.append, advice='use colour images')
    assert str(error.value) == ('--views L splits_luma splits_chroma needs colour images, but all 6 images sampled '
                                'from the training set are grayscale (equal R, G and B), so its splits_chroma view '
                                'would be constant; use colour images')
    check_colour(grey_and_colour(1, colour=3), ['ab', 'splits_chroma'], notes.append, advice='unused')
    assert notes == ['note: 1 of 4 images sampled from the training set (25%) are grayscale: their ab and '
                     'splits_chroma view is constant']
