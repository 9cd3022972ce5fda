"""The styles finding of scripts/findings.py: CMC on "literally multiple viewpoint data" (the original README's words),
each emoji drawn by three artists (``scripts/build_styles_data.py``: Google's Noto in ``rgb/``, giving the colour views
L and ab; Fluent-3D and OpenMoji as views read from files). Unlike S or H, which are functions of the RGB that L and
ab already hold, another artist's drawing carries what the Google image lacks: the finding "more views give a better
representation of each view" (Tian et al. 2019, Sec. 4.3, Fig. 6) can show here.

Runs per seed: views L ab, then + fluent, then + fluent openmoji, core and full paradigms, each trained by the
contrastive and by the predictive objective (the same encoders and epochs), and a random-init encoder. Each encoder's
L network is evaluated: the weighted kNN and the cached linear probe on Google's val images, for the 9 categories and
for emoji.json's subcategories (``labels.csv``); and cross-style transfer, the category probe trained on Google's
train features and tested on the other styles' val images, fed through the same L network.

The evaluation reads label trees: symlink copies of the data set whose class folders are the chosen label set and
whose ``val/rgb`` holds the chosen style's images (so that LinearProbing.py, trained on the same train features with
the same seed, tests the same probe on another style).
"""
import csv
import os
import shutil

STYLE_VIEWS = [('L, ab', ['L', 'ab'], 'core'),
               ('+fluent, core', ['L', 'ab', 'fluent'], 'core'), ('+fluent, full', ['L', 'ab', 'fluent'], 'full'),
               ('+fluent, openmoji, core', ['L', 'ab', 'fluent', 'openmoji'], 'core'),
               ('+fluent, openmoji, full', ['L', 'ab', 'fluent', 'openmoji'], 'full')]
OBJECTIVES = ('contrastive', 'predictive')
STYLES = ('rgb', 'fluent', 'openmoji')
LABEL_SETS = ('category', 'subcategory')
DATA_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'styles32')
IMAGE_SIZE = 32
COLUMNS = ('split', 'class', 'file', 'unified', 'category', 'subcategory')


def runs(smoke=False):
    """[(row label, views, paradigm, objective)]: every view set under both objectives (smoke: the first two)."""
    chosen = STYLE_VIEWS[:2] if smoke else STYLE_VIEWS
    return [(f'{objective}, {label}', views, paradigm, objective)
            for objective in OBJECTIVES for label, views, paradigm in chosen]


def by_cost(chosen):
    """``chosen`` (rows of ``runs``) longest first, so that lanes taking the next run as one frees end together.
    Seconds an epoch at 32 px, one thread each of two lanes: contrastive 4-8, predictive 10 (L, ab) to about 40
    (4 views, full: 12 decoders at full resolution); the predictive objective and more decoders cost more."""
    def decoders(run):
        _, views, paradigm, objective = run
        pairs = len(views) * (len(views) - 1) if paradigm == 'full' else 2 * (len(views) - 1)
        return (objective == 'predictive', pairs, len(views))
    return sorted(chosen, key=decoders, reverse=True)


def read_labels(data_folder):
    """labels.csv's rows as dicts (split, class, file, unified, category, subcategory); a missing file is an error
    that says how to build the data set."""
    from engine.errors import UserError
    path = os.path.join(data_folder, 'labels.csv')
    if not os.path.isfile(path):
        raise UserError(f'{path} not found: the styles finding reads a data set of scripts/build_styles_data.py '
                        f'(python scripts/build_styles_data.py --out {data_folder} --size 32 --npm_pack)')
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in COLUMNS if rows and c not in rows[0]] or ([] if rows else ['any row'])
    if missing:
        raise UserError(f'{path} lacks {", ".join(missing)}: not a labels.csv of scripts/build_styles_data.py '
                        f'(columns {", ".join(COLUMNS)}); rebuild the data set')
    return rows


def shown_path(folder):
    """``folder`` relative to the repository when inside it (what results and their JSON record), else absolute."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.realpath(folder)
    return os.path.relpath(folder, repo) if folder.startswith(os.path.realpath(repo) + os.sep) else folder


def trained_classes(rows, labels):
    """The classes of a label set (a labels.csv column) that have a train image: the only ones a probe can learn."""
    return {row[labels] for row in rows if row['split'] == 'train'}


def label_tree(data_folder, root, labels, val_style, rows):
    """A multiview_folder data set at ``root`` of symlinks into ``data_folder``: class folders named by ``labels``
    (a labels.csv column), every style's folder for both splits, and ``val/rgb`` holding ``val_style``'s images.
    Val images of a class that train lacks are left out (``label_counts`` says how many)."""
    shutil.rmtree(root, ignore_errors=True)
    trained = trained_classes(rows, labels)
    for row in (row for row in rows if row[labels] in trained):
        for style in STYLES:
            source = val_style if (row['split'], style) == ('val', 'rgb') else style
            folder = os.path.join(root, row['split'], style, row[labels])
            os.makedirs(folder, exist_ok=True)
            os.symlink(os.path.abspath(os.path.join(data_folder, row['split'], source, row['class'], row['file'])),
                       os.path.join(folder, row['file']))


def build_trees(data_folder, work, label_sets):
    """{(labels, val style): tree folder under ``work``/trees} of the evaluations run: the category probe on every
    style's val images, the subcategory one on Google's."""
    rows = read_labels(data_folder)
    trees = {}
    for labels in label_sets:
        for style in (STYLES if labels == 'category' else STYLES[:1]):
            root = os.path.join(work, 'trees', f'{labels}_{style}')
            label_tree(data_folder, root, labels, style, rows)
            trees[labels, style] = root
    return trees


def label_counts(data_folder, labels):
    """(classes with a train image, val images of a class without one: left out of the evaluation) for a label set."""
    rows = read_labels(data_folder)
    trained = trained_classes(rows, labels)
    return len(trained), sum(row['split'] == 'val' and row[labels] not in trained for row in rows)


def metric(labels, style, kind):
    """The stored metric's name: 'probe L' (categories, Google's val), 'knn L subcategory', 'probe L -> fluent'."""
    return f'{kind} L' + ('' if labels == 'category' else f' {labels}') + ('' if style == 'rgb' else f' -> {style}')


def l_knn(ckpt_path, tree):
    """Weighted kNN top-1 (k=200, t=0.07) of the L network's layer-6 features, the tree's train split -> val."""
    from pretrained import feature_map as fm
    from pretrained.load import load_encoder
    from views import ViewStack
    from views.flags import file_channels
    encoder = load_encoder(ckpt_path)
    views = encoder.info['views']
    sets = fm.data_splits('multiview_folder', tree, IMAGE_SIZE, views=views, say=lambda *a: None)
    stack = ViewStack(views, file_channels(views, encoder.info['view_channels']))
    part = views.index('L')
    feats = {}
    for split in ('train', 'val'):
        x, y, _ = fm.encoder_features(encoder, sets[split], 6, view=stack)
        width = x.shape[1] // len(views)
        feats[split] = x[:, part * width:(part + 1) * width], y
    return fm.knn_top1(*feats['train'], *feats['val'], len(sets['train'].classes))


def l_pixels(data_folder, rows, style):
    """N x (32 * 32) float64: each row's image of ``style`` through the encoders' evaluation crop
    (``eval_transform(32)``: resize to 37, centre crop 32) as CIE L (scikit-image's rgb2lab, 0-100), flattened: the
    input the L encoder sees, before its normalisation. A missing or unreadable image is a UserError."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    from skimage.color import rgb2lab
    from engine.errors import UserError
    from inputs.transforms import eval_transform
    crop, out = eval_transform(IMAGE_SIZE), []
    for row in rows:
        path = os.path.join(data_folder, row['split'], style, row['class'], row['file'])
        try:
            with Image.open(path) as image:
                rgb = crop(image.convert('RGB')).permute(1, 2, 0).numpy()        # 32 x 32 x 3 uint8
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f'{path}: {e.strerror or e} (labels.csv names it); rebuild the data set with '
                            f'scripts/build_styles_data.py') from None
        out.append(rgb2lab(rgb)[..., 0].ravel())
    return np.stack(out)


def pixel_baselines(data_folder, label_sets):
    """What the pretrained L encoders must beat, with no pretraining and no seed: {row: {metric: top-1}}.

    'majority class': train's largest class, predicted for every val image (the same in every column).
    'standardised L pixels': the 32 x 32 L values of the encoders' evaluation crop (``l_pixels``), each pixel
    standardised with train's mean and sd (the encoders' features go to the kNN as they are: cosine is blind to their
    scale, not to an offset shared by all images, and raw pixels share a large one); the kNN of the encoders' table
    on them (k=200, t=0.07, cosine), and the demo's cross-validated logistic regression (pretrained/linear_eval.py: C
    chosen on train folds, mean over its 3 probe seeds), trained on Google's train images and tested on each style's
    val images. A label set with a class of one train image (the subcategories) gets no probe: too few to
    cross-validate."""
    import numpy as np
    import torch
    from pretrained import feature_map as fm
    from pretrained import linear_eval
    rows = read_labels(data_folder)
    train = [row for row in rows if row['split'] == 'train']
    train_l = l_pixels(data_folder, train, 'rgb')                        # N x 1024, the same for every label set
    majority, pixels = {}, {}
    for labels in label_sets:
        trained = sorted(trained_classes(rows, labels))
        index = {name: i for i, name in enumerate(trained)}
        val = [row for row in rows if row['split'] == 'val' and row[labels] in index]
        train_y = np.array([index[row[labels]] for row in train])
        val_y = np.array([index[row[labels]] for row in val])
        val_l = {'rgb': l_pixels(data_folder, val, 'rgb')}                # M x 1024 per style read
        train_x, val_x = linear_eval.standardise(train_l, val_l['rgb'])
        top = 100 * float(np.mean(val_y == np.bincount(train_y).argmax()))
        majority[metric(labels, 'rgb', 'knn')] = top
        pixels[metric(labels, 'rgb', 'knn')] = fm.knn_top1(torch.from_numpy(train_x).float(), train_y,
                                                           torch.from_numpy(val_x).float(), val_y, len(trained))
        for style in (STYLES if labels == 'category' else STYLES[:1]):
            majority[metric(labels, style, 'probe')] = top
            if np.bincount(train_y).min() >= 2:
                style_l = val_l[style] if style in val_l else l_pixels(data_folder, val, style)
                pixels[metric(labels, style, 'probe')] = linear_eval.probe(train_l, train_y, style_l, val_y)['mean']
    return {'majority class': majority, 'standardised L pixels': pixels}


def evaluate(ckpt_path, name, trees, probe):
    """{metric: top-1} of one encoder's L network on every tree; ``probe(ckpt, tree, run name)``: the cached probe's
    final val top-1 on a tree (findings.py's LinearProbing.py run)."""
    row = {}
    for (labels, style), tree in trees.items():
        if style == 'rgb':
            row[metric(labels, style, 'knn')] = l_knn(ckpt_path, tree)
        row[metric(labels, style, 'probe')] = probe(ckpt_path, tree, f'{name}_{labels}_{style}')
    return row
