"""Contrast memories: CMC's two-view memory bank, InsDis' memory bank and MoCo's queue.

The three share one set of mechanics (functions below and `ContrastMemory`):
- contrast indices: column 0 the positive y, K uniform negatives that never include y;
- scoring a feature against memory rows: dot products, B x (K+1);
- calibration: softmax mode divides by T; NCE mode takes exp(dot / T) / Z with Z estimated on the first batch
  (Wu et al. 2018, Sec. 3.2: Z ~= n E_j[exp(v_j . f / T)]), then frozen (reference) or a running average (z_momentum);
- memory update: memory[y] = normalise(m memory[y] + (1 - m) feature) (memory bank of Wu et al. 2018, Sec. 3.1,
  with CMC's momentum, Sec. 3.4).
A module with any number of views is a loop over (feature, memory, Z slot) triples (`MultiviewContrast`, of which
CMC's two-view `NCEAverage` is the special case).

No host sync in any forward: hyper-parameters stay device tensors, the first-call test of Z is a torch.where.
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .alias_multinomial import sample_contrast_indices

__all__ = ['ContrastMemory', 'MultiviewContrast', 'contrast_view_pairs', 'NCEAverage', 'MemoryInsDis', 'MemoryMoCo',
           'score_against_memory', 'momentum_update_', 'init_memory', 'gather_from_all_processes']


def init_memory(num_rows, dim):
    """Memory bank init of the reference: uniform in [-s, s], s = 1 / sqrt(dim / 3) (unit expected row norm)."""
    bound = 1. / math.sqrt(dim / 3)
    return torch.rand(num_rows, dim).mul_(2 * bound).add_(-bound)  # num_rows x dim


WHOLE_BANK_RATIO = 4     # score against the whole bank when it has at most this many times K + 1 rows


def score_against_memory(feature, memory, idx, whole_bank=None):
    """Dot products v_idx . f (Wu et al. 2018, Sec. 3.1, before / T): feature B x D, idx B x (K+1) -> B x (K+1).

    Computed in the memory's dtype so NCE's exp(dot / T) (up to e^14 at T = 0.07) never overflows under autocast.
    Two ways to the same numbers: gather the B x (K+1) x D rows and take B dot products each (the reference), or,
    when the bank has at most WHOLE_BANK_RATIO x (K+1) rows (a small data set), score f against the whole bank with
    one B x D @ D x N matmul and pick the B x (K+1) entries: no copy of K+1 rows per sample (bench/bench_step.py).
    ``whole_bank`` forces one way (tests).
    """
    batch_size = feature.size(0)
    feature = feature.reshape(batch_size, -1).to(memory.dtype)  # B x D
    if whole_bank is None:
        whole_bank = memory.size(0) <= WHOLE_BANK_RATIO * idx.size(1)
    if whole_bank:
        # a copy: autograd keeps the bank for f's gradient, and the memory update writes it in place
        return (feature @ memory.clone().t()).gather(1, idx)  # B x N -> B x (K+1)
    rows = memory[idx]  # B x (K+1) x D, a gathered copy: later in-place memory writes do not touch it
    dots = torch.bmm(rows, feature.unsqueeze(-1))  # B x (K+1) x 1
    return dots.reshape(batch_size, -1)  # B x (K+1)


def _world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather_from_all_processes(x):
    """Concatenate x (B x ...) over the torchrun processes, in rank order; x itself in a single process.

    Every process then applies the same memory update, so the memory banks stay synchronised (the reference's
    banks drifted apart, each process updating only the rows of its own samples).
    """
    world_size = _world_size()
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def momentum_update_(memory, y, feature, momentum):
    """memory[y] <- normalise(momentum * memory[y] + (1 - momentum) * feature), in place, no gradient.

    (Wu et al. 2018, Sec. 3.1 memory bank; CMC Sec. 3.4 momentum update, one memory per view.)
    """
    mixed = memory[y] * momentum + feature.detach().reshape(y.numel(), -1).to(memory.dtype) * (1 - momentum)  # B x D
    memory.index_copy_(0, y, F.normalize(mixed, dim=1))


class ContrastMemory(nn.Module):
    """Shared mechanics of the contrast modules (sampling, calibration with Z, momentum update).

    Subclasses register a float buffer `params` holding their Z slot(s); `outputSize` is the data-set size n used in
    Z ~= n E[exp(dot / T)] (Wu et al. 2018, Sec. 3.2) and as the range of the negatives.
    """

    def __init__(self, outputSize, K, use_softmax=False, z_momentum=None):
        super().__init__()
        if z_momentum is not None and not 0 <= z_momentum <= 1:
            raise ValueError(f"z_momentum must be in [0, 1] or None, got {z_momentum}")
        self.outputSize = outputSize
        self.K = K
        self.use_softmax = use_softmax
        self.z_momentum = z_momentum

    def contrast_indices(self, y, idx=None):
        """idx as given, else B x (K+1) uniform indices with column 0 = y and y never among its negatives."""
        if idx is not None:
            return idx
        return sample_contrast_indices(y, self.K, self.outputSize)

    def calibrate(self, dots, temperature, z_slot):
        """Scores from dot products (B x (K+1)): dots / T (softmax) or exp(dots / T) / Z (NCE, Wu et al. Sec. 3.2).

        Z = params[z_slot] (< 0 means unset) is set on the first call to mean(exp(dots / T)) * outputSize, then kept
        (default) or averaged: Z <- z_momentum * Z + (1 - z_momentum) * estimate. The current call uses the new Z.
        No gradient flows through Z (the reference used it as a Python float).
        """
        if self.use_softmax:
            return dots / temperature  # B x (K+1)
        exp_scores = torch.exp(dots / temperature)  # B x (K+1)
        with torch.no_grad():
            estimate = exp_scores.mean() * self.outputSize
            if _world_size() > 1:                   # one Z for all processes: average their estimates
                dist.all_reduce(estimate)
                estimate = estimate / _world_size()
            z_current = self.params[z_slot]
            z_kept = z_current if self.z_momentum is None else \
                self.z_momentum * z_current + (1 - self.z_momentum) * estimate
            z = torch.where(z_current < 0, estimate, z_kept).to(self.params.dtype)  # fresh tensor, not a view
            self.params[z_slot] = z
        return exp_scores / z  # B x (K+1)

    def extra_repr(self):
        return (f"outputSize={self.outputSize}, K={self.K}, use_softmax={self.use_softmax}, "
                f"z_momentum={self.z_momentum}")


CONTRAST_PARADIGMS = ('core', 'full')


def contrast_view_pairs(num_views, paradigm='core'):
    """Unordered view pairs (i, j), i < j, that CMC contrasts (Tian et al. 2019, Sec. 3.3):
    'core' (eq. 6): the core view 0 with every other view; 'full' (eq. 7): every pair, in row order."""
    if paradigm not in CONTRAST_PARADIGMS:
        raise ValueError(f"paradigm must be one of {CONTRAST_PARADIGMS}, got {paradigm!r}")
    if paradigm == 'core':
        return [(0, j) for j in range(1, num_views)]
    return [(i, j) for i in range(num_views) for j in range(i + 1, num_views)]


class MultiviewContrast(ContrastMemory):
    """CMC memory bank for M >= 2 views (Tian et al. 2019, Contrastive Multiview Coding, Sec. 3.2-3.4).

    Sec. 3.3 "Contrasting more than two views": the core-view paradigm (eq. 6) contrasts view 1 with every other
    view, L_C = sum_{j>1} L(V1, Vj); the full graph (eq. 7) contrasts every pair, L_F = sum_{i<j} L(Vi, Vj).
    Each pair's loss is two-sided, L(Vi, Vj) = L^{Vi,Vj} + L^{Vj,Vi} (Sec. 3.2), so for every contrasted pair
    (i, j) two *ordered* pairs are scored: view i's feature against memory_j, and view j's against memory_i,
      dots = f_i . memory_j[idx]                                            (B x (K+1), column 0 the positive)
      score = dots / T  (softmax mode)   or   exp(dots / T) / Z_ij  (NCE, Wu et al. 2018 Sec. 3.2,
      Z_ij ~= n E[exp(dots / T)] set on the first call, then kept or averaged with z_momentum).
    One idx (K uniform negatives per sample) is drawn per call and shared by all ordered pairs. After scoring,
    every view's memory is updated, memory_v[y] <- normalise(m memory_v[y] + (1 - m) f_v) (Sec. 3.4; Wu et al.
    2018 Sec. 3.1), with the features of all processes under DDP.

    Buffers (all state): ``memory_<view>`` (n x D, the view name lowercased) for each view in ``views`` order, and
    ``params`` = [K, T, Z of each ordered pair in ``pair_names()`` order, momentum] (negative Z = not set yet).
    With views ('l', 'ab') this is exactly the reference's two-view layout: params = [K, T, Z_l, Z_ab, momentum],
    memory_l, memory_ab (see NCEAverage).

    Pair names (``pair_names()``, usable as TensorBoard tags / console labels): '<vi>_<vj>' = view vi's feature
    scored against view vj's memory, with the view names as given (e.g. 'L_ab', 'ab_L', 'L_depth', 'depth_L').
    ``forward(feats, y, idx=None)`` returns a dict {pair name: B x (K+1) x 1 scores} in that order.
    """

    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None,
                 views=('L', 'ab'), paradigm='core'):
        super().__init__(outputSize, K, use_softmax, z_momentum)
        self.views = tuple(views)
        self.paradigm = paradigm
        self._check_view_names()
        self.ordered_pairs = [ordered for i, j in contrast_view_pairs(len(self.views), paradigm)
                              for ordered in ((i, j), (j, i))]  # (anchor view, memory view)
        if len(set(self.pair_names())) != len(self.ordered_pairs):
            raise ValueError(f"view names {self.views} give ambiguous pair names {self.pair_names()}")
        num_z = len(self.ordered_pairs)
        self.register_buffer('params', torch.tensor([K, T] + [-1.] * num_z + [momentum]))
        self.momentum_slot = 2 + num_z
        for view in self.views:  # one rand draw per view, in view order (the reference drew l, then ab)
            self.register_buffer(self.memory_name(view), init_memory(outputSize, inputSize))

    def _check_view_names(self):
        if len(self.views) < 2:
            raise ValueError(f"CMC needs at least two views, got {self.views}")
        lowered = [view.lower() for view in self.views]
        if len(set(lowered)) != len(lowered) or not all(view.isidentifier() for view in lowered):
            raise ValueError(f"view names must be distinct identifiers (case-insensitively), got {self.views}")

    @staticmethod
    def memory_name(view):
        """Buffer name of a view's memory bank: 'memory_' + the view name lowercased ('L' -> 'memory_l')."""
        return f'memory_{view.lower()}'

    def memory(self, view_index):
        return getattr(self, self.memory_name(self.views[view_index]))  # n x D

    def pair_names(self):
        """Names of the scored ordered pairs, in output / Z order: '<anchor view>_<memory view>'."""
        return [f'{self.views[i]}_{self.views[j]}' for i, j in self.ordered_pairs]

    def forward(self, feats, y, idx=None):
        """feats: one B x D feature per view (``views`` order); y: B long indices into the data set.

        Returns {pair name: B x (K+1) x 1}; column 0 scores the positive (the same sample in the other view).
        """
        if len(feats) != len(self.views):
            raise ValueError(f"expected {len(self.views)} views' features, got {len(feats)}")
        y = y.reshape(-1)
        idx = self.contrast_indices(y, idx)  # B x (K+1), one draw shared by all pairs
        # clones: `params` is written in place below (Z), and autograd keeps the divisor T for backward
        temperature, momentum = self.params[1].clone(), self.params[self.momentum_slot].clone()
        scores = {}
        for slot, (name, (anchor, other)) in enumerate(zip(self.pair_names(), self.ordered_pairs), 2):
            dots = score_against_memory(feats[anchor], self.memory(other), idx)  # B x (K+1)
            scores[name] = self.calibrate(dots, temperature, slot).unsqueeze(-1)  # B x (K+1) x 1
        self.update_memories_(feats, y, momentum)
        return scores

    def update_memories_(self, feats, y, momentum):
        """Momentum update of every view's memory with the batch of all processes (no gradient)."""
        y_all = gather_from_all_processes(y)  # B_total
        for index, feature in enumerate(feats):
            momentum_update_(self.memory(index), y_all, gather_from_all_processes(feature.detach()), momentum)

    def extra_repr(self):
        return f"{super().extra_repr()}, views={self.views}, paradigm={self.paradigm!r}"


class NCEAverage(MultiviewContrast):
    """CMC two-view memory bank (Tian et al. 2019, Contrastive Multiview Coding, Sec. 3.2-3.4): the
    MultiviewContrast of views ('l', 'ab').

    Each view's feature is scored against the *other* view's memory: out_l = l . memory_ab[idx],
    out_ab = ab . memory_l[idx]. Buffers (reference names): params = [K, T, Z_l, Z_ab, momentum], memory_l, memory_ab.
    """

    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None):
        super().__init__(inputSize, outputSize, K, T, momentum, use_softmax, z_momentum, views=('l', 'ab'))

    def forward(self, l, ab, y, idx=None):
        """l, ab: B x D features; y: B long indices. Returns (out_l, out_ab), each B x (K+1) x 1."""
        scores = super().forward([l, ab], y, idx)
        return scores['l_ab'], scores['ab_l']


class MemoryInsDis(ContrastMemory):
    """Instance discrimination memory bank (Wu et al. 2018, Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination, Sec. 3.1-3.2). Buffers (reference names): params = [K, T, Z, momentum], memory.
    """

    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None):
        super().__init__(outputSize, K, use_softmax, z_momentum)
        self.register_buffer('params', torch.tensor([K, T, -1., momentum]))
        self.register_buffer('memory', init_memory(outputSize, inputSize))

    def forward(self, x, y, idx=None):
        """x: B x D features; y: B long indices. Returns B x (K+1) (the batch dim is kept even when B == 1)."""
        y = y.reshape(-1)
        idx = self.contrast_indices(y, idx)  # B x (K+1)
        temperature, momentum = self.params[1].clone(), self.params[3].clone()
        out = self.calibrate(score_against_memory(x, self.memory, idx), temperature, 2)  # B x (K+1)
        momentum_update_(self.memory, gather_from_all_processes(y), gather_from_all_processes(x.detach()), momentum)
        return out


class MemoryMoCo(ContrastMemory):
    """MoCo queue of keys (He et al. 2019, Momentum Contrast, Sec. 3.2, Algorithm 1): logits [q.k, q.queue].

    Buffers: params = [Z] (reference name), memory = the K x inputSize queue, and queue_ptr (new: the reference kept
    the write position in a Python attribute, lost across checkpoints; old checkpoints load with queue_ptr = 0).
    outputSize (the data-set size) only scales Z.
    """

    def __init__(self, inputSize, outputSize, K, T=0.07, use_softmax=False, z_momentum=None):
        super().__init__(outputSize, K, use_softmax, z_momentum)
        self.T = T
        self.register_buffer('params', torch.tensor([-1.]))  # float: the reference's int tensor truncated Z
        self.register_buffer('memory', init_memory(K, inputSize))
        self.register_buffer('queue_ptr', torch.zeros((), dtype=torch.long))

    def forward(self, q, k):
        """q: B x D queries, k: B x D keys (detached). Returns B x (K+1); column 0 is the positive q.k."""
        batch_size = q.size(0)
        k = k.detach().reshape(batch_size, -1)  # B x D
        # snapshot: the enqueue below writes memory in place, and autograd keeps the queue for q's gradient
        queue = self.memory.clone()  # K x D
        q = q.reshape(batch_size, -1).to(queue.dtype)  # B x D
        positive = (q * k.to(queue.dtype)).sum(1, keepdim=True)  # B x 1
        negatives = q @ queue.t()  # B x K
        dots = torch.cat([positive, negatives], dim=1).to(queue.dtype)  # B x (K+1)
        out = self.calibrate(dots, self.T, 0)
        self.enqueue_(gather_from_all_processes(k))     # every process enqueues all keys: one shared queue
        return out

    @torch.no_grad()
    def enqueue_(self, keys):
        """Write keys (B x D) at the pointer, wrapping around the end; advance the pointer by B (all on device)."""
        batch_size, queue_size = keys.size(0), self.memory.size(0)
        first_kept = max(batch_size - queue_size, 0)  # when B > queue size only the newest keys survive
        slots = (torch.arange(first_kept, batch_size, device=keys.device) + self.queue_ptr) % queue_size  # B'
        self.memory.index_copy_(0, slots, keys[first_kept:].to(self.memory.dtype))
        self.queue_ptr.copy_((self.queue_ptr + batch_size) % queue_size)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # checkpoints of the reference code have no pointer: start writing at slot 0
        # (load_state_dict hands us its own shallow copy of the caller's dict, so adding a key is safe)
        state_dict.setdefault(prefix + 'queue_ptr', torch.zeros_like(self.queue_ptr))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self):
        return f"{super().extra_repr()}, T={self.T}"
