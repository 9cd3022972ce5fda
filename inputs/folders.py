"""Instance data sets: items are (image, target, index), the index keying the memory bank. ``ImageFolderInstance`` (an
ImageFolder), ``ArrayImageDataset`` (in-memory uint8 images: the demo set, STL-10, CIFAR-10, Fashion-MNIST), and
``class_map``, which numbers one split's classes as another's."""
import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets

from engine.errors import UserError
from inputs.decode import DECODE_ERRORS, image_loader, read_pil_rgb


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


def is_hidden(name):
    """Hidden entries (names starting with '.': .ipynb_checkpoints, .DS_Store, macOS's AppleDouble ._name.jpg files)
    are neither classes nor images."""
    return name.startswith('.')


def visible(names):
    """The names that are not hidden, sorted."""
    return sorted(name for name in names if not is_hidden(name))


def class_map(own, reference, where):
    """{own class index: index of the same class name in ``reference``}, so that labels from two splits mean the
    same class. A class of ``own`` missing from ``reference`` is a UserError naming it (its images could never be
    classified right)."""
    extra = [name for name in own if name not in reference]
    if extra:
        shown = ', '.join(repr(name) for name in extra[:5]) + (f' and {len(extra) - 5} more' if len(extra) > 5 else '')
        plural, them = ('s', 'them') if len(extra) > 1 else ('', 'it')
        by_case = {name.lower(): name for name in reference}
        twins = [f'{name!r} / {by_case[name.lower()]!r}' for name in extra if name.lower() in by_case]
        shown += f' (train has {", ".join(twins)}: the names differ in case)' if twins else ''
        raise UserError(f"{where} has class folder{plural} {shown} that the train split lacks; add {them} to train, "
                        f"or remove {them} from val")
    position = {name: i for i, name in enumerate(reference)}
    return {i: position[name] for i, name in enumerate(own)}


class ImageFolderInstance(datasets.ImageFolder):
    """ImageFolder whose items are (img, target, index), the index keying the memory bank.

    two_crop: the transform runs twice and the results are concatenated on channels (MoCo's query
    and key). skip_bad_images: an undecodable file is replaced by the next decodable item (its
    image, target and index are returned) and remembered in `skipped_files` / `num_skipped`.
    Those counters live in the process that read the item: with DataLoader workers the parent's
    copy stays 0 (each worker warns once per skipped file instead). A transform that takes tensors
    (``accepts_tensors``: `inputs.crops.FastRandomResizedCrop`) gets JPEG files as uint8 tensors
    (`inputs.decode.read_rgb`, the same pixels), every other transform PIL RGB images. Hidden entries (``is_hidden``)
    are neither classes nor images: ``hidden_entries`` lists those that would have been (folders, image files).
    """

    def __init__(self, root, transform=None, target_transform=None, two_crop=False, skip_bad_images=False):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise UserError(f"image folder {root} does not exist: expected class sub-folders with .jpg/.png files")
        _check_two_crop(transform, two_crop)
        self.hidden_entries = []
        try:
            super().__init__(root, transform=transform, target_transform=target_transform,
                             loader=image_loader(transform), is_valid_file=self._is_image)
        except FileNotFoundError:
            raise UserError(self._no_images(root)) from None
        self.two_crop = two_crop
        self.skip_bad_images = skip_bad_images
        self.skipped_files = set()

    def find_classes(self, directory):
        """The class folders, hidden ones aside (torchvision's ``find_classes`` takes every folder)."""
        classes = []
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.is_dir():
                (self.hidden_entries if is_hidden(entry.name) else classes).append(
                    entry.path if is_hidden(entry.name) else entry.name)
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}

    def _is_image(self, path):
        """An image file (torchvision's extensions), not hidden and in no hidden folder below its class folder; the
        hidden entry it is in (the file, or its first hidden folder) is noted once in ``hidden_entries``."""
        if not path.lower().endswith(datasets.folder.IMG_EXTENSIONS):
            return False
        parts = os.path.relpath(path, self.root).split(os.sep)
        first = next((i for i, part in enumerate(parts) if i and is_hidden(part)), None)
        if first is not None:
            entry = os.path.join(self.root, *parts[:first + 1])
            if entry not in self.hidden_entries:
                self.hidden_entries.append(entry)
        return first is None

    def _no_images(self, root):
        """The one line for torchvision's FileNotFoundError: no class folder at all, or class folders without images
        (named, beside how many classes have some)."""
        try:
            classes, _ = self.find_classes(root)
        except FileNotFoundError:
            return f"no images found under {root}: expected class sub-folders with .jpg/.png files (it has none)"
        def has_images(name):
            walk = os.walk(os.path.join(root, name), followlinks=True)
            return any(self._is_image(os.path.join(folder, file)) for folder, _, files in walk for file in files)
        empty = [name for name in classes if not has_images(name)]
        shown = ', '.join(empty[:5]) + (f' and {len(empty) - 5} more' if len(empty) > 5 else '')
        if len(empty) == len(classes):
            return (f"no images found under {root}: its class folders ({shown}) hold no .jpg, .jpeg, .png, .bmp or "
                    f".webp files")
        return (f"class folder{'s' if len(empty) > 1 else ''} {shown} under {root} hold{'' if len(empty) > 1 else 's'} "
                f"no images (.jpg, .jpeg, .png, .bmp, .webp, ...) while the other {len(classes) - len(empty)} "
                f"hold some; add images to {'them' if len(empty) > 1 else 'it'}, or remove "
                f"{'them' if len(empty) > 1 else 'it'}")

    @property
    def num_skipped(self):
        """How many distinct undecodable files this process has skipped."""
        return len(self.skipped_files)

    def _load_decodable(self, index):
        """(image, target, index) of `index`, or of the next decodable item when skipping (the image: what the loader
        gives, a PIL image or `read_rgb`'s uint8 tensor)."""
        for offset in range(len(self.samples)):
            current = (index + offset) % len(self.samples)
            path, target = self.samples[current]
            try:
                return self.loader(path), target, current
            except DECODE_ERRORS as error:
                reason = (str(error).splitlines() or [''])[0]
                if not self.skip_bad_images:
                    raise UserError(f"cannot decode image {path} ({type(error).__name__}: {reason}); "
                                    f"delete or replace it, or pass --skip_bad_images to skip such files") from None
                if path not in self.skipped_files:
                    self.skipped_files.add(path)
                    warnings.warn(f"skipping undecodable image {path} ({type(error).__name__}: {reason})")
        raise UserError(f"none of the {len(self.samples)} images under {self.root} could be decoded: replace them "
                        f"with readable .jpg/.png files")

    def image(self, index):
        """The untransformed RGB image of item ``index`` (PIL), as decoded from its file."""
        return read_pil_rgb(self.samples[index][0])

    def relabel(self, classes):
        """Number this set's classes as ``classes`` (another split's list, matched by name); see ``class_map``."""
        mapping = class_map(self.classes, classes, self.root)
        self.samples = [(path, mapping[target]) for path, target in self.samples]
        self.imgs, self.targets = self.samples, [target for _, target in self.samples]
        self.classes, self.class_to_idx = list(classes), {name: i for i, name in enumerate(classes)}

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

    def image(self, index):
        """The untransformed RGB image of item ``index`` (PIL)."""
        return Image.fromarray(np.ascontiguousarray(self.images[index])).convert('RGB')

    def relabel(self, classes):
        """Number this set's classes as ``classes`` (another split's list, matched by name); see ``class_map``."""
        mapping = class_map(self.classes, classes, 'the data set')
        self.targets = [mapping[t] if t >= 0 else t for t in self.targets]
        self.classes = list(classes)

    def __getitem__(self, index):
        # Copies one image: the array may be a strided view (STL-10) or a memory map.
        image = Image.fromarray(np.ascontiguousarray(self.images[index])).convert('RGB')
        return _instance_item(image, self.targets[index], index, self.transform, self.target_transform,
                              self.two_crop)


__all__ = ['class_map', 'ImageFolderInstance', 'ArrayImageDataset']
