"""What the finite-state check costs per save (engine.finite: every tensor of the state is checked before a checkpoint
is written), at ImageNet scale: CMC's resnet50v1 pair with its SGD momentum and two memory banks of 1,281,167 x 128
float32 (1.3 GB), the state `train_CMC.py --model resnet50v1` saves every epoch.

  reference path: the save alone (torch.save of the state; to /dev/null: serialisation only, the cheapest a save
                  can be; with --disk, to a file in --folder, fsync'd, as engine.checkpoint writes it)
  ours:           the check (one min and max per tensor, one host sync), then the same save

    .venv/bin/python bench/bench_finite.py [--disk] [--folder /tmp] [--repeats 3] [--device cpu|cuda]
    .venv/bin/python bench/bench_finite.py --smoke
"""
import argparse
import os
import pathlib
import sys
import tempfile

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from engine.finite import first_non_finite, run_tensors  # noqa: E402
from models import build_cmc_model  # noqa: E402
from NCE import MultiviewContrast  # noqa: E402
from bench_step import median_time  # noqa: E402  (bench/, the script's own folder, is on sys.path)

IMAGENET = 1_281_167


def make_state(model_name, n_data, device):
    """(modules, optimizer) of a CMC run after one step: the encoder pair, its memory banks, SGD momentum."""
    torch.manual_seed(0)
    model = build_cmc_model(model_name).to(device)
    contrast = MultiviewContrast(128, n_data, 16384 if n_data > 16384 else 8).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    model(torch.randn(2, 3, 64, 64, device=device))[0].sum().backward()
    optimizer.step()
    return {'model': model, 'contrast': contrast}, optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='resnet50v1')
    parser.add_argument('--n_data', type=int, default=IMAGENET)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--disk', action='store_true', help='save to a file in --folder (fsync) instead of /dev/null')
    parser.add_argument('--folder', default=tempfile.gettempdir())
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes, one repeat: checks that it runs')
    args = parser.parse_args()
    if args.smoke:
        args.model, args.n_data, args.repeats = 'resnet18v1', 1000, 1
    device = torch.device(args.device)
    modules, optimizer = make_state(args.model, args.n_data, device)
    named = run_tensors(modules, optimizer)
    size = sum(t.numel() * t.element_size() for _, t in named)

    def check():
        assert first_non_finite(run_tensors(modules, optimizer)) is None

    def save():
        state = {key: m.state_dict() for key, m in modules.items()}
        state['optimizer'] = optimizer.state_dict()
        if not args.disk:
            with open(os.devnull, 'wb') as f:
                torch.save(state, f)
            return
        with tempfile.NamedTemporaryFile(dir=args.folder, suffix='.pth') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    checked = median_time(check, device, args.repeats + 2)        # the first two calls warm up
    saved = median_time(save, device, args.repeats + 2)
    where = f'a file in {args.folder} (fsync)' if args.disk else '/dev/null (serialisation only)'
    print(f'state: {args.model} pair + momentum + 2 memory banks of {args.n_data:,} x 128: {len(named)} tensors, '
          f'{size / 2 ** 30:.2f} GiB, on {device}; {torch.get_num_threads()} thread(s), torch {torch.__version__}')
    print(f'| what | seconds (median of {args.repeats}, after 2 warm-ups) |\n|---|---:|')
    print(f'| reference path: save to {where} | {saved:.3f} |')
    print(f'| the finite check alone | {checked:.3f} |')
    print(f'| ours: check + save | {checked + saved:.3f} |')
    print(f'SUMMARY: the finite check adds {checked:.3f} s to a {saved:.3f} s save: ours / reference = '
          f'{(checked + saved) / saved:.3f}x ({100 * checked / saved:.1f}% more per save)')


if __name__ == '__main__':
    main()
