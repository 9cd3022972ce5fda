"""What an encoder's features look like: its features over a data set (``encoder_features``), the weighted kNN top-1
of val against train (``knn_top1``, as the kNN monitor computes it), and a 2-D map of the val features coloured by
class (``embed_2d``: t-SNE, or UMAP when umap-learn is installed; ``draw_feature_map``, ``feature_map_figure`` for
several encoders side by side). ``compare_encoders`` does all of it for a few checkpoints (the demo's
feature_map.png); ``scripts/extract_features.py`` for one, saving the features too."""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoint import write_atomically
from engine.data import eval_loader
from engine.errors import UserError
from engine.knn import knn_predict
from inputs.splits import build_split, eval_splits
from inputs.transforms import eval_transform
from pretrained.load import load_encoder

KNN_K, KNN_T = 200, 0.07                    # the kNN monitor's (Wu et al., 2018)
PANEL_INCHES, LEGEND_INCHES, DPI = 5, 2, 100
MAX_LEGEND = 20                             # more classes than this: colours only, no legend
PLOT_FORMATS = ('png', 'pdf', 'svg')
TSNE_MAX_PERPLEXITY, PCA_DIMS = 30.0, 50

try:                                        # optional: UMAP when installed, else scikit-learn's t-SNE
    import umap
except ImportError:
    umap = None


def data_splits(dataset, data_folder, image_size, splits=('train', 'val'), views=None, say=print,
                skip_bad_images=False):
    """{split: data set} at the evaluation crop (``inputs.transforms.eval_transform``: resize, centre crop, no
    augmentation), val's labels numbered as train's. ``splits``: ('train',) or ('train', 'val'); a data set without
    a val split is then a UserError. ``views``: the checkpoint's, for --dataset multiview_folder.
    ``skip_bad_images``: as the scripts' --skip_bad_images, an undecodable image of a folder is skipped (its item is
    the next decodable one's, which ``encoder_features`` then keeps once)."""
    opt = argparse.Namespace(dataset=dataset, data_folder=data_folder, image_size=image_size, download=False,
                             skip_bad_images=skip_bad_images, views=views)
    if tuple(splits) == ('train',):
        return {'train': build_split(opt, 'train', eval_transform(image_size), say=say)}
    found = eval_splits(opt, say)
    if found is None:
        raise UserError(f'--dataset {dataset} {data_folder or ""} has no val split; extract --split train alone')
    return dict(zip(('train', 'val'), found))


@torch.no_grad()
def encoder_features(encoder, dataset, layer, batch_size=128, num_workers=0, view=None):
    """(features N x D float32, labels N int64, indices N int64), on the CPU, in the data set's order: ``encoder``'s
    features at ``layer`` (maps below the pooled layer flattened, C x h x w -> D). ``view``: turns a batch into the
    views tensor (``views.ViewStack``, for multiview_folder data); otherwise the encoder preprocesses uint8 RGB.
    An item given twice (--skip_bad_images puts the next decodable item in an undecodable one's place) is kept
    once: N counts the decodable items."""
    loader = eval_loader(dataset, argparse.Namespace(batch_size=batch_size, num_workers=num_workers))
    feats, labels, indices = [], [], []
    for images, target, index in loader:
        x = images.to(encoder.device)
        given = {'views': view(x)} if view is not None else {'images': x}
        feats.append(encoder.features(layer=layer, **given).flatten(1).cpu())
        labels.append(torch.as_tensor(target, dtype=torch.int64))
        indices.append(torch.as_tensor(index, dtype=torch.int64))
    indices = torch.cat(indices)
    first = np.unique(indices.numpy(), return_index=True)[1]              # each item's first row, in index order
    keep = torch.from_numpy(first) if len(first) < len(indices) else slice(None)
    return torch.cat(feats)[keep], torch.cat(labels)[keep], indices[keep]


def view_parts(encoder):
    """How many equal slices the features hold: one per view for CMC (concatenated in view order), else 1."""
    return len(encoder.views) if encoder.is_cmc else 1


def knn_ready(features, parts=1):
    """N x D -> each of ``parts`` equal slices L2-normalised (CMC: each view's, as the kNN monitor does), N x D."""
    return torch.cat([F.normalize(p, dim=1) for p in torch.as_tensor(features).float().chunk(parts, dim=1)], dim=1)


def knn_top1(train_feats, train_labels, val_feats, val_labels, n_classes, parts=1, k=KNN_K, t=KNN_T):
    """Top-1 (%) of the weighted kNN (``engine.knn.knn_predict``: k nearest by cosine, votes exp(s / t)) of val
    against train, each view's slice normalised first (``knn_ready``)."""
    scores = knn_predict(knn_ready(train_feats, parts), torch.as_tensor(train_labels).long(),
                         knn_ready(val_feats, parts), n_classes, k, t)
    return (scores.argmax(1) == torch.as_tensor(val_labels).long()).double().mean().item() * 100


def embedding_name():
    return 'UMAP' if umap is not None else 't-SNE'


def embed_2d(features, seed=0):
    """N x D features -> N x 2 map: UMAP when umap-learn is installed, else t-SNE (scikit-learn: PCA init, perplexity
    min(30, (N - 1) / 3), at least 1, after PCA to 50 dimensions), both with ``random_state=seed``."""
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    n = len(x)
    if n < 3:                                   # nothing to lay out
        return np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    if umap is not None:
        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(x)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    if x.shape[1] > PCA_DIMS and n > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = max(1.0, min(TSNE_MAX_PERPLEXITY, (n - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(x)


def class_colours(n_classes):
    """One colour per class: tab10 / tab20, else evenly spaced on turbo."""
    from matplotlib import colormaps
    if n_classes <= 20:
        cmap = colormaps['tab10' if n_classes <= 10 else 'tab20']
        return [cmap(i) for i in range(n_classes)]
    return [colormaps['turbo'](v) for v in np.linspace(0, 1, n_classes)]


def draw_feature_map(ax, xy, labels, classes, title):
    """Scatter ``xy`` (N x 2) on ``ax``, one colour per class of ``labels`` (N, indices into ``classes``)."""
    xy, labels = np.asarray(xy), np.asarray(labels)
    colours, size = class_colours(len(classes)), max(4, min(30, 3000 / max(1, len(xy))))
    for c, name in enumerate(classes):
        mask = labels == c
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colours[c], label=name, alpha=0.8, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def map_title(name, layer, n_val, knn):
    return (f'{name}, layer {layer}: {embedding_name()} of {n_val} val images\n'
            f'kNN top-1 {knn:.1f}% (k={KNN_K}, t={KNN_T}, val vs train)')


def encoder_panel(name, layer, parts, train, val, classes, seed=0):
    """(panel, kNN top-1 %) of one encoder: ``train``, ``val`` (features N x D, labels N). The panel (a dict of
    ``draw_feature_map``'s arguments) maps the val features as the kNN sees them (``knn_ready``)."""
    knn = knn_top1(*train, *val, len(classes), parts)
    xy = embed_2d(knn_ready(val[0], parts).numpy(), seed)
    return {'xy': xy, 'labels': np.asarray(val[1]), 'classes': list(classes),
            'title': map_title(name, layer, len(xy), knn)}, knn


def plot_format(path, flag='--plot'):
    """The format of a map's file from its name (png, pdf or svg), or a UserError."""
    fmt = os.path.splitext(path)[1].lstrip('.').lower()
    if fmt not in PLOT_FORMATS:
        raise UserError(f'{flag} {path}: give a .png, .pdf or .svg file')
    return fmt


def feature_map_figure(panels, path, flag='--plot'):
    """Draw ``panels`` (dicts of ``draw_feature_map``'s arguments) side by side, a class legend at the right, and
    write ``path`` (.png / .pdf / .svg; PANEL_INCHES x n + LEGEND_INCHES by PANEL_INCHES inches at DPI) atomically;
    the titles are also in its metadata ('Title', one line per panel)."""
    write_atomically(path, feature_map_writer(panels, path, flag), flag, advice=' (no existing file was changed)')
    return path


def feature_map_writer(panels, path, flag='--plot'):
    """``write(f)``: ``feature_map_figure``'s figure, in the format of ``path``'s suffix, to the open file ``f``."""
    from matplotlib.figure import Figure
    fmt = plot_format(path, flag)
    fig = Figure(figsize=(PANEL_INCHES * len(panels) + LEGEND_INCHES, PANEL_INCHES))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        draw_feature_map(ax, **panel)
    if len(panels[0]['classes']) <= MAX_LEGEND:
        fig.legend(*axes[0].get_legend_handles_labels(), loc='center right', fontsize=8, markerscale=1.5)
    fig.subplots_adjust(left=0.02, right=1 - (LEGEND_INCHES + 0.2) / fig.get_figwidth(), bottom=0.03, top=0.88,
                        wspace=0.05)
    titles = ' | '.join(panel['title'].replace('\n', '; ') for panel in panels)
    return lambda f: fig.savefig(f, format=fmt, dpi=DPI, metadata={'Title': titles})


def compare_encoders(checkpoints, dataset, data_folder, image_size, layer, path, seed=0, batch_size=128,
                     device='cpu'):
    """Write the val feature maps of several encoders side by side (``path``) and return [(name, kNN top-1 %)].
    ``checkpoints``: [(checkpoint path, name)]; the data set: RGB images (not multiview_folder) at ``image_size``."""
    sets = data_splits(dataset, data_folder, image_size)
    panels, results = [], []
    for ckpt, name in checkpoints:
        encoder = load_encoder(ckpt, device=device)
        train, val = (encoder_features(encoder, sets[s], layer, batch_size)[:2] for s in ('train', 'val'))
        panel, knn = encoder_panel(name, layer, view_parts(encoder), train, val, sets['train'].classes, seed)
        panels.append(panel)
        results.append((name, knn))
    feature_map_figure(panels, path)
    return results
