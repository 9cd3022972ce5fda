"""The data of a run, from its flags: each split (``build_split``), the val split's labels numbered as train's
(``align_classes``), the colour a view needs (``check_colour``), and the splits of the kNN monitor and the probes."""
import os

import numpy as np

from engine.data import check_sizes
from engine.errors import MissingSplit, UserError
from inputs.build import build_dataset
from inputs.decode import DECODE_ERRORS
from inputs.transforms import eval_transform
from views.registry import find_view


def build_split(opt, split, transform, two_crop=False, say=None):
    """``inputs.build.build_dataset`` for this run's flags. ``say``: where to note the hidden entries the folder held
    (a run reads one folder more than once: it says so where it first reads it)."""
    data = build_dataset(opt.dataset, opt.data_folder, split, transform, two_crop=two_crop, download=opt.download,
                         skip_bad_images=opt.skip_bad_images, views=getattr(opt, 'views', None))
    hidden = getattr(data, 'hidden_entries', None)
    if say is not None and hidden:
        names = sorted({os.path.basename(path) for path in hidden})
        shown = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')
        say(f'note: skipped {len(hidden)} hidden entr{"y" if len(hidden) == 1 else "ies"} under {data.root} (names '
            f'starting with ".": {shown}): neither classes nor images')
    return data


def align_classes(train_set, val_set, say):
    """Number the val split's labels as the train split's, by class name (each split lists its own class folders,
    so a val folder lacking a class would otherwise shift every later label). Says so in one line when val lacks
    classes; a val class that train lacks is a UserError (``inputs.folders.class_map``)."""
    if list(val_set.classes) == list(train_set.classes):
        return
    missing = [name for name in train_set.classes if name not in val_set.classes]
    val_set.relabel(train_set.classes)
    if missing:
        say(f'note: the val split lacks {len(missing)} of the {len(train_set.classes)} train classes '
            f'({", ".join(missing[:5])}{", ..." if len(missing) > 5 else ""}); its labels follow the train split\'s '
            f'numbering, by class name')


COLOUR_SAMPLE = 32      # images looked at: a few dozen, decoded once, before any training
GREY_SPREAD = 8         # a pixel is coloured when max(R,G,B) - min(R,G,B) exceeds this many uint8 levels (JPEG
                        # rounding or a little noise on a grey image leave up to ~6)
GREY_SHARE = 0.01       # an image is grayscale when under 1% of its pixels are coloured (a white icon with a small
                        # coloured glyph still counts as colour)


def check_colour(dataset, views, say, advice, flag=None, sample=COLOUR_SAMPLE):
    """Refuse a data set whose images carry no colour when a view needs it (``views.registry``: ``chroma``): a
    grayscale image's ab (CbCr) channels are constant, so that encoder would learn nothing while the run looks
    normal. Looks at ``sample`` images spread evenly over the set; all grayscale is a UserError naming the views as
    ``flag`` (default ``--views ...``) and ending with ``advice``; some grayscale is one line of note."""
    chroma = ' and '.join(view for view in views if find_view(view) is not None and find_view(view).chroma)
    if not chroma:
        return
    flag = flag or f'--views {" ".join(views)}'
    picks = sorted(set(np.linspace(0, len(dataset) - 1, min(sample, len(dataset))).round().astype(int).tolist()))
    grey = seen = 0
    for index in picks:
        try:
            pixels = np.asarray(dataset.image(index), dtype=np.int16)      # H x W x 3
        except DECODE_ERRORS:                                 # a bad file is the loader's to report
            continue
        seen += 1
        grey += int(((pixels.max(axis=2) - pixels.min(axis=2)) > GREY_SPREAD).mean() < GREY_SHARE)
    if seen and grey == seen:
        raise UserError(f'{flag} needs colour images, but all {seen} images sampled from the training set are '
                        f'grayscale (equal R, G and B), so its {chroma} view would be constant; {advice}')
    if grey:
        say(f'note: {grey} of {seen} images sampled from the training set ({100 * grey / seen:.0f}%) are grayscale: '
            f'their {chroma} view is constant')


def eval_splits(opt, say):
    """The labelled (train, val) splits at the evaluation crop (``eval_transform``), val's labels numbered as train's:
    what the kNN monitor compares. None when there is no labelled val split (a MissingSplit); any other fault is a
    UserError."""
    try:
        train_set = build_split(opt, 'train', eval_transform(opt.image_size))     # the run's pretrain split said so
        val_set = build_split(opt, 'val', eval_transform(opt.image_size), say=say)
    except MissingSplit:
        return None
    align_classes(train_set, val_set, say)
    return train_set, val_set


def probe_splits(opt, say, train_transform, colour_views=None, colour_flag=None):
    """The linear probe's (train, val) splits: train at ``train_transform`` (or, with --cache_features, at the
    evaluation crop: the features are computed once), val at the evaluation crop, labels numbered as train's, sizes
    checked against the flags; ``colour_views``: the probed views whose colour grayscale data would lack (CMC's),
    named as ``colour_flag`` in the message."""
    train_set = build_split(opt, 'train', eval_transform(opt.image_size) if opt.cache_features else train_transform,
                            say=say)
    val_set = build_split(opt, 'val', eval_transform(opt.image_size), say=say)
    align_classes(train_set, val_set, say)
    check_sizes(opt, len(train_set))
    if colour_views:
        check_colour(train_set, colour_views, say, flag=colour_flag,
                     advice='probe it on a colour data set (--dataset, --data_folder), or probe only views without '
                     'colour (--probe_views)')
    say(f'number of train: {len(train_set)}, number of val: {len(val_set)}, classes: {len(train_set.classes)}')
    return train_set, val_set
