"""engine.schedule: the cosine schedule and the warm-up in closed form against torch's scheduler and the formulas."""
import argparse

import pytest
import torch

from engine import schedule


def test_cosine_and_warmup_closed_forms():
    opt = argparse.Namespace(learning_rate=10.0, lr_decay_rate=0.2, epochs=60)
    eta_min = 10.0 * 0.2 ** 3 * 0.1
    # what torch's CosineAnnealingLR gives after `epoch` steps (the reference stepped it at each epoch's start)
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([p], lr=10.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(o, 60, eta_min)
    for epoch in range(1, 61):
        o.step()
        sched.step()
        # torch's scheduler updates lr recursively over 60 float64 steps, dividing by (1 + cos) terms near 0 at
        # the end: its rounding grows far past 1e-16, still many orders below 1e-9
        assert schedule.cosine_learning_rate(epoch, opt) == pytest.approx(o.param_groups[0]['lr'], rel=1e-9, abs=0)
    assert schedule.warmup_factor(1, 0, 10, 5) == 1 / 50  # the same float64 division: exact
    assert schedule.warmup_factor(5, 9, 10, 5) == 1.0  # 50 / 50: exact
    assert schedule.warmup_factor(6, 0, 10, 5) == 1.0
