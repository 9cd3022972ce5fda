"""A linear probe that tells the truth on a small data set: the demo's evaluation protocol.

The reference's probe (``LinearProbing.py``, ``eval_moco_ins.py``) trains a linear layer by SGD for a fixed number of
epochs with no weight decay. On the demo's 1,528 train images the 512 features of a *random* ResNet let it reach
94-98% train accuracy and 56-63% on val: its score then says more about how much a linear layer can memorise of
random high-dimensional features, and about the probe's seed and the one 378-image val split, than about the
representation. This protocol is the transfer-learning standard instead (Kornblith et al., "Do Better ImageNet
Models Transfer Better?", CVPR 2019, Sec. 3; SimCLR, Chen et al. 2020, App. B.5):

- features standardised with the train split's mean and standard deviation (the role of the demo probe's ``--bn``);
- multinomial logistic regression with an L2 penalty (scikit-learn, L-BFGS: convex, so no initialisation or batch
  order to be lucky with);
- its strength C chosen *per encoder* by stratified k-fold cross-validation on the train split, from ``C_GRID``: the
  capacity each encoder's features get is the one that generalises on held-out train images, never chosen on val;
- repeated for several probe seeds, each drawing other folds (so another C may win): ``probe`` returns every seed's
  val accuracy, reported as mean and standard deviation;
- the val split's own noise: ``paired_margin`` bootstraps the val images, the same resample for both encoders, and
  gives the standard deviation of the difference in accuracy between two encoders.
"""
from typing import Dict, Sequence

import numpy as np

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)    # inverse L2 strength, log-spaced
FOLDS = 5
PROBE_SEEDS = (0, 1, 2)
MAX_ITER = 1000
BOOTSTRAPS = 2000


def standardise(train, *others):
    """Each feature centred and scaled by the train split's mean and standard deviation (constant features: by 1)."""
    train = np.asarray(train, dtype=np.float64)
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1
    return [(np.asarray(x, dtype=np.float64) - mean) / std for x in (train, *others)]


def _logistic(c):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=c, max_iter=MAX_ITER)


def _held_out(c, x, y, train, test):
    return float((_logistic(c).fit(x[train], y[train]).predict(x[test]) == y[test]).mean())


def choose_c(x, y, seed, grid=C_GRID, folds=FOLDS, n_jobs=1):
    """(C, {C: mean held-out accuracy}) of ``grid`` by stratified ``folds``-fold cross-validation on (x, y), folds
    shuffled by ``seed``; ties go to the smaller C (the stronger penalty). x: N x D standardised, y: N labels.
    ``n_jobs``: fits run in that many processes (joblib); the result is the same."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold
    folds = min(folds, int(np.bincount(y).min())) if len(y) else 0
    if folds < 2:
        raise ValueError('every class needs at least 2 train images to cross-validate the probe')
    split = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
    held_out = Parallel(n_jobs=n_jobs)(delayed(_held_out)(c, x, y, a, b) for c in grid for a, b in split)
    scores = {c: float(np.mean(held_out[i * len(split):(i + 1) * len(split)])) for i, c in enumerate(grid)}
    best = max(scores.values())
    return min(c for c, s in scores.items() if s == best), scores


def probe(train_x, train_y, val_x, val_y, seeds: Sequence[int] = PROBE_SEEDS, grid=C_GRID, n_jobs=1) -> Dict:
    """The protocol above for one encoder: train_x N x D and val_x M x D features, labels N and M (integers);
    ``n_jobs`` as ``choose_c``'s.

    Returns {'acc': [val top-1 (%) per seed], 'c': [C chosen per seed], 'correct': M floats, each image's fraction of
    seeds that classified it right (for ``paired_margin``: its mean is the mean accuracy), 'mean', 'sd' (over seeds;
    0 for one seed)}.
    """
    from threadpoolctl import threadpool_limits
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    train_x, val_x = standardise(train_x, val_x)
    fitted, cs, right = {}, [], []
    # One BLAS thread per fit (joblib's workers get one already): the fits are small, and BLAS threads contending with
    # torch's OpenMP threads made the in-process fits of bench/demo_recipe.py ~30x slower on 2 cores (13+ minutes
    # for a checkpoint that takes 26 s this way).
    with threadpool_limits(limits=1):
        for seed in seeds:
            c, _ = choose_c(train_x, train_y, seed, grid, n_jobs=n_jobs)
            if c not in fitted:                        # the final fit depends only on C
                fitted[c] = _logistic(c).fit(train_x, train_y).predict(val_x) == val_y
            cs.append(c)
            right.append(fitted[c])
    acc = [100 * float(r.mean()) for r in right]
    return {'acc': acc, 'c': cs, 'correct': np.mean(right, axis=0), 'mean': float(np.mean(acc)),
            'sd': float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0}


def paired_margin(correct_a, correct_b, n=BOOTSTRAPS, seed=0):
    """(margin, sd) in points: accuracy of a minus b on the same M val images (per image: right or not, or the
    fraction of probe seeds that got it right), and the standard deviation of that difference over ``n`` bootstrap
    resamples of the images, the same resample for both."""
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f'paired_margin needs two equal, non-empty vectors, got {a.shape} and {b.shape}')
    rows = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))    # n x M
    diffs = (a[rows] - b[rows]).mean(1) * 100
    return float((a - b).mean() * 100), float(diffs.std(ddof=1))
