"""Negative-sampler benchmark at ImageNet scale (N = 1,281,167, K = 16384, B = 256).

Compares building and drawing with
  - the reference path: a pure-Python alias table built item by item (written out below as the reference did it,
    on uniform weights, which is how it sampled uniformly),
  - our uniform sampler (no table at all) and our vectorised AliasMethod.
The reference build takes tens of seconds; --skip-reference leaves it out.

    .venv/bin/python bench/bench_sampler.py [--device cpu|cuda] [--skip-reference]
"""
import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from NCE.alias_multinomial import AliasMethod, sample_contrast_indices  # noqa: E402

NUM_ITEMS, NUM_NEGATIVES, BATCH = 1_281_167, 16384, 256


def reference_alias_table(probs):
    """The reference's construction, item by item in Python (kept only as the baseline being measured)."""
    probs = probs / probs.sum()
    n = len(probs)
    prob = torch.zeros(n)
    alias = torch.LongTensor([0] * n)
    smaller, larger = [], []
    for kk, p in enumerate(probs):
        prob[kk] = n * p
        (smaller if prob[kk] < 1.0 else larger).append(kk)
    while smaller and larger:
        small, large = smaller.pop(), larger.pop()
        alias[small] = large
        prob[large] = (prob[large] - 1.0) + prob[small]
        (smaller if prob[large] < 1.0 else larger).append(large)
    for last_one in smaller + larger:
        prob[last_one] = 1
    return prob, alias


def timed(fn, device, repeat=1):
    """Best wall time of `repeat` runs of fn (synchronising the device around each), and fn's last result."""
    best, result = float('inf'), None
    for _ in range(repeat):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--skip-reference', action='store_true', help='skip the slow pure-Python build')
    parser.add_argument('--repeat', type=int, default=5, help='repeats of the fast measurements (best is shown)')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, one repeat: checks that it runs')
    args = parser.parse_args()
    if args.smoke:                         # N = 1,000, K = 16, B = 4: a second, no timing claims
        global NUM_ITEMS, NUM_NEGATIVES, BATCH
        NUM_ITEMS, NUM_NEGATIVES, BATCH, args.repeat = 1000, 16, 4, 1
    device = torch.device(args.device)
    torch.manual_seed(0)
    uniform = torch.ones(NUM_ITEMS)
    labels = torch.randint(0, NUM_ITEMS, (BATCH,), device=device)
    draws = BATCH * (NUM_NEGATIVES + 1)
    print(f"N = {NUM_ITEMS:,}, K = {NUM_NEGATIVES}, B = {BATCH}, device = {device}")

    build_ours_alias, table = timed(lambda: AliasMethod(uniform).to(device), device, args.repeat)
    skewed = torch.rand(NUM_ITEMS) ** 4
    build_ours_skewed, _ = timed(lambda: AliasMethod(skewed), torch.device('cpu'), args.repeat)
    draw_alias, _ = timed(lambda: table.draw(draws).view(BATCH, -1), device, args.repeat)
    draw_uniform, idx = timed(lambda: sample_contrast_indices(labels, NUM_NEGATIVES, NUM_ITEMS), device, args.repeat)
    assert idx.shape == (BATCH, NUM_NEGATIVES + 1) and (idx[:, 1:] != labels[:, None]).all()

    if args.skip_reference:
        build_reference = float('nan')
    else:
        build_reference, (ref_prob, ref_alias) = timed(lambda: reference_alias_table(uniform), torch.device('cpu'))
        assert torch.all(ref_prob == 1)  # uniform weights: every column keeps itself

    rows = [
        ('build: reference pure-Python alias table (uniform)', build_reference),
        ('build: our uniform sampler (no table)', 0.0),
        ('build: our vectorised AliasMethod (uniform)', build_ours_alias),
        ('build: our vectorised AliasMethod (skewed, CPU)', build_ours_skewed),
        (f'draw {BATCH} x {NUM_NEGATIVES + 1}: alias table (reference draw)', draw_alias),
        (f'draw {BATCH} x {NUM_NEGATIVES + 1}: our uniform sampler', draw_uniform),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  {'seconds':>10}  {'reference / this':>16}")
    for name, seconds in rows:
        baseline = build_reference if name.startswith('build') else draw_alias
        ratio = f"{baseline / seconds:16.1f}" if seconds > 0 and baseline == baseline else f"{'n/a':>16}"
        print(f"{name:{width}}  {seconds:10.4f}  {ratio}")


if __name__ == '__main__':
    main()
