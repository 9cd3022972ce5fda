"""util.py: the reference's utilities (adjust_learning_rate, AverageMeter, accuracy), importable as before."""
import argparse

import pytest
import torch

import util


def test_adjust_learning_rate_counts_decay_epochs_strictly_below():
    opt = argparse.Namespace(learning_rate=0.03, lr_decay_rate=0.1, lr_decay_epochs=[120, 160, 200])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    expected = {1: 0.03, 120: 0.03, 121: 0.003, 160: 0.003, 161: 0.0003, 201: 0.00003}
    for epoch, lr in expected.items():
        util.adjust_learning_rate(epoch, opt, optimizer)
        # float64 learning_rate x rate ** k vs the decimal literal: a few roundings of 1.1e-16 each
        assert optimizer.param_groups[0]['lr'] == pytest.approx(lr, rel=1e-15, abs=0)


def test_average_meter_and_accuracy():
    m = util.AverageMeter()
    m.update(2.0, n=3)
    m.update(4.0, n=1)
    assert (m.val, m.sum, m.count, m.avg) == (4.0, 10.0, 4, 2.5)
    output = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    target = torch.tensor([2, 0, 0, 1])
    top1, top2 = util.accuracy(output, target, topk=(1, 2))
    # sample 0: top1 wrong, top2 right; 1: right; 2: top1 wrong (2), top2 = {2, 1} wrong; 3: right
    assert top1.tolist() == [50.0] and top2.tolist() == [75.0]
