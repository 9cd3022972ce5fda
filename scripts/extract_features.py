"""Extract a pretrained encoder's features over a labelled data set, with the labels and file paths, and optionally
draw a 2-D map of the val features coloured by class, its title carrying the weighted kNN top-1 (k=200, t=0.07) of
val against train.

On the demo's checkpoints (bash scripts/demo.sh writes results/demo/*.pth):

    python scripts/extract_features.py --model_path results/demo/cmc.pth --dataset demo --layer 6 \\
        --out runs/feats/cmc.npz --plot runs/feats/cmc.png
    python scripts/extract_features.py --model_path results/demo/moco.pth --dataset demo --layer 6 \\
        --out runs/feats/moco.npz --split val

On an image folder (data/train/<class>/*.jpg and data/val/...), a ResNet-50 CMC checkpoint at 224 px:

    python scripts/extract_features.py --model_path ckpt_epoch_240.pth --dataset folder --data_folder data \\
        --image_size 224 --out feats.npz --plot feats.png

The .npz (np.load(path, allow_pickle=False)): ``features`` N x D float32 (layer 6: the pooled features, the views'
concatenated for CMC; layers 1..5 flattened C x h x w maps; 7 the embedding), ``labels`` N int64 (val's numbered as
train's), ``paths`` N str (the image files; ``<dataset>:<split>/<index>`` for in-memory sets), ``split`` N str,
``classes``, ``layer``, ``image_size``, ``info`` (the checkpoint's description as JSON: method, model, views, ...),
and, with --plot, ``knn_top1`` (the title's, unrounded). Every image is resized and centre-cropped as the linear probes
evaluate (--image_size, default the checkpoint's training size, or 224 for a checkpoint that records none: a line
says which), never augmented. --skip_bad_images leaves out the images that cannot be decoded (as in training).
--dataset multiview_folder: a CMC encoder reads its views' folders; an InsDis / MoCo encoder the rgb/ folders.

--plot needs --split both (the default) and labelled images: the kNN votes with the train features for the val ones
(engine.knn.knn_predict, each view's features L2-normalised first, as the kNN monitor does; no leave-one-out on one
split). The map is t-SNE (scikit-learn, PCA init, perplexity min(30, (N - 1) / 3), random_state --seed), or UMAP when
umap-learn is installed, of the val features as the kNN sees them (slow on a val split of tens of thousands of
images). Files are written atomically; an existing --out or --plot is refused unless --overwrite.
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np
import torch

from engine import flags
from engine.errors import UserError, run_main
from inputs.build import DATASET_NAMES
from pretrained import DEFAULT_LAYER
from pretrained import feature_map as fm
from pretrained.load import add_encoder_flags, load_from_flags
from pretrained.outputs import file_writer, refuse_outputs, write_outputs
from views import ViewStack
from views.flags import file_channels
from views.registry import RGB_FOLDER


def parse_args(argv=None):
    p = flags.ArgumentParser(description=__doc__.split('\n')[0])
    add_encoder_flags(p)
    p.add_argument('--dataset', required=True, choices=DATASET_NAMES)
    p.add_argument('--data_folder', default=None, help='path to data (demo: the bundled set if not given)')
    p.add_argument('--layer', type=int, default=DEFAULT_LAYER, help='6: pooled features (default); ResNets 1..7, '
                   'AlexNet 1..8')
    p.add_argument('--out', required=True, help='the .npz to write')
    p.add_argument('--plot', default=None, help='also draw the val feature map here (.png, .pdf or .svg)')
    p.add_argument('--split', choices=['train', 'val', 'both'], default='both')
    p.add_argument('--image_size', type=int, default=None, help='crop size (default: the checkpoint\'s)')
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--num_workers', type=int, default=2)
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    p.add_argument('--seed', type=int, default=0, help='random_state of the 2-D map')
    p.add_argument('--skip_bad_images', action='store_true',
                   help='skip (and count) images that cannot be decoded instead of stopping')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out / --plot')
    args = p.parse_args(argv)
    refuse_outputs([(path, flag) for flag, path in (('--out', args.out), ('--plot', args.plot)) if path is not None],
                   args.overwrite, keep=[args.model_path])
    if args.plot:
        fm.plot_format(args.plot)
    if args.plot and args.split != 'both':
        raise UserError(f'--plot needs --split both (the kNN in its title votes with train for val), not '
                        f'--split {args.split}')
    for name, value, fits, bound in (('batch_size', args.batch_size, args.batch_size > 0, 'positive'),
                                     ('num_workers', args.num_workers, args.num_workers >= 0, '>= 0'),
                                     ('image_size', args.image_size, args.image_size is None or args.image_size >= 32,
                                      'at least 32')):
        if not fits:
            raise UserError(f'--{name} must be {bound}, got {value}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device is visible; use --device cpu')
    return args


def item_paths(dataset, name, split, indices):
    """The file of each extracted item (a multiview instance: its first view folder's), or ``name:split/index``."""
    if hasattr(dataset, 'samples'):
        return [dataset.samples[i][0] for i in indices]
    if hasattr(dataset, 'paths'):
        return [dataset.paths[i][0] for i in indices]
    return [f'{name}:{split}/{i}' for i in indices]


def main(argv=None):
    args = parse_args(argv)
    device = 'cuda' if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()) else 'cpu'
    encoder = load_from_flags(args, device)
    info = encoder.info
    if not 1 <= args.layer <= encoder.last_layer:
        raise UserError(f'--layer {args.layer} is out of range for --model {info["model"]} (layers '
                        f'1..{encoder.last_layer})')
    multiview = args.dataset == 'multiview_folder'
    files = [entry['view'] for entry in info['preprocessing'] if entry['kind'] == 'file']
    if files and not multiview:
        raise UserError(f'{args.model_path} was trained on views read from files ({" ".join(files)}): give '
                        f'--dataset multiview_folder, whose view folders hold them')
    image_size = image_size_of(args, info)
    splits = ('train',) if args.split == 'train' else ('train', 'val')      # val's labels numbered as train's
    sets = fm.data_splits(args.dataset, args.data_folder, image_size, splits,
                          multiview_views(args, encoder, splits) if multiview else None,
                          skip_bad_images=args.skip_bad_images)
    wanted = ['train', 'val'] if args.split == 'both' else [args.split]
    unlabelled = {s: sum(t < 0 for t in sets[s].targets) for s in wanted}
    if args.plot and any(unlabelled.values()):
        raise UserError(f'--plot needs labelled images, but {" and ".join(f"{n} {s}" for s, n in unlabelled.items())}'
                        f' images have no label (-1); drop --plot, or give a labelled data set')
    view = ViewStack(info['views'], file_channels(info['views'], info['view_channels'])).to(device) \
        if multiview and encoder.is_cmc else None
    parts = {}
    for split in wanted:
        t0 = time.time()
        feats, labels, indices = fm.encoder_features(encoder, sets[split], args.layer, args.batch_size,
                                                     args.num_workers, view)
        parts[split] = (feats, labels, item_paths(sets[split], args.dataset, split, indices.tolist()))
        skipped = len(sets[split]) - len(feats)
        print(f'{split}: {len(feats)} images -> {tuple(feats.shape)} features at layer {args.layer} '
              f'({time.time() - t0:.1f} s){f"; skipped {skipped} undecodable (--skip_bad_images)" if skipped else ""}')
    arrays = npz_arrays(parts, sets['train'].classes, args.layer, image_size, info)
    if args.plot:
        name = f'{info["method"]} {info["model"]} ({os.path.basename(args.model_path)})'
        panel, knn = fm.encoder_panel(name, args.layer, fm.view_parts(encoder), parts['train'][:2], parts['val'][:2],
                                      sets['train'].classes, args.seed)
        arrays['knn_top1'] = np.float64(knn)
    writes = {args.out: file_writer(lambda f: np.savez(f, **arrays))}
    if args.plot:
        writes[args.plot] = file_writer(fm.feature_map_writer([panel], args.plot))
    write_outputs(writes, {args.out: '--out', args.plot: '--plot'})             # both or neither
    print(f'wrote {args.out}: {len(arrays["features"])} x {arrays["features"].shape[1]} features')
    if args.plot:
        print(f'wrote {args.plot}: {panel["title"].replace(chr(10), "; ")}')


def image_size_of(args, info):
    """--image_size, else the checkpoint's training size, saying where it came from (a checkpoint that does not record
    one gives 224, the reference's); refused where the model cannot take it."""
    size = args.image_size
    if size is None:
        size = info['image_size']
        if info.get('image_size_recorded', True):
            print(f'image size {size}: the checkpoint\'s training size (give --image_size for another)')
        else:
            print(f'image size {size}: the checkpoint does not record one; give --image_size if it was trained at '
                  f'another size')
    flags.refuse_small_images(info['model'], size)
    return size


def multiview_views(args, encoder, splits):
    """The views to read from --dataset multiview_folder: a CMC encoder's own; an InsDis / MoCo encoder takes RGB
    images, which are its rgb/ folders (read there as for a colour view, L: the loader gives the rgb files' 3 uint8
    channels, which the encoder preprocesses itself)."""
    if encoder.is_cmc:
        return encoder.info['views']
    for split in splits:
        root = os.path.join(args.data_folder or '', split)
        if os.path.isdir(root) and not os.path.isdir(os.path.join(root, RGB_FOLDER)):
            raise UserError(f'{root} has no {RGB_FOLDER}/ folder: a {encoder.info["method"]} encoder reads the RGB '
                            f'images of --dataset multiview_folder from <split>/{RGB_FOLDER}/<class>/ (its other '
                            f'view folders are for CMC encoders)')
    print(f'--dataset multiview_folder: a {encoder.info["method"]} encoder reads the RGB images of the {RGB_FOLDER}/ '
          f'folders (the other view folders are for CMC encoders)')
    return ['L']


def npz_arrays(parts, classes, layer, image_size, info):
    """The .npz's arrays from {split: (features N x D, labels N, paths N)}, rows in split order."""
    return {'features': torch.cat([p[0] for p in parts.values()]).numpy().astype(np.float32),
            'labels': torch.cat([p[1] for p in parts.values()]).numpy().astype(np.int64),
            'paths': np.array([path for p in parts.values() for path in p[2]], dtype=str),
            'split': np.array([s for s, p in parts.items() for _ in p[2]], dtype=str),
            'classes': np.array(list(classes), dtype=str), 'layer': np.int64(layer),
            'image_size': np.int64(image_size), 'info': np.array(json.dumps(info, default=str))}

if __name__ == '__main__':
    run_main(main)
