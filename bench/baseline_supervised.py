"""A supervised reference on the bundled demo set: what the demo's labels buy when they train the encoder itself.

Trains one RGB ResNet-18 (the 64 px demo's InsDis / MoCo encoder, its fc replaced by a 9-way linear layer) end to end
with cross-entropy on the 1,528 training images, with the InsDis / MoCo crops (``--aug NULL``: random resized crop from
20% of the area, horizontal flip), SGD (momentum 0.9, weight decay 5e-4) and a cosine learning rate; one fresh run per
budget in ``--epochs``, each printing its final val top-1 (Resize + CenterCrop, as the probes) and its minutes.
This is not a self-supervised method and not part of the demo: it shows how far the labels themselves get within a
CPU budget (README, "The demo").

    python bench/baseline_supervised.py                 # budgets of 30 and 100 epochs
    python bench/baseline_supervised.py --epochs 30 --amp
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import dataset as ds  # noqa: E402
from models import build_ins_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', default='30,100', help='comma-separated budgets; one fresh run each')
    p.add_argument('--learning_rate', type=float, default=0.1)
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--amp', action='store_true', help='bfloat16 autocast (fast on CPUs with native bfloat16)')
    p.add_argument('--smoke', type=int, nargs='?', const=64, default=None, metavar='N',
                   help='train on the first N training images (default 64), 1 epoch: checks that it runs')
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.batch_size = '1', min(args.batch_size, 32)
    return args


def train_and_evaluate(epochs, args, train, val_x, val_y):
    """One fresh encoder trained for ``epochs`` with a cosine schedule; returns (val top-1 %, minutes)."""
    torch.manual_seed(args.seed)
    encoder = build_ins_model('resnet18')
    head = torch.nn.Linear(512, len(train.classes))
    view = ds.DeviceView('RGB')
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=args.learning_rate, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    total_steps, step, start = epochs * len(loader), 0, time.time()

    def logits(x):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=args.amp):
            return head(encoder(view(x), 6)).float()                           # B x classes

    encoder.train()
    for _ in range(epochs):
        for images, target, _ in loader:
            for group in optimizer.param_groups:
                group['lr'] = args.learning_rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            loss = F.cross_entropy(logits(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    encoder.eval()
    with torch.no_grad():
        top1 = (logits(val_x).argmax(1) == val_y).float().mean().item() * 100
    return top1, (time.time() - start) / 60


def main(argv=None):
    args = parse_args(argv)
    train = ds.build_dataset('demo', None, 'train', ds.moco_train_transform(64, 0.2, 'NULL'))
    val = ds.build_dataset('demo', None, 'val', ds.eval_transform(64))
    if args.smoke:
        train = torch.utils.data.Subset(train, range(args.smoke))
        train.classes = train.dataset.classes
        val = torch.utils.data.Subset(val, range(args.smoke))
    val_x = torch.stack([val[i][0] for i in range(len(val))])                 # N x 3 x 64 x 64 uint8
    val_y = torch.tensor([val[i][1] for i in range(len(val))])
    print(f'supervised ResNet-18 on the demo set ({len(train)} train / {len(val)} val), seed {args.seed}'
          f'{", bfloat16 autocast" if args.amp else ""}')
    for epochs in (int(e) for e in args.epochs.split(',')):
        top1, minutes = train_and_evaluate(epochs, args, train, val_x, val_y)
        print(f'{epochs:4d} epochs: val top-1 {top1:5.1f}%  ({minutes:.1f} min)', flush=True)


if __name__ == '__main__':
    main()
