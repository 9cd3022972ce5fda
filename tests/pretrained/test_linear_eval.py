"""The demo's probe (pretrained/linear_eval.py) against scikit-learn's own cross-validation and formulas."""
import numpy as np
import pytest

from pretrained import linear_eval


def blobs(n_per_class=20, classes=3, dim=8, seed=0, spread=2.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 1.5
    x = np.concatenate([c + rng.normal(0, spread, (n_per_class, dim)) for c in centres]) * 7 + 3   # off scale
    y = np.repeat(np.arange(classes), n_per_class)
    return x, y


def test_choose_c_is_scikit_learns_stratified_cross_validation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import StandardScaler
    x, y = blobs()
    x = StandardScaler().fit_transform(x)
    grid = (0.001, 0.01, 0.1, 1.0)
    c, scores = linear_eval.choose_c(x, y, seed=3, grid=grid)
    for g in grid:
        folds = StratifiedKFold(5, shuffle=True, random_state=3)
        expected = cross_val_score(LogisticRegression(C=g, max_iter=1000), x, y, cv=folds).mean()
        assert scores[g] == pytest.approx(expected, abs=1e-12)
    best = max(scores.values())
    assert c == min(g for g in grid if scores[g] == best)
    assert linear_eval.choose_c(x, y, seed=3, grid=grid, n_jobs=2) == (c, scores)


def test_probe_fits_standardised_features_with_the_chosen_c_and_reports_seeds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    x, y = blobs(seed=1)
    xv, yv = blobs(n_per_class=10, seed=1)[0][::-1], blobs(n_per_class=10, seed=1)[1][::-1]
    result = linear_eval.probe(x, y, xv, yv, seeds=(0, 1, 2), grid=(0.01, 0.1, 1.0))
    scaler = StandardScaler().fit(x)
    for seed, c, acc in zip((0, 1, 2), result['c'], result['acc']):
        assert c == linear_eval.choose_c(scaler.transform(x), y, seed, (0.01, 0.1, 1.0))[0]
        predicted = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x), y).predict(scaler.transform(xv))
        assert acc == pytest.approx(100 * (predicted == yv).mean())
    assert result['mean'] == pytest.approx(np.mean(result['acc']))
    assert result['sd'] == pytest.approx(np.std(result['acc'], ddof=1))
    # each image's fraction of seeds right: its mean is the mean accuracy, so a margin matches the column
    assert result['correct'].shape == yv.shape
    assert 100 * result['correct'].mean() == pytest.approx(result['mean'])


def test_paired_margin_is_the_difference_and_its_bootstrap_sd_matches_the_formula():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.7
    b = rng.random(400) < 0.6
    margin, sd = linear_eval.paired_margin(a, b, n=4000, seed=1)
    assert margin == pytest.approx(100 * (a.mean() - b.mean()))
    d = a.astype(float) - b.astype(float)
    assert sd == pytest.approx(100 * d.std() / np.sqrt(len(d)), rel=0.08)      # sd of a mean of 400 paired diffs
    assert linear_eval.paired_margin(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match='equal'):
        linear_eval.paired_margin(a, b[:10])


def test_a_class_with_one_train_image_is_an_error_not_a_crash():
    x, y = blobs(n_per_class=4)
    with pytest.raises(ValueError, match='at least 2 train images'):
        linear_eval.probe(x[:9], np.array([0, 0, 0, 0, 1, 1, 1, 1, 2]), x, np.zeros(len(x), int), seeds=(0,))
