"""The tables and plots of scripts/findings.py: one section of results/findings.md per finding, between markers, so
each command rewrites only its own; mean +- sample standard deviation over the seeds stored."""
import os
import re
import statistics

TITLES = {
    'views': 'More views: the L encoder alone against the number of views (Tian et al. 2019, Sec. 4.3, Fig. 6)',
    'objective': 'Contrastive against predictive learning, same encoders and epochs (Tian et al. 2019, Sec. 3.1, '
                 'Table 4)',
    'protocol': 'Probe protocol: which evaluation separates a pretrained encoder from a random one',
}
COMMANDS = {'views': 'bash scripts/findings_views.sh', 'objective': 'bash scripts/findings_objective.sh',
            'protocol': 'python scripts/findings.py protocol'}
SEEDED_COMMANDS = {'views': 'SEEDS="0 1 2" bash scripts/findings_views.sh',
                   'objective': 'SEEDS="0 1 2" bash scripts/findings_objective.sh',
                   'protocol': 'python scripts/findings.py protocol --seeds 0 1 2'}
LABELS = {'knn L': 'kNN top-1 (L)', 'probe L': 'cached probe top-1 (L)', 'knn L+ab': 'kNN top-1 (L+ab)',
          'probe L+ab': 'cached probe top-1 (L+ab)', 'augmented probe L': 'augmented probe top-1 (L)',
          'minutes': 'pretraining minutes'}


def cell(values):
    if len(values) == 1:
        return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}'


def table(runs):
    """Markdown table: one row per run label, one column per metric, mean +- sd over the stored seeds."""
    seeds = list(runs.values())
    labels = list(seeds[0]['rows'])
    metrics = [m for m in LABELS if any(m in seed['rows'][label] for seed in seeds for label in labels)]
    lines = ['| run | ' + ' | '.join(LABELS[m] for m in metrics) + ' |', '|---|' + '---:|' * len(metrics)]
    for label in labels:
        cells = []
        for metric in metrics:
            values = [seed['rows'][label][metric] for seed in seeds if metric in seed['rows'].get(label, {})]
            cells.append(cell(values) if values else '')
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_section(args, runs):
    """Rewrite this finding's section of findings.md and its PNG from ``runs`` ({seed key: {'rows', 'minutes'}})."""
    name = args.finding + ('_smoke' if args.smoke else '')
    minutes = [run['minutes'] for run in runs.values()]
    body = (f'## {TITLES[args.finding]}\n\n'
            f'Command: `{COMMANDS[args.finding]}` (seeds: `{SEEDED_COMMANDS[args.finding]}`). '
            f'{len(runs)} run(s): {", ".join(runs)}; wall time per seed {cell(minutes)} min (2-core CPU, float32).'
            f'{" SMOKE MODE: numbers mean nothing." if args.smoke else ""}\n\n{table(runs)}\n\n'
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
    plot(os.path.join(args.results, f'findings_{name}.png'), runs)


def plot(path, runs):
    """Bars per run label and metric (mean over seeds, sd as error bars)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    seeds = list(runs.values())
    labels = list(seeds[0]['rows'])
    metrics = [m for m in LABELS if m != 'minutes' and any(m in s['rows'][label] for s in seeds for label in labels)]
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
