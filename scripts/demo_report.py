"""The demo's evaluation and report (``scripts/run_demo.py``): every encoder's features through the demo's probe
(``pretrained.linear_eval``: mean and spread over probe seeds, margins over the random encoder with the val split's
bootstrap spread), the table beside today's cached probe and the kNN, the mean over seeds' tables, and the figure:
probe accuracy, pretraining loss, kNN per epoch, and the val feature maps of CMC and its random encoder."""
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pretrained import linear_eval  # noqa: E402
from pretrained.feature_map import (data_splits, draw_feature_map, encoder_features, encoder_panel,  # noqa: E402
                                    feature_map_figure, view_parts)
from pretrained.load import load_encoder  # noqa: E402

RANDOM_OF = {'cmc': 'random', 'insdis': 'random_rgb', 'moco': 'random_rgb'}
HEADER = ('| method | probe top-1 (mean +- sd, probe seeds) | vs random (+- sd, val bootstrap) | cached probe top-1 '
          '| vs random | kNN top-1 | vs random | minutes |')


def probe_features(out, methods, data_folder, sizes, layer, seeds, grid, n_jobs=1, say=print):
    """Every <out>/<method>.pth through the demo's probe at ``layer``, each at its own image size (``sizes``:
    {method: px}). Returns ({method: (train (features, labels), val (features, labels), parts)},
    {method: linear_eval.probe's result}, the class names, val's majority-class top-1 in %)."""
    import numpy as np
    splits, features, results = {}, {}, {}
    for method, label, _ in methods:
        if sizes[method] not in splits:
            splits[sizes[method]] = data_splits('demo', data_folder, sizes[method], say=lambda *a: None)
        sets = splits[sizes[method]]
        encoder = load_encoder(os.path.join(out, f'{method}.pth'))
        train, val = (encoder_features(encoder, sets[s], layer)[:2] for s in ('train', 'val'))
        features[method] = (train, val, view_parts(encoder))
        results[method] = linear_eval.probe(train[0].numpy(), train[1].numpy(), val[0].numpy(), val[1].numpy(),
                                            seeds=seeds, grid=grid, n_jobs=n_jobs)
        r = results[method]
        say(f'      {label}: probe top-1 {r["mean"]:.1f} +- {r["sd"]:.1f} (C {", ".join(map(str, r["c"]))})')
    val_labels = next(iter(features.values()))[1][1].numpy()
    majority = 100 * float(np.bincount(val_labels).max()) / len(val_labels)
    return features, results, sets['train'].classes, majority


def table_rows(methods, results, cached, knn, minutes):
    """The table's rows (strings): margins against each method's random encoder, the demo probe's from the mean over
    probe seeds of each val image's result (``linear_eval.probe``'s 'correct')."""
    rows = []
    for method, label, _ in methods:
        r, partner = results[method], RANDOM_OF.get(method)
        cells = [f'{r["mean"]:.1f} +- {r["sd"]:.1f}']
        if partner:
            margin, sd = linear_eval.paired_margin(r['correct'], results[partner]['correct'])
            cells += [f'{margin:+.1f} +- {sd:.1f}', f'{cached[method]:.1f}', f'{cached[method] - cached[partner]:+.1f}',
                      f'{knn[method]:.1f}', f'{knn[method] - knn[partner]:+.1f}']
        else:
            cells += ['', f'{cached[method]:.1f}', '', f'{knn[method]:.1f}', '']
        rows.append(f'| {label} | ' + ' | '.join(cells) + f' | {minutes.get(method, 0):.1f} |')
    return rows


def table(rows):
    """The markdown table: HEADER, its rule, ``rows``."""
    return '\n'.join([HEADER, '|---|' + '---:|' * (HEADER.count('|') - 2), *rows])


def summarise(paths):
    """Mean and standard deviation over several runs' tables, per method and column (each cell's first number; a
    margin keeps its sign). A file that cannot be read, or holds no row of this table, is a UserError."""
    from engine.errors import UserError
    runs, columns = {}, HEADER.count('|') - 1
    for path in paths:
        try:
            lines = open(path).read().splitlines()
        except OSError as e:
            raise UserError(f'--summarise {path}: {e.strerror or e}; give the .md tables the demo wrote')
        found = 0
        for line in lines:
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if line.startswith('| ') and not line.startswith('| method') and len(cells) == columns:
                runs.setdefault(cells[0], []).append(cells[1:])
                found += 1
        if not found:
            raise UserError(f'--summarise {path}: no row of the demo\'s table ({HEADER[:40]}...); tables of the demo '
                            f'before 87b495b have other columns')
    lines = [f'Mean +- standard deviation over {len(paths)} runs (each cell: its first number; n: runs with the row):',
             '', HEADER + ' n |', '|---|' + '---:|' * columns]
    for label, rows in runs.items():
        cells = []
        for column in zip(*rows):
            values = [_first_number(c) for c in column if _first_number(c) is not None]
            signed = '+' if any(c.startswith(('+', '-')) for c in column) else ''
            sd = f' +- {statistics.stdev(values):.1f}' if len(values) > 1 else ''
            cells.append(f'{statistics.mean(values):{signed}.1f}{sd}' if values else '')
        lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {len(rows)} |')
    return '\n'.join(lines)


def _first_number(cell):
    m = re.match(r'[+-]?\d+(?:\.\d+)?', cell)
    return float(m.group(0)) if m else None


def scalar_curve(tb_folder, tags):
    """(steps, the sum of ``tags``' values per step) from a run's TensorBoard events; ([], []) if a tag is absent."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(tb_folder)
    acc.Reload()
    if not all(t in acc.Tags().get('scalars', []) for t in tags):
        return [], []
    series = [acc.Scalars(t) for t in tags]
    return [e.step for e in series[0]], [sum(s[i].value for s in series) for i in range(len(series[0]))]


def draw_figure(path, methods, results, cached, losses, knn_curves, knn, map_panels, majority):
    """<out>.png: probe top-1 per method (the demo's probe with its spread over probe seeds, today's cached probe
    as a marker), the pretraining losses, the kNN per epoch against each random encoder's, and the val feature
    maps of CMC and its random encoder."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(16, 10))
    grid = fig.add_gridspec(2, 6, height_ratios=[1, 1.25])
    bars, loss, curves = (fig.add_subplot(grid[0, 2 * i:2 * i + 2]) for i in range(3))
    labels = [label for _, label, _ in methods][::-1]
    keys = [m for m, _, _ in methods][::-1]
    bars.barh(labels, [results[m]['mean'] for m in keys], xerr=[results[m]['sd'] for m in keys], color='tab:blue',
              label='demo probe (mean, sd over probe seeds)')
    bars.plot([cached[m] for m in keys], labels, 'k|', markersize=14, label='cached probe (reference)')
    bars.axvline(majority, color='grey', ls='--', label='majority class')
    bars.set_xlabel('val top-1 (%)')
    bars.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7)
    order = [m for m, _, _ in methods]      # the same colour per method in every run, whichever lane ends first
    for method in sorted(losses, key=order.index):
        loss.plot(*losses[method], label=method)
    loss.set_xlabel('epoch')
    loss.set_ylabel('pretraining loss')
    loss.legend(fontsize=8)
    for method in sorted(knn_curves, key=order.index):
        curves.plot(*knn_curves[method], marker='o', markersize=3, label=method)
    for random, style in (('random', ':'), ('random_rgb', '--')):
        name = next(label for m, label, _ in methods if m == random)
        curves.axhline(knn[random], color='grey', ls=style, lw=1, label=name)
    curves.set_xlabel('epoch')
    curves.set_ylabel('kNN top-1 on val (%)')
    curves.legend(fontsize=8)
    maps = [fig.add_subplot(grid[1, 3 * i:3 * i + 3]) for i in range(len(map_panels))]
    for ax, panel in zip(maps, map_panels):
        draw_feature_map(ax, **panel)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.legend(*maps[0].get_legend_handles_labels(), loc='lower right', fontsize=8, markerscale=2)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def feature_maps(features, methods, classes, layer, path, seed):
    """The val feature maps of CMC and its random encoder (``pretrained.feature_map``), written to ``path`` too."""
    labels = {m: label for m, label, _ in methods}
    panels = [encoder_panel(labels[m], layer, features[m][2], features[m][0], features[m][1], classes, seed)[0]
              for m in ('cmc', 'random')]
    feature_map_figure(panels, path)
    return panels
