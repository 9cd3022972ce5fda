"""The demo: pretrain CMC (Lab), InsDis and MoCo on the bundled emoji set, linear-probe each and a randomly initialised
encoder of the same architecture, and print a table. Run it through ``bash scripts/demo.sh`` (which makes the
virtualenv), or directly:

    python scripts/run_demo.py                  # the full demo, ~12-14 minutes on 2 CPU cores
    python scripts/run_demo.py --smoke          # one short epoch per stage on a small subset, to check the plumbing
    python scripts/run_demo.py --seed 1 --out results/demo_seed1

Writes ``<out>.md`` (the table) and ``<out>.png`` (probe accuracy per method, pretraining loss curves), and keeps
every probed encoder under ``<out>/`` as cmc.pth, insdis.pth, moco.pth, random.pth (CMC's architecture) and
random_rgb.pth (InsDis/MoCo's), in the pretraining checkpoint format, so that LinearProbing.py / eval_moco_ins.py can
probe them again on other data; ``<out>/feature_map.png``: 2-D maps of CMC's and its random encoder's val features.
"""
import argparse
import functools
import glob
import os
import re
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from demo_lanes import Progress, run_in_process, run_lanes, run_script  # noqa: E402  (scripts/)

# The recipe, chosen so that the whole demo fits 15 minutes on 2 CPU cores (README, "The demo"):
# - ResNet-18 encoders at 64 px: CMC's two half-width ones on L and ab (resnet18v1), one on RGB for InsDis / MoCo.
# - InsDis / MoCo use the reference's --aug NULL (crop and flip, no colour jitter or grayscale): colour is what tells
#   emoji categories apart (flags, yellow faces, blue symbols), and jitter would teach the encoder to ignore it.
# - CMC keeps the reference's crops (--crop_low 0.2) and lr 0.03. Tried and not kept: crop_low 0.6 with lr 0.06, best
#   of a 60-epoch screen on seed 0 (probe / kNN 68.5 / 59.3 against 62.4 / 52.9; crop_low 0.4: 65.1 / 60.1, 0.8:
#   64.0 / 58.5; lr 0.06 alone 65.1 / 57.1, lr 0.12 61.6 / 54.0, nce_t 0.07 60.1 / 46.8), probed 1.0 point lower on
#   each of seeds 0, 1, 2 at the full 150 epochs (66.9 / 66.7 / 63.8 against 68.0 / 67.2 / 65.1), kNN 1.1 higher.
# - Every encoder, random ones included, gets the same probe: the seed's ResNet layer (6, after global pooling), a
#   parameter-free BatchNorm on the frozen features (--bn) so one learning rate suits all feature scales, SGD at 0.1.
# - Pretraining runs under --amp (bfloat16 autocast) where a few timed steps show it faster than float32 (CPUs with
#   AVX512-BF16 or AMX: at the same accuracy, bench/bench_step.py); elsewhere it stays float32, the same recipe.
# - MoCo keeps --shuffle_bn_splits 1 (the reference on one GPU: no ShuffleBN). Tried: splits 2, 5 epochs on seed 0
#   (the shared CPU allowed no more), probe / kNN 59.3 / 45.8 against 56.9 / 48.1: no clear gain (README, ShuffleBN).
CMC_MODEL, RGB_MODEL = 'resnet18v1', 'resnet18'
IMAGE_SIZE = 64
COMMON = ['--dataset', 'demo', '--image_size', str(IMAGE_SIZE), '--num_workers', '0', '--print_freq', '1000']
CONTRAST = ['--batch_size', '64', '--nce_k', '1024', '--softmax', '--learning_rate', '0.03']
PRETRAIN = {
    'cmc': ('train_CMC.py', CMC_MODEL, CONTRAST + ['--nce_t', '0.1']),
    'insdis': ('train_moco_ins.py', RGB_MODEL, CONTRAST[:-1] + ['0.06', '--nce_t', '0.2', '--aug', 'NULL']),
    'moco': ('train_moco_ins.py', RGB_MODEL, CONTRAST + ['--nce_t', '0.2', '--aug', 'NULL', '--moco',
                                                         '--alpha', '0.99']),
}
EPOCHS = {'cmc': 150, 'insdis': 70, 'moco': 30}
# Pretraining runs in two lanes side by side, each on half of the cores: one thread per process does more work per
# core than two (README, "The demo"), and CMC, the slowest to learn, gets a lane of its own.
LANES = [['cmc'], ['insdis', 'moco']]
EPOCHS_PER_LINE = 10
PROBE = {  # script, layer, learning rate
    CMC_MODEL: ('LinearProbing.py', '6', '0.1'),
    RGB_MODEL: ('eval_moco_ins.py', '6', '0.1'),
}
PROBE_EPOCHS = 30
# --smoke checks the plumbing, not the numbers: the first SMOKE_PER_CLASS (train, val) images of each of the 9 classes,
# written to <out>/smoke_emoji64.npz, and smaller batches and memory (appended last, so they override the recipe's).
SMOKE_PER_CLASS = (12, 4)
SMOKE_PRETRAIN = ['--batch_size', '32', '--nce_k', '64']
SMOKE_PROBE = ['--batch_size', '32']
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
    p.add_argument('--summarise', nargs='+', metavar='MD', help='print mean and spread over the tables of earlier '
                   'runs (e.g. results/demo.md results/demo_seed1.md results/demo_seed2.md) and exit')
    return p.parse_args(argv)


def summarise(paths):
    """Mean and standard deviation per method and column over several runs' tables."""
    import statistics
    runs = {}
    for path in paths:
        for label, *values in re.findall(r'^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$',
                                         open(path).read(), re.M):
            runs.setdefault(label, []).append([float(v) for v in values])
    lines = [f'Mean +- standard deviation over {len(paths)} runs:', '',
             '| method | probe top-1 | probe top-5 | kNN top-1 | minutes |', '|---|---:|---:|---:|---:|']
    for label, rows in runs.items():
        cells = [f'{statistics.mean(c):.1f} +- {statistics.stdev(c) if len(c) > 1 else 0:.1f}' for c in zip(*rows)]
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def save_random_encoder(name, model_name, path, seed):
    import torch
    from engine import checkpoint
    from models import build_cmc_model, build_ins_model
    torch.manual_seed(seed)
    model = build_cmc_model(model_name) if name == 'random' else build_ins_model(model_name)
    # the flags a pretraining checkpoint records that its loaders read (pretrained.load_encoder, the probes): the
    # size the demo probes it at, its projection's width and, for CMC, its views (build_cmc_model's: L and ab)
    opt = {'model': model_name, 'seed': seed, 'note': 'random initialisation', 'dataset': 'demo',
           'image_size': IMAGE_SIZE, 'feat_dim': 128}
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
    loaders = [data.eval_loader(build_dataset('demo', data_folder, split, eval_transform(64)), opt)
               for split in ('train', 'val')]
    return knn.knn_accuracy(encode, *loaders, n_classes=9, rt=rt)


def loss_curve(tb_folder, method):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(tb_folder)
    acc.Reload()
    tags = ['l_loss', 'ab_loss'] if method == 'cmc' else ['ins_loss']
    series = [acc.Scalars(t) for t in tags]
    return [e.step for e in series[0]], [sum(s[i].value for s in series) for i in range(len(series[0]))]


def time_steps(amp_dtype, steps, threads, batch=64, give_up=float('inf')):
    """Best CPU seconds (process time: other work on a shared machine does not count) of one SGD step of the CMC
    encoder (resnet18v1, 64 px, channels-last, as the demo trains it) over ``steps`` steps after one warm-up step,
    with ``threads`` CPU threads; stops early once a step after the warm-up costs more than give_up."""
    import torch
    from engine import runtime
    from models import build_cmc_model
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        rt = runtime.Runtime(device=torch.device('cpu'), amp_dtype=amp_dtype)
        model = rt.place(build_cmc_model(CMC_MODEL))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        best = float('inf')
        for step in range(steps + 1):
            t0 = time.process_time()
            with rt.autocast():
                feat_l, feat_ab = model(x)
            (feat_l.float().sum() + feat_ab.float().sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.process_time() - t0
            if step == 0:             # warms up: allocations, oneDNN's kernel choice (seconds for bfloat16)
                continue
            best = min(best, seconds)
            if seconds > give_up:     # clearly the slower one (emulated bfloat16 is several times float32)
                break
        return best
    finally:
        torch.set_num_threads(before)


def choose_precision(choice, threads, steps=3, batch=16):
    """(pretraining flags, why): with 'auto', time ``steps`` SGD steps of float32 and of bfloat16 autocast on this
    CPU and take the faster (bfloat16 only when >= 5% faster: it also rounds), instead of trusting CPU flags. batch
    16, a quarter of the demo's: the ratio, not the time, decides."""
    if choice != 'auto':
        return (['--amp'] if choice == 'on' else []), f'--amp {choice}'
    import torch
    f32 = time_steps(None, steps, threads, batch)
    bf16 = time_steps(torch.bfloat16, steps, threads, batch, give_up=3 * f32)
    faster = bf16 < 0.95 * f32
    return (['--amp'] if faster else []), (f'an SGD step of batch {batch} cost {f32 * 1e3:.0f} ms of CPU in float32, '
                                           f'{bf16 * 1e3:.0f} ms in bfloat16 autocast ({threads} thread(s), best of '
                                           f'{steps}), so {"bfloat16" if faster else "float32"} is faster here')


def main(argv=None):
    args = parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return
    epochs = dict(EPOCHS, probe=PROBE_EPOCHS)
    if args.smoke:
        epochs = {k: 1 for k in epochs}
    if args.epochs:
        epochs.update({k: int(v) for k, v in (kv.split('=') for kv in args.epochs.split(','))})
    out = os.path.abspath(args.out)
    for sub in ('runs', 'tb', 'probe', 'logs'):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
    progress = Progress(len(PRETRAIN) + len(METHODS) + 1)
    seed = ['--seed', str(args.seed)]
    minutes, curves = {}, {}
    smoke_data = write_smoke_subset(os.path.join(out, 'smoke_emoji64.npz')) if args.smoke else None
    data_flags = ['--data_folder', smoke_data] if args.smoke else []

    from engine import checkpoint
    threads = max(1, (os.cpu_count() or 1) // len(LANES))
    amp, why = choose_precision(args.amp, threads, *((1, 4) if args.smoke else (3, 16)))   # smoke: the plumbing
    progress.say(f'pretraining in {"bfloat16 autocast (--amp)" if amp else "float32"}: {why}')
    progress.say(f'pretraining in {len(LANES)} lanes of {threads} thread(s) each: '
                 + '; '.join(' then '.join(lane) for lane in LANES))

    def pretrain(method):
        script, model, extra = PRETRAIN[method]
        progress.stage(f'pretraining {method} ({model}, {epochs[method]} epochs)')
        t0 = time.time()
        run_script([script, *COMMON, *data_flags, *seed, *amp, '--model', model, *extra,
                    *(SMOKE_PRETRAIN if args.smoke else []), '--epochs', str(epochs[method]),
                    '--knn_freq', str(epochs[method]), '--model_path', os.path.join(out, 'runs', method),
                    '--tb_path', os.path.join(out, 'tb', method)],
                   os.path.join(out, 'logs', f'pretrain_{method}.log'), progress, epochs[method],
                   every=EPOCHS_PER_LINE, label=method, threads=threads)
        minutes[method] = (time.time() - t0) / 60
        (ckpt,) = glob.glob(os.path.join(out, 'runs', method, '*', 'current.pth'))
        checkpoint.link_checkpoint(ckpt, os.path.join(out, f'{method}.pth'))
        (tb,) = glob.glob(os.path.join(out, 'tb', method, '*'))
        curves[method] = loss_curve(tb, method)

    run_lanes([[functools.partial(pretrain, method) for method in lane] for lane in LANES])

    rows = [probe_one(method, label, model, out, args.seed, epochs, progress, minutes, smoke_data)
            for method, label, model in METHODS]

    progress.stage('writing the table and the figures')
    from pretrained.feature_map import compare_encoders
    layer = int(PROBE[CMC_MODEL][1])        # the probe's (the table's kNN column is at the embedding, layer 7)
    feature_map = os.path.join(out, 'feature_map.png')
    compare_encoders([(os.path.join(out, f'{m}.pth'), label) for m, label, _ in METHODS if m in ('cmc', 'random')],
                     'demo', smoke_data, 64, layer, feature_map, seed=args.seed)
    table = write_report(out, rows, curves, args, epochs, amp)
    print(table)
    progress.say(f'done: {out}.md, {out}.png, encoders in {out}/')
    progress.say(f'val feature maps of CMC and its random init (layer {layer}, kNN in the titles): {feature_map}')


def probe_one(method, label, model, out, seed, epochs, progress, minutes, smoke_data=None):
    """Linear-probe one encoder (saving a random one first, from ``seed``) and return its table row; ``smoke_data``:
    the --smoke subset to use instead of the bundled set."""
    from engine import checkpoint
    progress.stage(f'linear probe of {label}')
    t0 = time.time()
    path = os.path.join(out, f'{method}.pth')
    if method.startswith('random'):
        save_random_encoder(method, model, path, seed)
    script, layer, lr = PROBE[model]
    smoke = ['--data_folder', smoke_data, *SMOKE_PROBE] if smoke_data else []
    command = [script, *COMMON, '--seed', str(seed), '--model', model, '--layer', layer, '--learning_rate', lr,
               '--model_path', path, '--epochs', str(epochs['probe']), '--batch_size', '128', *smoke,
               '--lr_decay_epochs', f"{int(epochs['probe'] * 0.6)},{int(epochs['probe'] * 0.8)}",
               '--cache_features', '--bn', '--save_path', os.path.join(out, 'probe', method),
               '--tb_path', os.path.join(out, 'tb', 'probe')]
    log = os.path.join(out, 'logs', f'probe_{method}.log')
    if smoke_data:
        run_in_process(command, log)
    else:
        run_script(command, log, progress, epochs['probe'], every=10)
    # the final epoch's val accuracy (not the best over epochs, which would pick on val)
    (final,) = glob.glob(os.path.join(out, 'probe', method, '*', 'current.pth'))
    result = checkpoint.load_checkpoint(final)
    knn = knn_of(path, method, model, seed, smoke_data)
    minutes[method] = minutes.get(method, 0) + (time.time() - t0) / 60
    return label, result['last_acc1'], result['last_acc5'], knn, minutes[method]


def smoke_set(out):
    train, val = (n * 9 for n in SMOKE_PER_CLASS)
    return f'Smoke subset of the emoji demo set ({train} train / {val} val, 9 classes, {out}/smoke_emoji64.npz)'


def write_report(out, rows, curves, args, epochs, amp):
    lines = ['| method | probe top-1 | probe top-5 | kNN top-1 | minutes |', '|---|---:|---:|---:|---:|']
    lines += [f'| {label} | {a1:.1f} | {a5:.1f} | {knn:.1f} | {m:.1f} |' for label, a1, a5, knn, m in rows]
    table = '\n'.join(lines)
    with open(out + '.md', 'w') as f:
        f.write(f'# Demo results (seed {args.seed}{", smoke mode" if args.smoke else ""})\n\n'
                f'{smoke_set(out) if args.smoke else "Emoji demo set (1,528 train / 378 val, 9 classes)"}, 64 px, '
                f'CPU. Pretraining epochs: '
                f'CMC {epochs["cmc"]}, InsDis {epochs["insdis"]}, MoCo {epochs["moco"]}'
                f'{" (bfloat16 autocast)" if amp else " (float32)"}; linear probe '
                f'{epochs["probe"]} epochs on cached frozen features (layer 6, --bn). Majority class: 20.4% top-1.\n\n'
                f'{table}\n\n![probe accuracy and loss curves]({os.path.basename(out)}.png)\n\n'
                f'![val feature maps, CMC and random init]({os.path.basename(out)}/feature_map.png)\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color='tab:blue')
    ax1.axvline(20.4, color='grey', ls='--', label='majority class')
    ax1.set_xlabel('linear probe top-1 (%)')
    ax1.legend(loc='lower right')
    for method, (x, y) in curves.items():
        ax2.plot(x, y, marker='o', label=method)
    ax2.set_xlabel('epoch')
    ax2.set_ylabel('pretraining loss')
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out + '.png', dpi=100)
    return table


if __name__ == '__main__':
    main()
