"""The tables and plots of scripts/findings.py: one section of results/findings.md per finding, between markers, so
each command rewrites only its own; mean +- sample standard deviation over the seeds stored."""
import os
import re
import statistics

import findings_styles as styles

TITLES = {
    'views': 'More views: the L encoder alone against the number of views (Tian et al. 2019, Sec. 4.3, Fig. 6)',
    'objective': 'Contrastive against predictive learning, same encoders and epochs (Tian et al. 2019, Sec. 3.1, '
                 'Table 4)',
    'protocol': 'Probe protocol: which evaluation separates a pretrained encoder from a random one',
    'styles': 'More views, each an artist\'s rendering: the L encoder against the number of views on the emoji styles '
              'data set (both objectives)',
}
COMMANDS = {'views': 'bash scripts/findings_views.sh', 'objective': 'bash scripts/findings_objective.sh',
            'protocol': 'python scripts/findings.py protocol', 'styles': 'bash scripts/findings_styles.sh'}
SEEDED_COMMANDS = {'views': 'SEEDS="0 1 2" bash scripts/findings_views.sh',
                   'objective': 'SEEDS="0 1 2" bash scripts/findings_objective.sh',
                   'protocol': 'python scripts/findings.py protocol --seeds 0 1 2',
                   'styles': 'SEEDS="0 1 2" bash scripts/findings_styles.sh'}
LABELS = {'knn L': 'kNN top-1 (L)', 'probe L': 'cached probe top-1 (L)', 'knn L+ab': 'kNN top-1 (L+ab)',
          'probe L+ab': 'cached probe top-1 (L+ab)', 'augmented probe L': 'augmented probe top-1 (L)',
          'knn L subcategory': 'kNN top-1 (L, subcategory)',
          'probe L subcategory': 'cached probe top-1 (L, subcategory)',
          'probe L -> fluent': 'probe on Fluent val (L)', 'probe L -> openmoji': 'probe on OpenMoji val (L)',
          'minutes': 'pretraining minutes'}


def cell(values):
    if len(values) == 1:
        return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}'


def measured(seeds, labels, minutes=False):
    """The metrics (LABELS' keys, in its order) that some stored seed holds for some run label; 'minutes' only when
    asked (the plots and the gains leave it out)."""
    return [m for m in LABELS if (minutes or m != 'minutes')
            and any(m in s['rows'].get(label, {}) for s in seeds for label in labels)]


def table(runs):
    """Markdown table: one row per run label, one column per metric, mean +- sd over the stored seeds."""
    seeds = list(runs.values())
    labels = list(seeds[0]['rows'])
    metrics = measured(seeds, labels, minutes=True)
    lines = ['| run | ' + ' | '.join(LABELS[m] for m in metrics) + ' |', '|---|' + '---:|' * len(metrics)]
    for label in labels:
        cells = []
        for metric in metrics:
            values = [seed['rows'][label][metric] for seed in seeds if metric in seed['rows'].get(label, {})]
            cells.append(cell(values) if values else '')
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_section(args, runs, baselines=None):
    """Rewrite this finding's section of findings.md and its PNG from ``runs`` ({seed key: {'rows', 'minutes'}});
    ``baselines`` ({row: {metric: top-1}}, seed-free): a second table (the styles finding's)."""
    name = args.finding + ('_smoke' if args.smoke else '')
    minutes = [run['minutes'] for run in runs.values()]
    body = (f'## {TITLES[args.finding]}\n\n'
            f'Command: `{COMMANDS[args.finding]}` (seeds: `{SEEDED_COMMANDS[args.finding]}`). '
            f'{len(runs)} run(s): {", ".join(runs)}; wall time per seed {cell(minutes)} min (2-core CPU, float32).'
            f'{" SMOKE MODE: numbers mean nothing." if args.smoke else ""}{styles_note(args)}\n\n{table(runs)}\n\n'
            f'{styles_gains(runs) if args.finding == "styles" else ""}'
            f'{baseline_table(baselines, runs) if baselines else ""}'
            f'![{args.finding}](findings_{name}.png)\n')
    path = os.path.join(args.results, 'findings.md')
    text = open(path).read() if os.path.isfile(path) else '# Multiview findings at demo scale\n\n'
    start, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    block = f'{start}\n{body}{end}'
    if start in text:
        text = re.sub(re.escape(start) + '.*?' + re.escape(end), lambda m: block, text, flags=re.S)
    else:
        text = text.rstrip('\n') + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(text)
    draw = plot_styles if args.finding == 'styles' else plot
    draw(os.path.join(args.results, f'findings_{name}.png'), runs)


def styles_note(args):
    if args.finding != 'styles':
        return ''
    counts = {labels: styles.label_counts(args.data_folder, labels) for labels in args.labels}

    def left_out(n):
        return f' ({n} val image{"s" * (n != 1)} of classes without a train image left out)' if n else ''
    sets = '; '.join(f'{labels}: {n} classes{left_out(left)}' for labels, (n, left) in counts.items())
    return (f' Data: {styles.shown_path(args.data_folder)}, {styles.IMAGE_SIZE} px, {args.epochs} epochs. '
            f'Label sets: {sets}. The L encoder is evaluated; "probe on Fluent / OpenMoji val": the category probe '
            f'trained on Google\'s train features, tested on that style\'s val images through the same L encoder.')


def baseline_table(baselines, runs):
    """The rows without pretraining (no seed, so one number each), in the columns of ``runs``' table."""
    labels = list(next(iter(runs.values()))['rows'])
    seeds = list(runs.values())
    metrics = measured(seeds, labels)
    lines = ['Without pretraining (no seed): the majority class, and L pixels of the encoders\' crop, each pixel '
             'standardised with train\'s mean and sd (the kNN above; the demo\'s cross-validated logistic regression, '
             '`pretrained/linear_eval.py`, in the probe columns).', '',
             '| baseline | ' + ' | '.join(LABELS[m] for m in metrics) + ' |', '|---|' + '---:|' * len(metrics)]
    for name, row in baselines.items():
        lines.append(f'| {name} | ' + ' | '.join(f'{row[m]:.1f}' if m in row else '' for m in metrics) + ' |')
    return '\n'.join(lines) + '\n\n'


def gain_cell(differences):
    """Paired differences over seeds as 'mean +- sd (mean/sd sd, positive/n)': how far a gain stands out of the
    seed-to-seed spread of that same gain, and on how many seeds it is a gain at all."""
    mean = statistics.mean(differences)
    positive = f'{sum(d > 0 for d in differences)}/{len(differences)}'
    if len(differences) < 2:
        return f'{mean:+.1f} ({positive})'
    sd = statistics.stdev(differences)
    ratio = f'{mean / sd:.1f} sd' if sd > 0 else 'sd 0'
    return f'{mean:+.1f} +- {sd:.1f} ({ratio}, {positive})'


def styles_gains(runs):
    """The styles finding's question in one table: each run with added views minus the same objective's 2-view
    (L, ab) run, seed by seed (paired: the same seed's data order and initialisation), per metric."""
    seeds = list(runs.values())
    labels = list(seeds[0]['rows'])
    metrics = measured(seeds, labels)
    lines = ['Gain over the same objective\'s 2 views (L, ab), paired by seed: mean +- sd of the per-seed '
             'differences (the mean in units of that sd; seeds on which it is a gain).', '',
             '| run | ' + ' | '.join(LABELS[m] for m in metrics) + ' |', '|---|' + '---:|' * len(metrics)]
    for label in labels:
        objective = label.split(',')[0]
        base = f'{objective}, L, ab'
        if label == base or base not in labels:
            continue
        cells = []
        for metric in metrics:
            pairs = [(s['rows'][label][metric], s['rows'][base][metric]) for s in seeds
                     if metric in s['rows'].get(label, {}) and metric in s['rows'].get(base, {})]
            cells.append(gain_cell([a - b for a, b in pairs]) if pairs else '')
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n\n'


def plot(path, runs):
    """Bars per run label and metric (mean over seeds, sd as error bars)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    seeds = list(runs.values())
    labels = list(seeds[0]['rows'])
    metrics = measured(seeds, labels)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        values = [[s['rows'][label][metric] for s in seeds if metric in s['rows'].get(label, {})] for label in labels]
        means = [statistics.mean(v) if v else 0 for v in values]
        errs = [statistics.stdev(v) if len(v) > 1 else 0 for v in values]
        ax.bar([i + k * width for i in range(len(labels))], means, width, yerr=errs, label=LABELS[metric])
    ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha='right', fontsize=8)
    ax.set_ylabel('val top-1 (%)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_styles(path, runs):
    """The styles finding: each metric against the number of views, one line per objective and paradigm (the 2-view
    run starts both paradigms' lines), mean over seeds with sd as error bars; random init as a dashed line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    seeds = list(runs.values())
    labels = list(seeds[0]['rows'])
    metrics = measured(seeds, labels)
    rows = 2 if len(metrics) > 3 else 1
    cols = -(-len(metrics) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.axis('off')
    shape = {label: (len(views), paradigm, objective)
             for smoke in (False, True) for label, views, paradigm, objective in styles.runs(smoke)}
    for ax, metric in zip(axes.flat, metrics):
        def stats(label):
            values = [s['rows'][label][metric] for s in seeds if metric in s['rows'].get(label, {})]
            return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        for objective in styles.OBJECTIVES:
            for paradigm in ('core', 'full'):
                on_line = [label for label in labels if label in shape and shape[label][2] == objective
                           and (shape[label][1] == paradigm or shape[label][0] == 2)]
                points = sorted((shape[label][0], *stats(label)) for label in on_line)
                if len(points) > 1:
                    x, y, err = zip(*points)
                    ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=f'{objective}, {paradigm}',
                                linestyle='-' if objective == 'contrastive' else ':')
        if 'random init' in labels:
            ax.axhline(stats('random init')[0], color='grey', linestyle='--', label='random init')
        ax.set_title(LABELS[metric], fontsize=8)
        ax.set_xlabel('views')
        ax.set_xticks([2, 3, 4])
    axes[0][0].set_ylabel('val top-1 (%)')
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
