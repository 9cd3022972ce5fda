"""Colour-view throughput: the reference CPU path vs DeviceView.

Reference (per image, as the reference's data-loader workers did): scikit-image conversion in
float64, ToTensor, Normalize. Ours: PILToTensor per image, stack, then one DeviceView call on the
uint8 batch (on CPU, and on CUDA when available; the CUDA time includes the host-to-device copy).
Both start from the same pre-cut 224 x 224 PIL crops of scikit-image's bundled photographs, so the
crop itself (shared by both paths) is not timed.

    .venv/bin/python bench/bench_colour.py [--batch 256] [--size 224] [--spaces Lab YCbCr] [--threads 1]
"""

import argparse
import os
import sys
import time

import skimage.data
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dataset  # noqa: E402


def make_crops(batch, size, seed=0):
    """`batch` random-resized crops (size x size) of a few real photographs, as PIL images."""
    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in ('astronaut', 'coffee', 'chelsea', 'rocket')]
    crop = transforms.RandomResizedCrop(size, scale=(0.2, 1.0))
    torch.manual_seed(seed)
    return [crop(photos[i % len(photos)]) for i in range(batch)]


def time_reference(crops, space):
    mean, std = dataset.VIEW_STATS[space]
    pipeline = transforms.Compose([dataset.ColourConversion(space, use_skimage=True), transforms.ToTensor(),
                                   transforms.Normalize(mean, std)])
    start = time.perf_counter()
    out = torch.stack([pipeline(crop) for crop in crops])
    return time.perf_counter() - start, out


def time_device_view(crops, space, device, repeats=3):
    view = dataset.DeviceView(space).to(device)
    to_tensor = transforms.PILToTensor()
    best, out = float('inf'), None
    for _ in range(repeats):  # best of a few: the first CUDA call pays for kernel loading
        start = time.perf_counter()
        batch = torch.stack([to_tensor(crop) for crop in crops]).to(device)  # B x 3 x H x W uint8
        out = view(batch)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--spaces', nargs='+', default=['Lab', 'YCbCr'])
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (1 = per-core, like one data-loader worker)')
    parser.add_argument('--smoke', action='store_true', help='4 crops of 32 px: checks that it runs, no claims')
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.size = 4, 32
    torch.set_num_threads(args.threads)
    crops = make_crops(args.batch, args.size)
    devices = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    print(f"{args.batch} crops of {args.size}x{args.size}, torch threads={args.threads}")
    print(f"{'space':8s} {'path':24s} {'images/s':>10s} {'speed-up':>9s} {'max |diff|':>11s}")
    for space in args.spaces:
        space = dataset.canonical_space(space)
        seconds, reference = time_reference(crops, space)
        print(f"{space:8s} {'reference (skimage f64)':24s} {args.batch / seconds:10.1f} {'1.0x':>9s} {'':>11s}")
        for device in devices:
            ours_seconds, ours = time_device_view(crops, space, device)
            diff = (ours.double().cpu() - reference.double()).abs().max().item()
            print(f"{space:8s} {'DeviceView ' + device.type:24s} {args.batch / ours_seconds:10.1f} "
                  f"{seconds / ours_seconds:8.1f}x {diff:11.2e}")


if __name__ == '__main__':
    main()
