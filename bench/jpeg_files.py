"""ImageNet-like JPEG files for the benchmarks, cut from scikit-image's bundled photographs (no download).

``make_jpegs(folder, count, size)`` writes ``count`` files of ``size`` = (width, height) pixels, quality 90: random
crops (60-100% of each side), resizes and flips of astronaut, coffee, chelsea, rocket and hubble_deep_field.
Deterministic for a seed. Used by bench/loader.py (one folder of files) and bench/end_to_end.py (an ImageFolder);
a module, not a script (no command line).
"""
import os
from multiprocessing import Pool

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field')


def make_jpegs(folder, count, size, seed=0):
    """Write ``count`` JPEGs (quality 90, size = (w, h)) into ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert('RGB') for name in PHOTOS]
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = photo.size
        fraction = rng.uniform(0.6, 1.0)
        crop_w, crop_h = int(width * fraction), int(height * fraction)
        left, top = rng.randint(0, width - crop_w + 1), rng.randint(0, height - crop_h + 1)
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.BILINEAR)
        if rng.rand() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        path = os.path.join(folder, f'{index:05d}.jpg')
        image.save(path, 'JPEG', quality=90)
        paths.append(path)
    return paths


def _make_class(job):
    folder, count, size, seed = job
    return make_jpegs(folder, count, size, seed)


def make_image_folder(root, count, size, classes=8, processes=1):
    """An ImageFolder root/train/class_<c>/*.jpg of ``count`` files in ``classes`` classes (class c: seed c), written
    by ``processes`` processes; returns root."""
    jobs = [(os.path.join(root, 'train', f'class_{c}'), count // classes + (c < count % classes), size, c)
            for c in range(classes)]
    if processes > 1:
        with Pool(min(processes, classes)) as pool:
            pool.map(_make_class, jobs)
    else:
        list(map(_make_class, jobs))
    return root
