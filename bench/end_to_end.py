"""CMC end to end: images per second that ``train_CMC.py`` trains, the reference path against ours, same workers.

Input: an ImageFolder of --images generated JPEGs (quality 90, --image-size, default 500 x 375, ImageNet-like; see
bench/jpeg_files.py), written to a temporary folder. Each path is ``train_CMC.py --dataset imagenet`` as a user runs
it (a subprocess, --epochs epochs, cuDNN autotuning on, no --seed), timed by its own "epoch N, total time" lines:

  reference  --color_on_cpu: each loader worker crops with PIL and converts with scikit-image in float64, then
             ToTensor and Normalize, per image (the reference's pipeline); float32 training
  ours       uint8 crops from the workers, colour and normalisation batched on the device; float32
  ours --amp the same under autocast (bfloat16 where the device computes it natively, else float16)

images/s = (steps per epoch x batch) / the epoch's time, best of epochs 2..E (epoch 1 also autotunes and warms up).
On a GPU the reference path is bound by its workers' per-image float64 colour; ours by JPEG decode and crop.

    python bench/end_to_end.py --device cuda           # AlexNet, 224 px, batch 256, 8 workers, 4096 JPEGs: ~2 min
    python bench/end_to_end.py --smoke                 # CPU, 24 tiny files: checks that it runs (no claims)
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import torch

from jpeg_files import make_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 8             # class folders of the generated ImageFolder
PATHS = (('reference (--color_on_cpu, float32)', ['--color_on_cpu']), ('ours (float32)', []), ('ours (--amp)', ['--amp']))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--model', default='alexnet')
    p.add_argument('--images', type=int, default=4096)
    p.add_argument('--image-size', type=int, nargs=2, default=(500, 375), metavar=('W', 'H'))
    p.add_argument('--crop', type=int, default=224)
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--workers', type=int, default=8)
    p.add_argument('--nce_k', type=int, default=2048)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--timeout', type=float, default=300, help='seconds per path before it is stopped')
    p.add_argument('--smoke', action='store_true', help='CPU, 24 files of 96 x 72, crop 64, batch 8, 2 epochs, '
                   'float32 paths only (overrides those flags); no claims')
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.images, args.image_size, args.crop = 'cpu', 24, (96, 72), 64
        args.batch, args.workers, args.nce_k, args.epochs = 8, 1, 8, 2
    if args.epochs < 2:
        p.error('--epochs must be at least 2 (epoch 1 warms up and is not counted)')
    if not 1 <= args.batch <= args.images or args.images < CLASSES or not 0 < args.nce_k < args.images:
        p.error(f'need 1 <= --batch <= --images, --images >= {CLASSES} (one folder per class) and '
                f'0 < --nce_k < --images; got --batch {args.batch}, --images {args.images}, --nce_k {args.nce_k}')
    if args.workers < 0:
        p.error('--workers must be 0 or more')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error(f'--device {args.device}, but torch sees no CUDA GPU (torch.cuda.is_available() is False)')
    return args


def train_rate(args, root, work, extra):
    """Run train_CMC.py once; returns (best images/s over epochs 2..E, every epoch's seconds)."""
    command = [sys.executable, os.path.join(ROOT, 'train_CMC.py'), '--dataset', 'imagenet', '--data_folder', root,
               '--model', args.model, '--image_size', str(args.crop), '--batch_size', str(args.batch),
               '--num_workers', str(args.workers), '--nce_k', str(args.nce_k), '--epochs', str(args.epochs),
               '--device', args.device, '--print_freq', '100000', '--model_path', os.path.join(work, 'models'),
               '--tb_path', os.path.join(work, 'tb')] + extra
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        raise SystemExit(f'error: {" ".join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}')
    seconds = [float(t) for t in re.findall(r'epoch \d+, total time ([0-9.]+)', result.stdout)]
    if len(seconds) != args.epochs:
        raise SystemExit(f'error: expected {args.epochs} epoch lines from train_CMC.py, got:\n{result.stdout[-3000:]}')
    images = args.images // args.batch * args.batch
    return images / min(seconds[1:]), seconds


def main(argv=None):
    args = parse_args(argv)
    gpu = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'no GPU'
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, '
          f'torch {torch.__version__}')
    print(f'{args.model}, {args.images} JPEGs q90 of {args.image_size[0]}x{args.image_size[1]}, crop {args.crop}, '
          f'batch {args.batch}, {args.workers} loader workers, {args.epochs} epochs, best of epochs 2..{args.epochs}')
    with tempfile.TemporaryDirectory(prefix='cmc_end_to_end_') as tmp:
        t0 = time.time()
        root = make_image_folder(os.path.join(tmp, 'data'), args.images, tuple(args.image_size), classes=CLASSES,
                                 processes=os.cpu_count() or 1)
        print(f'wrote the files in {time.time() - t0:.1f} s', flush=True)
        print(f"{'path':40s} {'img/s':>8s} {'vs reference':>12s}  epoch seconds")
        rates = []
        for index, (name, extra) in enumerate(PATHS[:2] if args.smoke else PATHS):
            rate, seconds = train_rate(args, root, os.path.join(tmp, f'run{index}'), extra)
            rates.append(rate)
            print(f'{name:40s} {rate:8.1f} {rate / rates[0]:11.2f}x  {", ".join(f"{s:.2f}" for s in seconds)}',
                  flush=True)
    best = max(rates[1:])
    verdict = 'SMOKE: no claims' if args.smoke else 'met' if best >= 3 * rates[0] else 'NOT met'
    print(f'SUMMARY: {args.model} end to end, {args.workers} workers: ours {best:.1f} img/s against the reference '
          f'path\'s {rates[0]:.1f}: {best / rates[0]:.2f}x (target >= 3x: {verdict})')


if __name__ == '__main__':
    main()
