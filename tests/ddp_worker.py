"""Run by tests/engine/test_scaling.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): a few steps of each method on
tiny random models and data, the sharded evaluation helpers, and the loader's per-process streams. Each process
writes what it ended with to ``<out>/rank<r>.pt``; the test compares the processes (and a one-process run).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT
"""
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine.data import eval_loader, make_loader, set_loader_epoch   # noqa: E402
from engine.knn import knn_accuracy                                  # noqa: E402
from engine.runtime import Runtime                                   # noqa: E402
from methods import CMC, InsDis, MoCo                                # noqa: E402

N_DATA, FEAT, K, BATCH = 32, 8, 6, 8          # BATCH: the global batch; each of W processes takes BATCH / W


class Tiny(nn.Module):
    """3 x 8 x 8 -> FEAT, with BatchNorm (``bn``) or without (to compare against one process exactly)."""

    def __init__(self, bn=True, views=1):
        super().__init__()
        self.views = views
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc = nn.Linear(4 * views, FEAT * views)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))                # B x 4
        out = self.fc(h.repeat(1, self.views))
        return list(out.chunk(self.views, 1)) if self.views > 1 else out


def batch(step, rt):
    """This process's slice of global batch ``step``: rows rank*b .. (rank+1)*b - 1 (b = BATCH / W)."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 6, 8, 8, generator=g)
    index = torch.randperm(N_DATA, generator=g)[:BATCH]
    b = BATCH // rt.world_size
    return x[rt.rank * b:(rt.rank + 1) * b], index[rt.rank * b:(rt.rank + 1) * b]


def train(method_name, rt, steps=3, bn=True):
    """``steps`` SGD steps of one method; returns its state dict (and the encoder's gradient of the last step)."""
    torch.manual_seed(0)                              # the same initial model in every process
    if method_name == 'cmc':
        method = CMC(Tiny(bn, views=2), FEAT, N_DATA, K, T=0.1, use_softmax=True)
    elif method_name == 'insdis':
        method = InsDis(Tiny(bn), FEAT, N_DATA, K, T=0.1, use_softmax=True)
    else:
        method = MoCo(Tiny(bn), FEAT, N_DATA, K, T=0.1, use_softmax=True, alpha=0.9)
    method.set_runtime(rt)
    torch.manual_seed(1 + rt.rank)                    # as setup_runtime: another stream per process
    optimizer = torch.optim.SGD(method.encoder.parameters(), lr=0.5, momentum=0.9)
    for step in range(steps):
        x, index = batch(step, rt)
        loss = method(x if method_name == 'moco' else x[:, :3], index).loss     # MoCo: query | key crops
        optimizer.zero_grad()
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in method.encoder.parameters()])
        optimizer.step()
        method.after_step()
    return {'state': {k: v.clone() for k, v in method.state_dict().items()}, 'grad': grad}


class Items(torch.utils.data.Dataset):
    """Item i: (x, label i % 3, i); x is a random number drawn by whoever loads it, as a random crop would be, or
    with ``random=False`` a fixed feature near the label (for the kNN)."""

    def __init__(self, random=True):
        self.random = random

    def __len__(self):
        return 13

    def __getitem__(self, i):
        x = torch.rand(1) if self.random else torch.tensor([i % 3 + 0.3 * ((i * 7) % 5)])
        return x, i % 3, i


def loaders(rt):
    """The first batch of a 2-worker training loader (the augmentation stream) and the shards of an eval loader."""
    opt = SimpleNamespace(batch_size=2, num_workers=2)
    loader = make_loader(Items(), opt, rt, seed=5)
    set_loader_epoch(loader, 1)
    first = next(iter(loader))
    seen = torch.cat([i for _, _, i in eval_loader(Items(), SimpleNamespace(batch_size=4, num_workers=0), rt,
                                                   shard=True)])
    return {'draws': first[0].reshape(-1), 'shard': seen, 'gathered': rt.gather_shards(seen.float() * 10)}


def knn(rt):
    """kNN top-1 over the Items set with features (label + noise): sharded processes must agree with one."""
    opt = SimpleNamespace(batch_size=3, num_workers=0)

    def encode(x):
        return torch.cat([x, torch.ones_like(x)], 1)

    items = Items(random=False)
    return knn_accuracy(encode, eval_loader(items, opt, rt, shard=True), eval_loader(items, opt, rt, shard=True),
                        3, rt, k=3)


def probe_validation(rt):
    """The probe's validation (engine.probe.Validation) of a fixed linear head over the 13 items, sharded."""
    from engine.probe import Validation
    torch.manual_seed(0)
    head = nn.Linear(1, 3)
    opt = SimpleNamespace(batch_size=4, num_workers=0, print_freq=100)
    loader = eval_loader(Items(random=False), opt, rt, shard=True)
    validation = Validation(opt, rt, head, lambda: ((x, t) for x, t, _ in loader), len(loader), 3, None, (None, None))
    meters = validation.run()
    return {key: (meters[key].count, meters[key].avg) for key in ('loss', 'acc1', 'acc5')}


def run(rt):
    """Everything this file checks, for one runtime (several processes, or the test's own single one)."""
    result = {name: train(name, rt) for name in ('cmc', 'insdis', 'moco')}
    result['moco_no_bn'] = train('moco', rt, steps=1, bn=False)
    result['insdis_no_bn'] = train('insdis', rt, steps=1, bn=False)
    result.update(loaders(rt), knn=knn(rt), validation=probe_validation(rt))
    return result


def main(out):
    dist.init_process_group('gloo')
    rt = Runtime(device=torch.device('cpu'), rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ['LOCAL_RANK']), scaler=torch.amp.GradScaler('cpu', enabled=False))
    torch.save(run(rt), os.path.join(out, f'rank{rt.rank}.pt'))
    dist.destroy_process_group()


if __name__ == '__main__':
    torch.set_num_threads(1)
    main(sys.argv[1])
