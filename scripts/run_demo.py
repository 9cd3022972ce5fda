"""The demo: pretrain CMC (Lab), InsDis and MoCo on the bundled emoji set, linear-probe each and a randomly initialised
encoder of the same architecture, and print a table. Run it through ``bash scripts/demo.sh`` (which makes the
virtualenv), or directly:

    python scripts/run_demo.py                  # the full demo (README, "The demo", for the minutes it takes)
    python scripts/run_demo.py --minutes 5      # every stage's epochs scaled to fit 5 minutes on this machine
    python scripts/run_demo.py --smoke          # one short epoch per stage on a small subset, to check the plumbing
    python scripts/run_demo.py --seed 1 --out results/demo_seed1

Writes ``<out>.md`` (the table: the demo's probe, ``pretrained/linear_eval.py``, beside the reference's cached probe
and the kNN) and ``<out>.png`` (probe accuracy, pretraining loss, kNN per epoch, feature maps), and keeps
every probed encoder under ``<out>/`` as cmc.pth, insdis.pth, moco.pth, random.pth (CMC's architecture) and
random_rgb.pth (InsDis/MoCo's), in the pretraining checkpoint format, so that LinearProbing.py / eval_moco_ins.py can
probe them again on other data; ``<out>/feature_map.png``: 2-D maps of CMC's and its random encoder's val features.
"""
import argparse
import functools
import glob
import math
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import demo_report  # noqa: E402  (scripts/)
from pretrained import linear_eval  # noqa: E402
from demo_lanes import Progress, run_in_process, run_lanes, run_script  # noqa: E402
from demo_precision import choose_precision  # noqa: E402

# The recipe. Chosen on folds of the train split (``bench/demo_recipe.py``: 5 folds, the weighted kNN and the demo's
# probe on each held-out fold), never on val; float32 CPU time of one process on one thread, this project's 2-core
# Xeon, the other core busy with a second screen. Random encoders at the same size, for the margins.
# - 32 px instead of 64: a quarter of the pixels, 0.29x the time of a CMC epoch (3.5 s against ~12 s). CMC at 32 px
#   for 150 epochs (lr decay at 120) scored train-fold kNN / probe 66.4 / 68.1 against its random encoder's 41.1 /
#   56.3 (+25.3 / +11.8): as good as today's 64 px CMC (66.5 / 68.5 against 38.2 / 59.3), at 525 s of CPU.
#   CMC at 48 px for 60 epochs (lr decay 40, 50): 52.4 / 60.6 against 39.1 / 60.9 (+13.3 / -0.3), 417 s: CMC
#   needs its epochs more than its pixels.
# - InsDis and MoCo: one RGB ResNet-18 each at half width (resnet18x0.5, each stage as wide as one CMC resnet18v1
#   view: about a third of the multiply-adds, the stem staying 64 wide), 2.0 / 2.9 s an epoch against 5.6 / 7.4 at
#   full width. On train folds at 32 px, each against the random encoder of its own width: InsDis 40 epochs, full
#   width 52.0 / 57.5 against 41.8 / 57.2 (+10.2 / +0.3), half width 56.0 / 57.3 against 42.8 / 53.3 (+13.2 / +4.0);
#   50 epochs, full width +12.4 / +1.7, half width 58.2 / 58.4 (+15.4 / +5.1); half width 60 epochs 58.8 / 58.0.
#   Half-width MoCo 20 / 25 / 35 epochs: 55.7 / 58.4, 56.7 / 57.9, 57.1 / 57.5. The full width's extra features lift
#   its random encoder's probe (57.2 against 53.3) more than they lift the trained one's. 48 px would cost ~2x.
# - Epochs: CMC 110, InsDis 50, MoCo 20, one lr decay at 80% of each. CMC on train folds at 90 / 110 / 120 epochs:
#   kNN 64.1 / 65.6 / 66.4, probe 66.1 / 67.3 / 67.5 (random: 41.1 / 56.3). Each stage is the shortest screened
#   length within 1.5 points of its longest on both scores, so that the float32 work stays under a quarter of the
#   64 px recipe's (bench/demo_work.py: 0.21). Chosen on train folds only; the recipe before (CMC 120 / InsDis 40 /
#   MoCo 25, full-width RGB) had its epochs cut by looking at seed 0's val kNN curve, and this one replaces it.
# - The rest as before: InsDis / MoCo use the reference's --aug NULL (crop and flip, no colour jitter or grayscale):
#   colour is what tells emoji categories apart (flags, yellow faces, blue symbols), and jitter would teach the
#   encoder to ignore it. CMC keeps the reference's crops (--crop_low 0.2) and lr 0.03; at 64 px, milder crops
#   (crop_low 0.6, lr 0.06) won a 60-epoch screen on seed 0 but probed 1.0 point lower on each of 3 seeds at 150.
#   MoCo keeps --shuffle_bn_splits 1 (the reference on one GPU: no ShuffleBN; splits 2 showed no clear gain).
# - Pretraining runs under --amp (bfloat16 autocast) where a few timed steps show it faster than float32 (CPUs with
#   AVX512-BF16 or AMX, bench/bench_step.py); elsewhere it stays float32, the same recipe.
# - Evaluation: the demo's probe (pretrained/linear_eval.py: L2-regularised logistic regression, its strength chosen
#   per encoder by 5-fold cross-validation on train, PROBE_SEEDS probe seeds, the val split's bootstrap spread on
#   every margin) on the features of layer 6, beside the reference's cached probe as the demo ran it before (30
#   epochs of SGD on cached features with a parameter-free BatchNorm, --bn) and the weighted kNN at the embedding.
IMAGE_SIZE, RGB_SIZE = 32, 32
CMC_MODEL, RGB_MODEL = 'resnet18v1', 'resnet18x0.5'
COMMON = ['--dataset', 'demo', '--num_workers', '0', '--print_freq', '1000']
CONTRAST = ['--batch_size', '64', '--nce_k', '1024', '--softmax', '--learning_rate', '0.03']
PRETRAIN = {
    'cmc': ('train_CMC.py', CMC_MODEL, CONTRAST + ['--nce_t', '0.1']),
    'insdis': ('train_moco_ins.py', RGB_MODEL, CONTRAST[:-1] + ['0.06', '--nce_t', '0.2', '--aug', 'NULL']),
    'moco': ('train_moco_ins.py', RGB_MODEL, CONTRAST + ['--nce_t', '0.2', '--aug', 'NULL', '--moco',
                                                         '--alpha', '0.99']),
}
SIZE = {'cmc': IMAGE_SIZE, 'insdis': RGB_SIZE, 'moco': RGB_SIZE, 'random': IMAGE_SIZE, 'random_rgb': RGB_SIZE}
EPOCHS = {'cmc': 110, 'insdis': 50, 'moco': 20}
LR_DECAY_AT = 0.8         # one step of lr x 0.1 at 80% of the epochs (the 64 px recipe decayed CMC at 120 of 150)
KNN_EVERY = 10            # the kNN monitor (val) every 10 epochs: the figure's curves and the progress lines
# Pretraining runs in two lanes side by side, each on half of the cores: one thread per process does more work per
# core than two (README, "The demo"), and CMC, the slowest to learn, gets a lane of its own.
LANES = [['cmc'], ['insdis', 'moco']]
EPOCHS_PER_LINE = 10
PROBE = {  # the cached probe (the reference's scripts): script, layer, learning rate
    CMC_MODEL: ('LinearProbing.py', '6', '0.1'),
    RGB_MODEL: ('eval_moco_ins.py', '6', '0.1'),
}
PROBE_EPOCHS = 30
# --minutes N: each pretraining script runs CALIBRATION_EPOCHS epochs first, timed whole; the evaluation after
# pretraining is budgeted as EVAL_CMC_EPOCHS CMC epochs of this machine (measured on the 2-core Xeon: 1.1 min of wall
# for the cached probes, the demo's probe, kNN and maps, against a CMC epoch of ~3.6 s: 18; rounded up).
CALIBRATION_EPOCHS = 2
MAX_MINUTES = 24 * 60
EVAL_CMC_EPOCHS = 20
# --smoke checks the plumbing, not the numbers: the first SMOKE_PER_CLASS (train, val) images of each of the 9 classes,
# written to <out>/smoke_emoji64.npz, and smaller batches and memory (appended last, so they override the recipe's).
SMOKE_PER_CLASS = (12, 4)
SMOKE_PRETRAIN = ['--batch_size', '32', '--nce_k', '64']
SMOKE_PROBE = ['--batch_size', '32']
SMOKE_PROBE_SEEDS, SMOKE_C_GRID = (0, 1), (0.01, 0.1, 1.0)
METHODS = [('cmc', 'CMC (Lab)', CMC_MODEL), ('insdis', 'InsDis', RGB_MODEL), ('moco', 'MoCo', RGB_MODEL),
           ('random', f'random init ({CMC_MODEL}, CMC)', CMC_MODEL),
           ('random_rgb', f'random init ({RGB_MODEL}, RGB)', RGB_MODEL)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=os.path.join(ROOT, 'results', 'demo'))
    p.add_argument('--smoke', action='store_true', help='one short epoch per stage on a small subset of the data '
                   '(tests use this)')
    p.add_argument('--amp', choices=['auto', 'on', 'off'], default='auto',
                   help='bfloat16 autocast for pretraining: auto times a few steps of each and takes the faster')
    p.add_argument('--epochs', type=str, default=None, help='override, e.g. cmc=10,insdis=4,moco=4,probe=10')
    p.add_argument('--minutes', type=float, default=None,
                   help='scale every pretraining stage\'s epochs (the same factor for all) to fit this many minutes '
                   'on this machine: times the first epochs of each first and says what it chose. Off by default: '
                   'the fixed recipe\'s numbers are the reproducible ones')
    p.add_argument('--summarise', nargs='+', metavar='MD', help='print mean and spread over the tables of earlier '
                   'runs (e.g. results/demo.md results/demo_seed1.md results/demo_seed2.md) and exit')
    args = p.parse_args(argv)
    if args.minutes is not None and not (0 < args.minutes <= MAX_MINUTES):
        p.error(f'--minutes {args.minutes:g}: give a number of minutes above 0 and at most {MAX_MINUTES}')
    if args.minutes is not None and (args.smoke or args.epochs):
        p.error('--minutes chooses the epochs itself: not with --smoke or --epochs')
    if args.epochs:
        args.epochs = parse_epochs(args.epochs, p.error)
    return args


def parse_epochs(text, error):
    """--epochs 'cmc=10,probe=5' -> {'cmc': 10, 'probe': 5}; ``error`` (argparse's) for anything else."""
    stages = [*PRETRAIN, 'probe']
    chosen = {}
    for item in text.split(','):
        name, _, value = item.partition('=')
        if name not in stages or not value.isdigit() or int(value) < 1:
            error(f'--epochs {text}: give stage=N pairs (N a whole number >= 1) for stages among {", ".join(stages)}, '
                  f'e.g. cmc=10,insdis=4,moco=4,probe=10')
        chosen[name] = int(value)
    return chosen


def save_random_encoder(name, model_name, path, seed):
    import torch
    from engine import checkpoint
    from models import build_cmc_model, build_ins_model
    torch.manual_seed(seed)
    model = build_cmc_model(model_name) if name == 'random' else build_ins_model(model_name)
    # the flags a pretraining checkpoint records that its loaders read (pretrained.load_encoder, the probes): the
    # size the demo probes it at, its projection's width and, for CMC, its views (build_cmc_model's: L and ab)
    opt = {'model': model_name, 'seed': seed, 'note': 'random initialisation', 'dataset': 'demo',
           'image_size': SIZE[name], 'feat_dim': 128}
    if name == 'random':
        opt.update(view='Lab', views=['L', 'ab'], view_channels=[1, 2], objective='contrastive')
    checkpoint.save_checkpoint({'opt': opt, 'model': model.state_dict(), 'epoch': 0}, path)


def write_smoke_subset(path, per_class=SMOKE_PER_CLASS):
    """The first ``per_class`` (train, val) images of every class of the bundled set, as a demo .npz; returns path."""
    import numpy as np
    from dataset import DEMO_FILE
    with np.load(DEMO_FILE, allow_pickle=False) as archive:
        arrays = {'classes': archive['classes']}
        for prefix, n in zip(('train', 'val'), per_class):
            labels = archive[f'{prefix}_labels']
            keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(len(arrays['classes']))])
            for key in ('images', 'labels', 'codes'):
                arrays[f'{prefix}_{key}'] = archive[f'{prefix}_{key}'][keep]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **arrays)
    return path


def knn_of(ckpt_path, method, model_name, seed, data_folder=None):
    """The kNN top-1 recorded by pretraining, or computed here for the random encoders."""
    import torch
    import torch.nn.functional as F
    from dataset import DeviceView, build_dataset, eval_transform
    from engine import checkpoint, data, knn, runtime
    from models import build_cmc_model, build_ins_model
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    if 'knn_top1' in ckpt:
        return ckpt['knn_top1']
    cmc = method == 'random'
    model = build_cmc_model(model_name) if cmc else build_ins_model(model_name)
    model.load_state_dict(ckpt['model'])
    model.eval()
    view = DeviceView('Lab' if cmc else 'RGB')

    def encode(x):
        out = model(view(x))
        return torch.cat([F.normalize(o, dim=1) for o in out], 1) if cmc else out

    rt = runtime.Runtime(device=torch.device('cpu'))
    opt = argparse.Namespace(batch_size=128, num_workers=0)
    loaders = [data.eval_loader(build_dataset('demo', data_folder, split, eval_transform(SIZE[method])), opt)
               for split in ('train', 'val')]
    return knn.knn_accuracy(encode, *loaders, n_classes=9, rt=rt)


def main(argv=None):
    args = parse_args(argv)
    if args.summarise:
        print(demo_report.summarise(args.summarise))
        return
    epochs = dict(EPOCHS, probe=PROBE_EPOCHS)
    if args.smoke:
        epochs = {k: 1 for k in epochs}
    epochs.update(args.epochs or {})
    out = os.path.abspath(args.out)
    for sub in ('runs', 'tb', 'probe', 'logs', 'calibrate'):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
    progress = Progress(len(PRETRAIN) + 3)
    smoke_data = write_smoke_subset(os.path.join(out, 'smoke_emoji64.npz')) if args.smoke else None
    threads = max(1, (os.cpu_count() or 1) // len(LANES))
    amp, why = choose_precision(args.amp, threads, CMC_MODEL, IMAGE_SIZE,
                                *((1, 4) if args.smoke else (3, 16)))       # smoke: the plumbing
    progress.say(f'pretraining in {"bfloat16 autocast (--amp)" if amp else "float32"}: {why}')
    progress.say(f'pretraining in {len(LANES)} lanes of {threads} thread(s) each: '
                 + '; '.join(' then '.join(lane) for lane in LANES))
    stage = functools.partial(pretrain, out=out, seed=args.seed, amp=amp, smoke_data=smoke_data, progress=progress,
                              threads=threads)
    if args.minutes:
        epochs.update(fit_minutes(args.minutes, epochs, stage, progress, out))
    minutes, curves = {}, {}
    order = {m: i + 1 for i, m in enumerate(PRETRAIN)}        # stage numbers that do not depend on which lane starts
    run_lanes([[functools.partial(stage, method, epochs[method], minutes=minutes, curves=curves, number=order[method])
                for method in lane] for lane in LANES])
    cached = run_cached_probes(out, args.seed, epochs['probe'], minutes, smoke_data, progress)
    evaluate_and_report(out, args, epochs, amp, minutes, curves, cached, smoke_data, progress)


def run_cached_probes(out, seed, n_epochs, minutes, smoke_data, progress):
    """The reference's cached probe of every encoder: {method: val top-1}. Two lanes of one process each, as
    pretraining (CMC's architecture, then the RGB one); --smoke's in this process, one after the other (a script's
    signal handlers need the main thread)."""
    progress.stage(f'the cached probe of each encoder (the reference\'s, {n_epochs} epochs)', len(PRETRAIN) + 1)
    cached = {}
    threads = max(1, (os.cpu_count() or 1) // 2)
    lanes = [[functools.partial(cached_probe, method, model, out, seed, n_epochs, minutes, cached, smoke_data, threads)
              for method, _, model in METHODS if model == architecture] for architecture in (CMC_MODEL, RGB_MODEL)]
    if smoke_data:
        for call in (call for lane in lanes for call in lane):
            call()
    else:
        run_lanes(lanes)
    return cached


def evaluate_and_report(out, args, epochs, amp, minutes, curves, cached, smoke_data, progress):
    """The demo's probe and the kNN of every encoder, the feature maps, the table and the figure."""
    seeds, grid = (SMOKE_PROBE_SEEDS, SMOKE_C_GRID) if smoke_data else (linear_eval.PROBE_SEEDS, linear_eval.C_GRID)
    progress.stage(f'the demo\'s probe ({len(seeds)} probe seeds, its regularisation cross-validated on train)',
                   len(PRETRAIN) + 2)
    t0 = time.time()
    layer = int(PROBE[CMC_MODEL][1])
    features, results, classes, majority = demo_report.probe_features(
        out, METHODS, smoke_data, SIZE, layer, seeds, grid, os.cpu_count() or 1, progress.say)
    knn = {m: knn_of(os.path.join(out, f'{m}.pth'), m, model, args.seed, smoke_data) for m, _, model in METHODS}
    progress.stage('writing the table and the figures', len(PRETRAIN) + 3)
    feature_map = os.path.join(out, 'feature_map.png')
    panels = demo_report.feature_maps(features, METHODS, classes, layer, feature_map, args.seed)
    rows = demo_report.table_rows(METHODS, results, cached, knn, minutes)
    demo_report.draw_figure(out + '.png', METHODS, results, cached, curves['loss'], curves['knn'], knn, panels,
                            majority)
    table = write_report(out, rows, args, epochs, amp, len(seeds), majority)
    print(table)
    progress.say(f'the demo\'s probe, kNN and maps took {(time.time() - t0) / 60:.1f} min')
    progress.say(f'done in {(time.time() - progress.t0) / 60:.1f} min: the table {out}.md, the figure {out}.png '
                 f'(probe, loss, kNN per epoch, feature maps), the encoders in {out}/ (cmc.pth, insdis.pth, moco.pth, '
                 f'random.pth, random_rgb.pth)')
    progress.say(f'val feature maps of CMC and its random init (layer {layer}, kNN in the titles): {feature_map}')


def pretrain_command(method, n_epochs, out, seed, amp, smoke_data, knn_every=KNN_EVERY):
    script, model, extra = PRETRAIN[method]
    data = ['--data_folder', smoke_data] if smoke_data else []
    decay = max(1, int(n_epochs * LR_DECAY_AT))
    return [script, *COMMON, '--image_size', str(SIZE[method]), *data, '--seed', str(seed), *amp, '--model', model,
            *extra, *(SMOKE_PRETRAIN if smoke_data else []), '--epochs', str(n_epochs), '--lr_decay_epochs',
            str(decay), '--knn_freq', str(min(knn_every, n_epochs) if knn_every else 0),
            '--model_path', os.path.join(out, 'runs', method), '--tb_path', os.path.join(out, 'tb', method)]


def pretrain(method, n_epochs, *, out, seed, amp, smoke_data, progress, threads, minutes=None, curves=None,
             calibrate=False, number=None):
    """Pretrain ``method`` for ``n_epochs``; link its checkpoint as <out>/<method>.pth and keep its loss and kNN
    curves. ``calibrate``: a timing run in <out>/calibrate (no kNN); returns its wall seconds per epoch."""
    from engine import checkpoint
    where = os.path.join(out, 'calibrate') if calibrate else out
    command = pretrain_command(method, n_epochs, where, seed, amp, smoke_data, 0 if calibrate else KNN_EVERY)
    if not calibrate:
        progress.stage(f'pretraining {method} ({PRETRAIN[method][1]}, {SIZE[method]} px, {n_epochs} epochs)', number)
    os.makedirs(os.path.join(where, 'logs'), exist_ok=True)
    t0 = time.time()
    run_script(command, os.path.join(where, 'logs', f'pretrain_{method}.log'), progress, n_epochs,
               every=EPOCHS_PER_LINE, label=method, threads=threads, quiet=calibrate)
    if calibrate:       # the whole script's wall time per epoch: its start, saves and warm-up epoch included
        return (time.time() - t0) / n_epochs
    minutes[method] = (time.time() - t0) / 60
    (ckpt,) = glob.glob(os.path.join(out, 'runs', method, '*', 'current.pth'))
    checkpoint.link_checkpoint(ckpt, os.path.join(out, f'{method}.pth'))
    (tb,) = glob.glob(os.path.join(out, 'tb', method, '*'))
    curves.setdefault('loss', {})[method] = demo_report.scalar_curve(tb, ['l_loss', 'ab_loss'] if method == 'cmc'
                                                                     else ['ins_loss'])
    curves.setdefault('knn', {})[method] = demo_report.scalar_curve(tb, ['knn_top1'])


def fit_minutes(budget, epochs, stage, progress, out=None):
    """--minutes: run CALIBRATION_EPOCHS epochs of each pretraining script (timed whole: start, warm-up and saves
    included, so the estimate errs long), then scale every stage's epochs by one factor, rounded down, so that the
    slowest lane and the evaluation fit what is left of ``budget`` minutes; says what it measured and chose.
    Returns {method: epochs}, at least 1 each. ``out``: the demo's folder, whose calibrate/ is removed after."""
    progress.say(f'--minutes {budget:g}: timing {CALIBRATION_EPOCHS} epochs of each pretraining script first')
    seconds = {}

    def timed(method):
        seconds[method] = stage(method, CALIBRATION_EPOCHS, calibrate=True)

    try:
        run_lanes([[functools.partial(timed, m) for m in lane] for lane in LANES])
    finally:
        if out:
            shutil.rmtree(os.path.join(out, 'calibrate'), ignore_errors=True)
    lanes = [sum(epochs[m] * seconds[m] for m in lane) for lane in LANES]
    evaluation = EVAL_CMC_EPOCHS * seconds['cmc']
    left = budget * 60 - (time.time() - progress.t0) - evaluation
    scale = max(0.0, left / max(lanes))
    chosen = {m: max(1, math.floor(epochs[m] * scale)) for m in PRETRAIN}
    overrun = ' (at least one epoch each, so this will overrun)' if any(epochs[m] * scale < 1 for m in PRETRAIN) else ''
    progress.say('one epoch here: ' + ', '.join(f'{m} {seconds[m]:.1f} s' for m in PRETRAIN)
                 + f'; the fixed recipe would take ~{(max(lanes) + evaluation) / 60:.0f} min. Scaling every stage '
                 f'by {scale:.2f}: ' + ', '.join(f'{m} {chosen[m]} epochs' for m in PRETRAIN) + overrun)
    return chosen


def cached_probe(method, model, out, seed, n_epochs, minutes, cached, smoke_data=None, threads=None):
    """The reference's linear probe (LinearProbing.py / eval_moco_ins.py on cached features, --bn), as the demo ran
    it before, on <out>/<method>.pth (saving a random one first, from ``seed``): its final-epoch val top-1 into
    ``cached``. ``smoke_data``: the --smoke subset to use instead of the bundled set; ``threads``: its OMP threads."""
    from engine import checkpoint
    t0 = time.time()
    path = os.path.join(out, f'{method}.pth')
    if method.startswith('random'):
        save_random_encoder(method, model, path, seed)
    script, layer, lr = PROBE[model]
    smoke = ['--data_folder', smoke_data, *SMOKE_PROBE] if smoke_data else []
    command = [script, *COMMON, '--image_size', str(SIZE[method]), '--seed', str(seed), '--model', model, '--layer',
               layer, '--learning_rate', lr, '--model_path', path, '--epochs', str(n_epochs), '--batch_size', '128',
               *smoke, '--lr_decay_epochs', f'{int(n_epochs * 0.6)},{int(n_epochs * 0.8)}', '--cache_features', '--bn',
               '--save_path', os.path.join(out, 'probe', method), '--tb_path', os.path.join(out, 'tb', 'probe')]
    log = os.path.join(out, 'logs', f'probe_{method}.log')
    if smoke_data:
        run_in_process(command, log)
    else:
        run_script(command, log, None, n_epochs, threads=threads, quiet=True)
    # the final epoch's val accuracy (not the best over epochs, which would pick on val)
    (final,) = glob.glob(os.path.join(out, 'probe', method, '*', 'current.pth'))
    cached[method] = checkpoint.load_checkpoint(final)['last_acc1']
    minutes[method] = minutes.get(method, 0) + (time.time() - t0) / 60


def smoke_set(out):
    train, val = (n * 9 for n in SMOKE_PER_CLASS)
    return f'Smoke subset of the emoji demo set ({train} train / {val} val, 9 classes, {out}/smoke_emoji64.npz)'


def write_report(out, rows, args, epochs, amp, n_seeds, majority):
    text = demo_report.table(rows)
    data = smoke_set(out) if args.smoke else 'Emoji demo set (1,528 train / 378 val, 9 classes)'
    with open(out + '.md', 'w') as f:
        f.write(f'# Demo results (seed {args.seed}{", smoke mode" if args.smoke else ""})\n\n'
                f'{data}, {IMAGE_SIZE} px (InsDis, MoCo: {RGB_SIZE} px), CPU. Pretraining epochs: CMC {epochs["cmc"]}, '
                f'InsDis {epochs["insdis"]}, MoCo {epochs["moco"]}{" (bfloat16 autocast)" if amp else " (float32)"}. '
                f'Probe: the demo\'s (pretrained/linear_eval.py, layer 6, L2-regularised logistic regression, C '
                f'cross-validated on train, {n_seeds} probe seeds; each margin over the random encoder of the same '
                f'architecture with the sd of {linear_eval.BOOTSTRAPS} paired bootstrap resamples of the val images); '
                f'the cached probe as the demo ran it before ({epochs["probe"]} epochs of SGD on cached frozen '
                f'features, layer 6, --bn, one seed); kNN at the embedding (k=200, t=0.07). Majority class: '
                f'{majority:.1f}% top-1.\n\n{text}\n\n'
                f'![probe, loss, kNN per epoch, feature maps]({os.path.basename(out)}.png)\n')
    return text


if __name__ == '__main__':
    from engine.errors import run_main
    run_main(main)
