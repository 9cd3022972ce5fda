"""The CMC paper's multiview findings at demo scale on the CPU (Tian et al. 2019, Sec. 4.3 and Fig. 2 / Table 4):

  views      probe quality of the L encoder alone against the number of views (2, 3, 4), core and full paradigms;
  objective  contrastive against predictive (cross-view L2 prediction), the same encoders and epochs;
  protocol   which evaluation separates a pretrained encoder from a random one best on this data: the cached
             centre-crop probe, the reference's augmented probe, or the weighted kNN;
  styles     the same growing views on a real multiview data set, each emoji drawn by three artists
             (scripts/findings_styles.py, data/styles32), both objectives, two label sets, cross-style transfer.

Each run pretrains with train_CMC.py on the bundled emoji set (the demo's recipe: resnet18v1, 64 px, batch 64,
nce_k 1024, softmax, nce_t 0.1, lr 0.03), then evaluates the L encoder (and both views for the objective) with the
kNN (k=200, t=0.07, layer-6 features) and the cached linear probe (layer 6, --bn, 30 epochs). Per-seed numbers are
kept in results/findings_<section>.json, so seeds run later join the table (mean +- sd); each section of
results/findings.md (between its markers) and results/findings_<section>.png are rewritten by their command;
``--report`` rewrites them from the stored seeds alone (e.g. ``bash scripts/findings_styles.sh --report``).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import findings_styles as styles  # noqa: E402  (scripts/)

MODEL = 'resnet18v1'
RECIPE = ['--model', MODEL, '--batch_size', '64', '--nce_k', '1024', '--softmax', '--nce_t', '0.1',
          '--learning_rate', '0.03']
SMOKE_RECIPE = ['--model', MODEL, '--batch_size', '8', '--nce_k', '8', '--softmax', '--nce_t', '0.1',
                '--learning_rate', '0.03']
# Extra colour views: S (HSV saturation) and H (hue) are non-linear functions of RGB that neither L nor ab holds as a
# channel; Cb / Cr would be near-linear mixtures of L and ab, close to repeating them.
VIEW_RUNS = [('2 views (L, ab)', ['L', 'ab'], 'core'), ('3 views (+S), core', ['L', 'ab', 'S'], 'core'),
             ('3 views (+S), full', ['L', 'ab', 'S'], 'full'), ('4 views (+S, H), core', ['L', 'ab', 'S', 'H'], 'core'),
             ('4 views (+S, H), full', ['L', 'ab', 'S', 'H'], 'full')]
OBJECTIVE_RUNS = [('contrastive', ['L', 'ab'], 'contrastive'), ('predictive', ['L', 'ab'], 'predictive')]
EPOCHS = {'views': 8, 'objective': 20, 'protocol': 20, 'styles': 20}
PROBE_EPOCHS, AUGMENTED_PROBE_EPOCHS = 30, 10
BASELINES = 'baselines without pretraining'         # styles: the stored rows of findings_styles.pixel_baselines


def parse_args(argv=None):
    from engine.flags import ArgumentParser
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('finding', choices=['views', 'objective', 'protocol', 'styles'])
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--epochs', type=int, default=None,
                   help='pretraining epochs (default: views 8, objective 20, styles 20)')
    p.add_argument('--checkpoint', default=None, help='protocol: an L | ab checkpoint to measure instead of '
                   'pretraining one (e.g. the objective finding\'s contrastive run, same recipe)')
    p.add_argument('--smoke', action='store_true', help='1 epoch everywhere, batch 8 (tests, with --dataset folder)')
    p.add_argument('--dataset', default='demo', help='styles: always multiview_folder')
    p.add_argument('--data_folder', default=None, help=f'styles: default {styles.DATA_FOLDER}')
    p.add_argument('--labels', nargs='+', choices=styles.LABEL_SETS, default=list(styles.LABEL_SETS),
                   help='styles: the label sets evaluated (class folders: the 9 categories; labels.csv: subcategory)')
    p.add_argument('--results', default=os.path.join(ROOT, 'results'), help='where findings.md, .json, .png go')
    p.add_argument('--work', default=None, help='checkpoints and logs (default /tmp/cmc_findings/<finding>)')
    p.add_argument('--report', action='store_true', help='run nothing: rewrite the section of results/findings.md '
                   'and its PNG from the seeds stored in results/findings_<finding>.json (styles: computing its pixel '
                   'baselines first if they are not stored)')
    p.add_argument('--lanes', type=int, default=1, help='runs side by side, each on one thread (as the demo\'s lanes: '
                   'more work per core on 2 cores); 1: one run at a time on all threads, as the README\'s tables ran')
    args = p.parse_args(argv)
    if args.lanes < 1 or (args.smoke and args.lanes > 1):
        p.error('--lanes must be at least 1, and 1 with --smoke (its runs share this process)')
    if args.epochs is not None and args.epochs < 1:
        p.error(f'--epochs {args.epochs}: give at least 1')
    args.epochs = args.epochs if args.epochs is not None else (1 if args.smoke else EPOCHS[args.finding])
    args.work = args.work or os.path.join('/tmp/cmc_findings', args.finding)
    args.image_size = 64
    if args.finding == 'styles':
        args.dataset, args.image_size = 'multiview_folder', styles.IMAGE_SIZE
        args.data_folder = args.data_folder or styles.DATA_FOLDER
    return args


def run(args, script_args, log):
    """One script as a user runs it; its output goes to log; a failure stops with the log's tail."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, 'w') as f:
        if args.smoke:
            code = run_here(script_args, f)
        else:
            env = {**os.environ, 'OMP_NUM_THREADS': '1'} if args.lanes > 1 else None
            code = subprocess.call([sys.executable, *script_args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                   env=env)
    if code:
        raise SystemExit(f'failed ({code}): {" ".join(script_args[:1])}; see {log}:\n' + open(log).read()[-800:])


def run_here(script_args, f):
    """--smoke: the script's main() with the same arguments in this process, as ``python script.py`` runs it
    (errors.run_main), its output to the open log ``f``; returns the exit status. Starting Python and importing torch
    for each of a smoke run's ten scripts costs more than their work (tests run the smoke mode)."""
    import contextlib
    import importlib
    import traceback
    from engine import errors
    module = importlib.import_module(os.path.basename(script_args[0])[:-len('.py')])
    cwd = os.getcwd()
    with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            os.chdir(ROOT)                       # as the subprocess's cwd=ROOT: relative paths mean the same
            errors.run_main(module.main, list(script_args[1:]))
        except SystemExit as e:
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)   # as the interpreter prints sys.exit('message')
            return e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            os.chdir(cwd)
            sys.stdout.flush()
            sys.stderr.flush()
    return 0


def data_flags(args, data_folder=None):
    folder = data_folder or args.data_folder
    return ['--dataset', args.dataset, '--image_size', str(args.image_size), '--num_workers', '0', '--print_freq',
            '1000'] + (['--data_folder', folder] if folder else [])


def pretrain(args, seed, name, views, paradigm='core', objective='contrastive'):
    """train_CMC.py for one configuration; returns (checkpoint path, minutes)."""
    out = os.path.join(args.work, f'seed{seed}', name)
    t0 = time.time()
    run(args, ['train_CMC.py', *data_flags(args), *(SMOKE_RECIPE if args.smoke else RECIPE), '--seed', str(seed),
               '--views', *views, '--paradigm', paradigm, '--objective', objective, '--epochs', str(args.epochs),
               '--knn_freq', '0', '--overwrite', '--model_path', os.path.join(out, 'runs'),
               '--tb_path', os.path.join(out, 'tb')], os.path.join(out, 'pretrain.log'))
    (ckpt,) = glob.glob(os.path.join(out, 'runs', '*', 'current.pth'))
    return ckpt, (time.time() - t0) / 60


def random_encoder(args, seed):
    """A randomly initialised L | ab encoder, saved in the pretraining format (what a probe of 0 epochs sees)."""
    import torch
    from engine import checkpoint
    from models import build_cmc_model
    path = os.path.join(args.work, f'seed{seed}', 'random.pth')
    torch.manual_seed(seed)
    model = build_cmc_model(MODEL, 128, (1, 2), ('L', 'ab'))
    checkpoint.save_checkpoint({'opt': {'model': MODEL, 'feat_dim': 128, 'views': ['L', 'ab'], 'view_channels': [1, 2],
                                        'seed': seed, 'note': 'random initialisation'},
                                'model': model.state_dict(), 'epoch': 0}, path)
    return path


def knn_top1(args, ckpt_path, probe_views):
    """Weighted kNN top-1 (k=200, t=0.07) of the probed views' layer-6 features, train split -> val split."""
    import torch
    from views import ViewStack
    from views.flags import key_names
    from dataset import build_dataset, eval_transform
    from engine import checkpoint, data, knn, runtime
    from models import build_cmc_model
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    views, channels = ckpt['opt']['views'], ckpt['opt']['view_channels']
    model = build_cmc_model(MODEL, ckpt['opt'].get('feat_dim', 128), channels, key_names(views))
    model.load_state_dict(ckpt['model'])
    model.eval()
    stack, picked = ViewStack(views), [views.index(v) for v in probe_views]

    def encode(x):
        feats = model(stack(x), 6)
        return torch.cat([torch.nn.functional.normalize(feats[i], dim=1) for i in picked], dim=1)

    opt = argparse.Namespace(batch_size=128, num_workers=0)
    sets = [build_dataset(args.dataset, args.data_folder, split, eval_transform(64)) for split in ('train', 'val')]
    loaders = [data.eval_loader(s, opt) for s in sets]
    return knn.knn_accuracy(encode, *loaders, n_classes=len(sets[0].classes),
                            rt=runtime.Runtime(device=torch.device('cpu')))


def probe_top1(args, seed, ckpt_path, probe_views, name, cached=True, data_folder=None):
    """LinearProbing.py on the probed views (layer 6, --bn); the final epoch's val top-1 (not the best over epochs).
    ``data_folder``: another data set than --data_folder (the styles finding's label trees)."""
    from engine import checkpoint
    epochs = 1 if args.smoke else (PROBE_EPOCHS if cached else AUGMENTED_PROBE_EPOCHS)
    out = os.path.join(args.work, f'seed{seed}', 'probe', name)
    run(args, ['LinearProbing.py', *data_flags(args, data_folder), '--seed', str(seed), '--model', MODEL,
               '--layer', '6', '--learning_rate', '0.1', '--bn', '--model_path', ckpt_path, '--epochs', str(epochs),
               '--batch_size', '8' if args.smoke else '128', '--overwrite',
               '--lr_decay_epochs', f'{max(1, int(epochs * 0.6))},{max(1, int(epochs * 0.8))}',
               '--probe_views', *probe_views, '--save_path', out, '--tb_path', os.path.join(out, 'tb'),
               *(['--cache_features'] if cached else [])], os.path.join(out, 'probe.log'))
    (final,) = glob.glob(os.path.join(out, '*', 'current.pth'))
    return checkpoint.load_checkpoint(final)['last_acc1']


def evaluate(args, seed, ckpt, name, probe_sets):
    """{'knn <views>': top-1, 'probe <views>': top-1} for each set of probed views."""
    row = {}
    for views in probe_sets:
        label = '+'.join(views)
        row[f'knn {label}'] = knn_top1(args, ckpt, views)
        row[f'probe {label}'] = probe_top1(args, seed, ckpt, views, f'{name}_{label}')
    return row


def in_lanes(args, job, items):
    """[job(item) for item in items], ``args.lanes`` at a time (threads that each wait on a subprocess), in order."""
    if args.lanes == 1:
        return [job(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(args.lanes) as pool:
        return list(pool.map(job, items))


def run_seed(args, seed):
    """All the runs of one seed: {run label: {metric: value}}."""
    rows = {}
    if args.finding == 'views':
        def views_run(run):
            label, views, paradigm = run
            ckpt, minutes = pretrain(args, seed, '_'.join(views) + '_' + paradigm, views, paradigm)
            row = {**evaluate(args, seed, ckpt, label.split()[0] + paradigm, [['L']]), 'minutes': minutes}
            say(f'seed {seed} {label}: {row}')
            return label, row
        rows.update(in_lanes(args, views_run, VIEW_RUNS[:1] + VIEW_RUNS[2:3] if args.smoke else VIEW_RUNS))
        rows['random init'] = evaluate(args, seed, random_encoder(args, seed), 'random', [['L']])
    elif args.finding == 'styles':
        rows = styles_seed(args, seed)
    elif args.finding == 'objective':
        probe_sets = [['L']] if args.smoke else [['L'], ['L', 'ab']]

        def objective_run(run):
            label, views, objective = run
            ckpt, minutes = pretrain(args, seed, objective, views, objective=objective)
            row = {**evaluate(args, seed, ckpt, objective, probe_sets), 'minutes': minutes}
            say(f'seed {seed} {label}: {row}')
            return label, row
        rows.update(in_lanes(args, objective_run, OBJECTIVE_RUNS))
        rows['random init'] = evaluate(args, seed, random_encoder(args, seed), 'random', probe_sets[:1])
    else:
        ckpt = args.checkpoint or pretrain(args, seed, 'contrastive', ['L', 'ab'])[0]
        for label, path in (('CMC (L, ab)', ckpt), ('random init', random_encoder(args, seed))):
            t0 = time.time()
            rows[label] = {'knn L': knn_top1(args, path, ['L']),
                           'probe L': probe_top1(args, seed, path, ['L'], label[:3] + '_cached'),
                           'augmented probe L': probe_top1(args, seed, path, ['L'], label[:3] + '_aug', cached=False)}
            say(f'seed {seed} {label}: {rows[label]} ({(time.time() - t0) / 60:.1f} min)')
    return rows


def styles_seed(args, seed):
    """The styles finding's runs of one seed (scripts/findings_styles.py): {row label: {metric: top-1, 'minutes'}}."""
    trees = styles.build_trees(args.data_folder, os.path.join(args.work, f'seed{seed}'), args.labels)

    def probe(ckpt, tree, name):
        return probe_top1(args, seed, ckpt, ['L'], name, data_folder=tree)

    def styles_run(run):
        label, views, paradigm, objective = run
        name = f'{objective}_{"_".join(views)}_{paradigm}'
        ckpt, minutes = pretrain(args, seed, name, views, paradigm, objective)
        row = {**styles.evaluate(ckpt, name, trees, probe), 'minutes': minutes}
        say(f'seed {seed} {label}: {row}')
        return label, row
    chosen = styles.runs(args.smoke)
    done = dict(in_lanes(args, styles_run, styles.by_cost(chosen)))
    rows = {label: done[label] for label, *_ in chosen}
    rows['random init'] = styles.evaluate(random_encoder(args, seed), 'random', trees, probe)
    return rows


def say(text):
    print(time.strftime('%H:%M:%S'), text, flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.lanes > 1:
        import torch
        torch.set_num_threads(1)        # the in-process kNN of each lane, like its subprocesses
    from findings_report import write_section
    if args.finding == 'styles':
        styles.read_labels(args.data_folder)        # a data set of build_styles_data.py, before any work
    store = os.path.join(args.results, f'findings_{args.finding}{"_smoke" if args.smoke else ""}.json')
    saved = json.load(open(store)) if os.path.isfile(store) else {}
    if args.report and not seeds_of(args, saved):
        from engine.errors import UserError
        raise UserError(f'--report: {store} holds no seed at {args.epochs} epochs; run the finding without --report '
                        f'first (or give the --epochs it ran)')
    t0 = time.time()
    if args.finding == 'styles':
        same_data(args, store, saved)
        baselines_of(args, store, saved)
    for seed in [] if args.report else args.seeds:
        key = f'seed {seed}, {args.epochs} epochs'
        t_seed = time.time()
        saved[key] = {'rows': run_seed(args, seed), 'minutes': 0.0}
        saved[key]['minutes'] = (time.time() - t_seed) / 60
        if args.finding == 'styles':
            saved[key]['data_folder'] = styles.shown_path(args.data_folder)
        save(args, store, saved)
        write_section(args, seeds_of(args, saved), saved.get(BASELINES, {}).get('rows'))
    if args.report:
        write_section(args, seeds_of(args, saved), saved.get(BASELINES, {}).get('rows'))
    say(f'done in {(time.time() - t0) / 60:.1f} min: {args.results}/findings.md')


def seeds_of(args, saved):
    """The stored seeds run at ``args.epochs``: {seed key: {'rows', 'minutes'}}."""
    return {k: v for k, v in saved.items() if k.endswith(f', {args.epochs} epochs')}


def same_data(args, store, saved):
    """The styles finding's stored seeds must come from ``--data_folder``: a table of seeds from two data sets, or
    of one data set's seeds beside another's baselines, is a UserError (another --results keeps them apart)."""
    from engine.errors import UserError
    here = styles.shown_path(args.data_folder)
    other = sorted({v['data_folder'] for v in seeds_of(args, saved).values() if v.get('data_folder', here) != here})
    if other:
        raise UserError(f'{store} holds seeds trained on {", ".join(other)}, not --data_folder {here}: give that '
                        f'--data_folder, or another --results for this data set')


def baselines_of(args, store, saved):
    """The styles finding's pixel baselines, stored with what they were computed from (the data folder, the label
    sets, the image size) and recomputed when any of those differs."""
    made_from = {'data_folder': styles.shown_path(args.data_folder), 'labels': sorted(args.labels),
                 'image_size': styles.IMAGE_SIZE}
    if {k: v for k, v in saved.get(BASELINES, {}).items() if k != 'rows'} != made_from:
        saved[BASELINES] = {**made_from, 'rows': styles.pixel_baselines(args.data_folder, args.labels)}
        save(args, store, saved)


def save(args, store, saved):
    os.makedirs(args.results, exist_ok=True)
    with open(store, 'w') as f:
        json.dump(saved, f, indent=1)


if __name__ == '__main__':
    from engine.errors import run_main
    run_main(main)
