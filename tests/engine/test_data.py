"""engine.data: the resumable sampler's order depends on the seed and the epoch alone."""

import torch

from engine import data


def test_resumable_sampler_order_depends_only_on_seed_and_epoch():
    s = data.ResumableSampler(10, batch_size=3, seed=7)
    s.set_epoch(2)
    full = list(iter(s))
    assert len(full) == 9 and len(set(full)) == 9           # drop_last: 3 whole batches
    torch.manual_seed(123)                                   # the global RNG plays no part
    s.set_epoch(2, start_batch=1)
    assert list(iter(s)) == full[3:]
    s.set_epoch(3)
    assert list(iter(s)) != full
    # two processes split one epoch into disjoint halves
    a = data.ResumableSampler(10, 2, seed=7, rank=0, world_size=2)
    b = data.ResumableSampler(10, 2, seed=7, rank=1, world_size=2)
    assert set(a).isdisjoint(set(b)) and len(list(a)) == len(list(b)) == 4
