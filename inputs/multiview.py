"""``--dataset multiview_folder``: one instance seen through several image files (CMC on NYU RGB-D, Tian et al. 2019,
Sec. 4.3: RGB (split into L and ab), depth, surface normals and segmentation, each stored as an image).

Layout: ``data_folder/{train,val}/<view folder>/<class>/<file>``. The same relative path (class and file name,
without the extension) across view folders is one instance. Views made from RGB (the colour views L, ab, H, ... and
the computed views of ``--view_module``) are read from the ``rgb`` folder; any other view is read from the folder of
its name, and registered as a view read from files (``views.registry.register_file_view``): a single-channel image
(L, P, I;16, I, F) as one channel, an RGB image (e.g. normals) as three, an alpha channel dropped; 16-bit images are
scaled to 8 bits (x / 257).
Items are (img, target, index): img is uint8, C x H x W, the rgb folder's 3 channels first (when a view made from RGB
is asked for), then each file view in ``--views`` order. The random crop and flip are drawn once per instance: the
transform runs once on the views stacked on channels.
"""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from engine.errors import MissingSplit, UserError, one_line
from inputs.decode import DECODE_ERRORS, eight_bit, to_rgb
from inputs.folders import class_map, is_hidden, visible
from views.registry import RGB_FOLDER, find_view, made_from_rgb, register_file_view

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.webp')
SHOWN = 5                                   # missing files named in the error line


def view_folders(views):
    """The folders the views are read from: ``rgb`` for the views made from RGB (once, first), then each other
    view's."""
    if not views:
        raise UserError('--dataset multiview_folder needs the views to read (train_CMC.py --views, or a checkpoint '
                        'of it for LinearProbing.py)')
    from_rgb = [view for view in views if made_from_rgb(view)]
    return ([RGB_FOLDER] if from_rgb else []) + [view for view in views if view not in from_rgb]


def _scan(folder, hidden):
    """{'<class>/<stem>': path} of the image files under folder/<class>/; hidden class folders and image files (names
    starting with '.') are left out and appended to ``hidden``."""
    found = {}
    for class_name in sorted(os.listdir(folder)):
        class_dir = os.path.join(folder, class_name)
        if not os.path.isdir(class_dir):
            continue
        if is_hidden(class_name):
            hidden.append(class_dir)
            continue
        for name in sorted(os.listdir(class_dir)):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in EXTENSIONS:
                continue
            if is_hidden(name):
                hidden.append(os.path.join(class_dir, name))
            elif f'{class_name}/{stem}' in found:        # 0.png beside 0.jpg: which one is the instance's view?
                raise UserError(f'{found[f"{class_name}/{stem}"]} and {os.path.join(class_dir, name)} are the same '
                                f'instance of {os.path.basename(folder)}: keep one file per name in a view folder')
            else:
                found[f'{class_name}/{stem}'] = os.path.join(class_dir, name)
    return found


def _as_array(image):
    """A decoded view image -> H x W x C uint8 (C = 1 or 3); high bit depths scaled to 8 bits (``eight_bit``)."""
    image = eight_bit(image)
    if image.mode in ('L', 'P', '1'):
        return np.asarray(image.convert('L') if image.mode == '1' else image, dtype=np.uint8)[..., None]
    if image.mode == 'LA':
        return np.asarray(image, dtype=np.uint8)[..., :1]
    if image.mode not in ('RGB', 'RGBA'):
        image = image.convert('RGB')
    return np.asarray(image, dtype=np.uint8)[..., :3]


def tensor_transform(transform):
    """The transform's steps that work on a C x H x W uint8 tensor (crop, flip, resize): PILToTensor dropped, so
    the crop and flip are drawn once for all the views stacked on channels."""
    if transform is None:
        return None
    if all(hasattr(transform, name) for name in ('size', 'scale', 'ratio', 'flip_p')):   # FastRandomResizedCrop
        return transforms.Compose([transforms.RandomResizedCrop(transform.size, transform.scale, transform.ratio,
                                                                antialias=True),
                                   transforms.RandomHorizontalFlip(transform.flip_p)])
    steps = transform.transforms if isinstance(transform, transforms.Compose) else [transform]
    kept = [step for step in steps if not isinstance(step, (transforms.PILToTensor, transforms.ToTensor))]
    return transforms.Compose(kept)


class MultiviewFolder(Dataset):
    """Instances seen through several view folders; items (uint8 C x H x W stacked views, target, index)."""

    def __init__(self, root, views, transform=None):
        if not os.path.isdir(root):
            raise UserError(f'multiview folder {root} does not exist: expected {root}/<view>/<class>/<file>')
        self.root, self.views, self.folders = root, tuple(views), view_folders(views)
        absent = [f for f in self.folders if not os.path.isdir(os.path.join(root, f))]
        if absent:
            raise UserError(f"{root} has no view folder{'s' if len(absent) > 1 else ''} {', '.join(absent)} (views "
                            f"{' '.join(self.views)}; it has {', '.join(visible(os.listdir(root))) or 'nothing'})")
        clashing = [view for view in self.views if view not in self.folders and view in os.listdir(root)]
        if clashing:
            found = find_view(clashing[0])
            raise UserError(f'{root} has a view folder {clashing[0]!r}, but {clashing[0]!r} is also a registered '
                            f'{found.kind} view ({found.source}); rename the folder or the view')
        self.hidden_entries = []
        files = {folder: _scan(os.path.join(root, folder), self.hidden_entries) for folder in self.folders}
        self.keys = sorted(set().union(*files.values()))
        if not self.keys:
            raise UserError(f'no images found under {root}/<view>/<class>/')
        missing = [f'{folder}/{key}.*' for key in self.keys for folder in self.folders if key not in files[folder]]
        if missing:
            raise UserError(f"{len(missing)} view file{'s are' if len(missing) > 1 else ' is'} missing under {root}: "
                            f"{', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''}; every instance "
                            f"needs a file in every view folder ({', '.join(self.folders)})")
        self.paths = [[files[folder][key] for folder in self.folders] for key in self.keys]
        self.classes = sorted({key.split('/')[0] for key in self.keys})
        self.targets = [self.classes.index(key.split('/')[0]) for key in self.keys]
        self.transform = tensor_transform(transform)
        self.channels = [array.shape[2] for array in self._load(0)]          # per folder, as instance 0's
        self.file_channels = {folder: channels for folder, channels in zip(self.folders, self.channels)
                              if folder != RGB_FOLDER}
        for view, channels in self.file_channels.items():
            register_file_view(view, channels, root)

    def __len__(self):
        return len(self.keys)

    def _load(self, index):
        """The instance's view images as H x W x C uint8 arrays, in folder order (all of one size)."""
        arrays = []
        for path in self.paths[index]:
            try:
                with Image.open(path) as image:
                    arrays.append(_as_array(image))
            except DECODE_ERRORS as error:
                raise UserError(f'cannot decode image {path} ({type(error).__name__}: {one_line(error)}); delete or '
                                f'replace it (--skip_bad_images does not apply to --dataset multiview_folder, whose '
                                f'views of an instance go together)') from None
        if len({a.shape[:2] for a in arrays}) > 1:
            sizes = ', '.join(f'{path}: {a.shape[1]}x{a.shape[0]}' for path, a in zip(self.paths[index], arrays))
            raise UserError(f'the views of instance {self.keys[index]} differ in size ({sizes}); store every view at '
                            f'the same resolution')
        expected = getattr(self, 'channels', None)          # set from instance 0 once it is read
        for i, (path, array) in enumerate(zip(self.paths[index], arrays)):
            if expected is not None and array.shape[2] != expected[i]:
                raise UserError(f'{path} has {array.shape[2]} channel(s) where {self.paths[0][i]} has {expected[i]}: '
                                f'store every file of the view folder {self.folders[i]!r} with the same channels (1 '
                                f'for a grey image, 3 for RGB)')
        return arrays

    def image(self, index):
        """The instance's RGB image (PIL; the first view folder's, as RGB, when there is no rgb folder)."""
        with Image.open(self.paths[index][0]) as image:
            return to_rgb(image)

    def relabel(self, classes):
        """Number this set's classes as ``classes`` (another split's list, matched by name)."""
        mapping = class_map(self.classes, classes, self.root)
        self.targets = [mapping[t] for t in self.targets]
        self.classes = list(classes)

    def __getitem__(self, index):
        stacked = np.concatenate(self._load(index), axis=2)                    # H x W x C
        img = torch.from_numpy(np.ascontiguousarray(stacked.transpose(2, 0, 1)))  # C x H x W uint8
        if self.transform is not None:
            img = self.transform(img)                                           # one crop and flip for all views
        return img, self.targets[index], index


def build_multiview_folder(data_folder, split, transform, views):
    """MultiviewFolder on data_folder/train (pretrain, train) or data_folder/val."""
    if not data_folder or not os.path.isdir(data_folder):
        raise UserError(f'data folder {data_folder} does not exist: expected {data_folder}/train/<view>/<class>/<file>'
                        f' (and /val)')
    root = os.path.join(data_folder, 'val' if split == 'val' else 'train')
    if not os.path.isdir(root):              # no val: the kNN monitor goes without it, as for an image folder
        raise MissingSplit(f"data folder {data_folder} has no '{os.path.basename(root)}' sub-folder: expected "
                           f"{root}/<view>/<class>/<file>")
    return MultiviewFolder(root, views, transform)
