"""Score pretrained encoders on folds of the demo's *train* split, never val: how the demo's recipe was chosen
(``scripts/run_demo.py``, its header lists what was tried and these scores).

    python bench/demo_recipe.py results/demo/cmc.pth results/demo/random.pth
    python bench/demo_recipe.py --image_size 32 runs/screen/cmc32_e120.pth runs/screen/random32.pth

For each checkpoint: its features at --layer over the train split, then 5 stratified folds (fixed seed): the weighted
kNN top-1 of each held-out fold against the other four (k=200, t=0.07, as the kNN monitor), and the demo's linear
probe (``pretrained.linear_eval``, one probe seed) trained on four folds and tested on the fifth; mean +- sd over the
folds. The held-out images were seen, without labels, in pretraining: fine for comparing recipes with one another,
not a substitute for the val split in a report.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from engine.errors import run_main  # noqa: E402
from pretrained import linear_eval  # noqa: E402
from pretrained.feature_map import data_splits, encoder_features, knn_top1, view_parts  # noqa: E402
from pretrained.load import load_encoder  # noqa: E402


def fold_scores(feats, labels, parts, n_classes, folds=5, seed=0):
    """[(kNN top-1, probe top-1)] per held-out fold of the train features (N x D), in %."""
    from sklearn.model_selection import StratifiedKFold
    scores = []
    for a, b in StratifiedKFold(folds, shuffle=True, random_state=seed).split(feats, labels):
        knn = knn_top1(feats[a], labels[a], feats[b], labels[b], n_classes, parts)
        result = linear_eval.probe(feats[a], labels[a], feats[b], labels[b], seeds=(seed,))
        scores.append((knn, result['mean']))
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('checkpoints', nargs='+')
    p.add_argument('--image_size', type=int, default=None, help='default: the size the checkpoint records')
    p.add_argument('--layer', type=int, default=6)
    args = p.parse_args(argv)
    print('| checkpoint | train-fold kNN top-1 | train-fold probe top-1 | seconds |')
    print('|---|---:|---:|---:|')
    for path in args.checkpoints:
        t0 = time.time()
        encoder = load_encoder(path)
        size = args.image_size or int(encoder.info.get('image_size') or 64)
        train = data_splits('demo', None, size, splits=('train',), say=lambda *a: None)['train']
        feats, labels, _ = encoder_features(encoder, train, args.layer)
        scores = np.array(fold_scores(feats.numpy(), labels.numpy(), view_parts(encoder), len(train.classes)))
        mean, sd = scores.mean(0), scores.std(0, ddof=1)
        print(f'| {path} | {mean[0]:.1f} +- {sd[0]:.1f} | {mean[1]:.1f} +- {sd[1]:.1f} | {time.time() - t0:.0f} |',
              flush=True)


if __name__ == '__main__':
    run_main(main)
