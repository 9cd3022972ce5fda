"""CMC training-step benchmark: the reference path next to ours, for the two changes that make CPU steps faster.

1. Scoring against the memory bank (forward + backward, one view): the reference gathers B x (K+1) x D rows and takes
   B dot products each; ours, when the bank has at most 4 (K+1) rows, multiplies by the whole bank and picks the
   B x (K+1) logits (`NCE.NCEAverage.score_against_memory`). Shapes: the demo's (N = 1,528, K = 1,024) and an
   ImageNet-size bank (N = 1,281,167, K = 16,384, where ours keeps the reference path).
2. One SGD step of a CMC encoder pair (default: the two half-width ResNet-18s, resnet18v1, at 64 px, B = 64): conv
   weights in the default (NCHW) layout, as the reference, against channels-last (`runtime.Runtime.place`), in
   float32 and under --amp; then the SUMMARY line: ours (autocast + channels-last) against the reference's float32
   NCHW step. On CUDA "float32" is PyTorch's default, so cuDNN convolutions may use TF32.

    .venv/bin/python bench/bench_step.py [--device cpu|cuda] [--threads N]
    .venv/bin/python bench/bench_step.py --device cuda --model resnet50v1 --image_size 224 --batch 128 --skip-banks
"""
import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from engine import runtime  # noqa: E402
from models import CMC_MODEL_NAMES, build_cmc_model  # noqa: E402
from NCE.NCEAverage import score_against_memory  # noqa: E402


def median_time(fn, device, repeats):
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[2:])[len(times[2:]) // 2]          # the first two calls warm up


def bench_scores(device, num_rows, K, batch=64, dim=128, repeats=12):
    g = torch.Generator().manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(num_rows, dim, generator=g), dim=1).to(device)
    idx = torch.randint(0, num_rows, (batch, K + 1), generator=g).to(device)
    feature = torch.randn(batch, dim, generator=g).to(device).requires_grad_(True)

    def step(whole_bank):
        scores = score_against_memory(feature, memory, idx, whole_bank=whole_bank)  # B x (K+1)
        (scores / 0.1).logsumexp(1).sum().backward()
        feature.grad = None
    reference = median_time(lambda: step(False), device, repeats)
    ours = median_time(lambda: step(None), device, repeats)
    return reference, ours


def bench_model(device, amp_dtype, channels_last, model_name='resnet18v1', size=64, batch=64, repeats=10):
    torch.manual_seed(0)
    rt = runtime.Runtime(device=device, amp_dtype=amp_dtype)
    model = build_cmc_model(model_name)
    model = rt.place(model) if channels_last else model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)

    def step():
        with rt.autocast():
            feat_l, feat_ab = model(x)
        (feat_l.float().sum() + feat_ab.float().sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return median_time(step, device, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch\'s)')
    p.add_argument('--model', default='resnet18v1', choices=CMC_MODEL_NAMES, help='the CMC encoder pair of the step rows')
    p.add_argument('--image_size', type=int, default=64)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--skip-banks', action='store_true', help='only the step rows')
    p.add_argument('--smoke', action='store_true', help='a tiny bank, batch 4, 3 repeats (overrides --batch): '
                   'checks that it runs')
    args = p.parse_args()
    if args.batch < 1 or args.image_size < 8 or (args.threads is not None and args.threads < 1):
        p.error('--batch and --threads must be at least 1, --image_size at least 8')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)')
    banks = ((('tiny bank', 256, 16),) if args.smoke else
             (('demo bank', 1528, 1024), ('ImageNet bank', 1_281_167, 16384)))
    banks = () if args.skip_banks else banks
    sizes = dict(model_name=args.model, size=args.image_size, batch=4 if args.smoke else args.batch)
    if args.smoke:
        sizes['repeats'] = 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True       # as a run without --seed: autotuned convolutions
    print(f'device {device}, {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}')
    print('| what | reference path | ours | speed-up |')
    print('|---|---:|---:|---:|')
    for name, num_rows, K in banks:
        reference, ours = bench_scores(device, num_rows, K, batch=64 if num_rows < 10_000 else 256,
                                       **({'repeats': 3} if args.smoke else {}))
        print(f'| scores + backward, {name} (N={num_rows}, K={K}) | {reference * 1e3:.2f} ms | {ours * 1e3:.2f} ms '
              f'| {reference / ours:.2f}x |', flush=True)
    amp_dtypes = [(None, 'float32')]
    if runtime.native_bf16(device):
        amp_dtypes.append((torch.bfloat16, 'bfloat16 autocast'))
    elif device.type == 'cuda':
        amp_dtypes.append((torch.float16, 'float16 autocast'))
    steps = {}
    for amp_dtype, label in amp_dtypes:
        reference = steps[label, 'NCHW'] = bench_model(device, amp_dtype, channels_last=False, **sizes)
        ours = steps[label, 'channels-last'] = bench_model(device, amp_dtype, channels_last=True, **sizes)
        print(f'| {args.model} SGD step, {args.image_size} px, B={sizes["batch"]}, {label} (NCHW vs channels-last) '
              f'| {reference * 1e3:.1f} ms | {ours * 1e3:.1f} ms | {reference / ours:.2f}x |', flush=True)
    if len(amp_dtypes) > 1:
        label = amp_dtypes[-1][1]
        reference, ours = steps['float32', 'NCHW'], steps[label, 'channels-last']
        print(f'SUMMARY: {args.model} step, {label} + channels-last {ours * 1e3:.1f} ms against float32 NCHW '
              f'{reference * 1e3:.1f} ms: {reference / ours:.2f}x (target >= 1.8x: '
              f'{"met" if reference >= 1.8 * ours else "NOT met"})')


if __name__ == '__main__':
    main()
