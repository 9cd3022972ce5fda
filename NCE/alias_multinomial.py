"""Negative sampling for the contrast memories.

Two samplers:
- `sample_contrast_indices`: the uniform case every training script uses. Nothing to build (the reference built a
  1.28M-entry alias table item by item in Python just to sample uniformly), vectorised on the labels' device, and the
  positive is never drawn among its own negatives (the reference could draw it).
- `AliasMethod`: Walker's alias method for non-uniform weights, with a vectorised O(N log N) table construction.
"""
import torch


def sample_contrast_indices(y, num_negatives, num_items, generator=None):
    """Uniform negatives for NCE (Wu et al. 2018, Sec. 3.2: noise distribution P_n = uniform over the data set).

    Returns idx, B x (K+1) long on y's device: column 0 is y, columns 1..K are uniform over the num_items - 1 items
    that are not y (draw in [0, N-2], then shift values >= y up by one).
    """
    if num_items < 2:
        raise ValueError(f"need at least 2 items to draw negatives, got num_items={num_items}")
    y = y.reshape(-1, 1).long()  # B x 1
    idx = torch.randint(0, num_items - 1, (y.size(0), num_negatives + 1), device=y.device,
                        generator=generator)  # B x (K+1), in [0, N-2]
    idx += (idx >= y).long()  # B x (K+1), in [0, N-1] \ {y}
    idx[:, :1] = y
    return idx


class AliasMethod:
    """Walker's alias method (Walker 1977; Vose 1991): O(1) draws from a fixed discrete distribution.

    `prob[i]` is the probability of keeping column i, `alias[i]` the item drawn otherwise. The table is built with a
    vectorised equivalent of the sequential small/large pairing (see `_build_alias_table`), so N = 1.28M takes well
    under a second instead of tens of seconds.
    """

    def __init__(self, probs):
        weights = torch.as_tensor(probs).detach().to('cpu', torch.float64).reshape(-1)  # N
        prob, alias = _build_alias_table(weights)
        self.prob = prob.float()  # N, float32 like the reference (bernoulli on GPU)
        self.alias = alias  # N, long

    def to(self, device):
        """Move the table to `device`; returns self (device-agnostic replacement of the reference's GPU-only move)."""
        self.prob = self.prob.to(device)
        self.alias = self.alias.to(device)
        return self

    def draw(self, N, generator=None):
        """Draw N samples (LongTensor, on the table's device)."""
        num_items = self.alias.size(0)
        column = torch.randint(0, num_items, (N,), device=self.prob.device, generator=generator)  # N
        keep = torch.rand(N, device=self.prob.device, generator=generator) < self.prob[column]  # N
        return torch.where(keep, column, self.alias[column])


def _build_alias_table(weights):
    """Alias table for float64 CPU `weights` (any non-negative scale), vectorised.

    Equivalent to the sequential algorithm that keeps one current donor: with q = N p, small items (q < 1) in order
    take their deficit d_j = 1 - q_j from the current large item l_k (excess e_k = q_k - 1); when a large item drops
    below 1 it becomes small itself, aliased to the next large item, which takes over its deficit. In cumulative terms
    (D = cumsum(d), E = cumsum(e)):
      small j:  alias = l_k with k = min{k : E_k >= D_{j-1}},  prob = q_j
      large k:  if some D_j > E_k (first such j): alias = l_{k+1}, prob = 1 + E_k - D_j  (in [0, 1));
                otherwise it is never exhausted: prob = 1.
    Two searchsorted calls make it O(N log N) with no Python loop over items.
    """
    num_items = weights.numel()
    if num_items == 0:
        raise ValueError("AliasMethod needs at least one weight")
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ValueError("AliasMethod weights must be finite and non-negative")
    total = weights.sum()
    if total <= 0:
        raise ValueError("AliasMethod weights must not all be zero")
    q = weights * (num_items / total)  # N, mean 1
    prob = torch.ones(num_items, dtype=torch.float64)
    alias = torch.arange(num_items)
    small = torch.nonzero(q < 1).flatten()
    large = torch.nonzero(q >= 1).flatten()
    if small.numel() == 0 or large.numel() == 0:  # all q == 1 up to rounding: every column keeps itself
        return prob, alias

    deficit = 1 - q[small]
    cum_deficit = torch.cumsum(deficit, 0)  # D_j
    cum_deficit_before = cum_deficit - deficit  # D_{j-1}
    cum_excess = torch.cumsum(q[large] - 1, 0)  # E_k

    donor = torch.searchsorted(cum_excess, cum_deficit_before, right=False).clamp_(max=large.numel() - 1)
    prob[small] = q[small]
    alias[small] = large[donor]

    exhausted_by = torch.searchsorted(cum_deficit, cum_excess, right=True)  # first j with D_j > E_k
    exhausted = exhausted_by < small.numel()
    exhausted[-1] = False  # the last large item absorbs rounding: in exact arithmetic D_a == E_b
    k = torch.nonzero(exhausted).flatten()
    prob[large[k]] = (1 + cum_excess[k] - cum_deficit[exhausted_by[k]]).clamp_(0, 1)
    alias[large[k]] = large[k + 1]
    return prob, alias
