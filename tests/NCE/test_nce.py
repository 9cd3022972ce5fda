"""Tests for NCE/: contrast memories, negative sampling, alias tables and the two losses.

Expected values are written out from the formulas (SPEC section 4) with plain tensor ops, on tiny seeded inputs.
"""
import pathlib
import time

import pytest
import torch
import torch.nn.functional as F

from NCE import (AliasMethod, MemoryInsDis, MemoryMoCo, NCEAverage, NCECriterion, NCESoftmaxLoss,
                 sample_contrast_indices)
from NCE.NCEAverage import WHOLE_BANK_RATIO, score_against_memory

N, K, D, T, M = 20, 5, 8, 0.07, 0.5

# Tolerances for float32 results that the modules and the expected-value formulas below reach along different paths
# (whole-bank matmul / bmm vs einsum, F.normalize vs / norm): summation order and vectorisation are CPU dependent.
U = 2. ** -24       # float32 unit round-off, 6e-8
DOT_ATOL = 1e-6     # a D = 8-term dot of a unit feature and a memory row (norm <= sqrt(3) at init): D U sqrt(3) = 8e-7
LOGIT_ATOL = 2e-5   # dot / T: DOT_ATOL / T = 1.4e-5, plus the rounding of |dot / T| <= 25 (25 U = 1.5e-6)
EXP_RTOL = 2e-5     # exp(dot / T): its relative error is the absolute error of dot / T, i.e. LOGIT_ATOL
Z_RTOL = 3e-5       # Z = N x mean of B (K+1) <= 24 such terms: EXP_RTOL + 24 U for the sum
SCORE_RTOL = 5e-5   # exp(dot / T) / Z: EXP_RTOL + Z_RTOL
# a momentum-updated memory row has norm 1: the norm of D squares and the division cost a few U (~5e-7) per update;
# the norm's error scales the whole row, so dots with updated rows stay within DOT_ATOL (8 U + 5 U)
MEMORY_ATOL = 1e-6


def unit_features(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def given_idx(y, seed):
    """Contrast indices chosen by the test: column 0 = y, negatives arbitrary (repeats allowed)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, N, (y.numel(), K + 1), generator=g)
    idx[:, 0] = y
    return idx


def expected_scores(feature, memory, idx, temperature, z=None):
    """dots = memory[idx] . feature (B x (K+1)); softmax: dots / T; NCE: exp(dots / T) / Z (Z from this batch if None).
    """
    dots = torch.einsum('bkd,bd->bk', memory[idx], feature)
    if z == 'softmax':
        return dots / temperature, None
    exp_scores = torch.exp(dots / temperature)
    if z is None:
        z = exp_scores.mean() * N
    return exp_scores / z, z


def expected_memory(memory, y, feature, momentum):
    """Rows y -> normalise(m * row + (1 - m) * feature); all other rows unchanged."""
    out = memory.clone()
    mixed = momentum * memory[y] + (1 - momentum) * feature
    out[y] = mixed / mixed.norm(dim=1, keepdim=True)
    return out


@pytest.mark.parametrize('num_rows', [N, 1000])
def test_whole_bank_and_gathered_rows_give_the_same_scores_and_gradients(num_rows):
    g = torch.Generator().manual_seed(3)
    memory = unit_features(num_rows, D, seed=4)
    idx = torch.randint(0, num_rows, (7, K + 1), generator=g)
    weights = torch.randn(7, K + 1, generator=g)
    results = []
    for whole_bank in (True, False):
        feature = unit_features(7, D, seed=5).requires_grad_(True)
        scores = score_against_memory(feature, memory, idx, whole_bank=whole_bank)
        (scores * weights).sum().backward()
        results.append((scores.detach(), feature.grad))
    expected = torch.einsum('bkd,bd->bk', memory[idx], unit_features(7, D, seed=5))
    expected_grad = torch.einsum('bk,bkd->bd', weights, memory[idx])
    # the gradient sums K+1 terms w_k m_k (|m| <= 1, unit rows) on each side: (K+1) U sum_k |w_k| per side
    grad_atol = 2 * (K + 1) * U * float(weights.abs().sum(1).max())
    for scores, grad in results:
        assert torch.allclose(scores, expected, rtol=0, atol=DOT_ATOL) and torch.allclose(grad, expected_grad, rtol=0,
                                                                                          atol=grad_atol)
    # the default picks the whole bank only where it is small next to K + 1
    assert (num_rows <= WHOLE_BANK_RATIO * (K + 1)) == (num_rows == N)


def test_memory_update_after_scoring_leaves_the_gradient_intact():
    module = NCEAverage(D, N, K, T, M, use_softmax=True)
    l, ab = unit_features(4, D, seed=6).requires_grad_(True), unit_features(4, D, seed=7).requires_grad_(True)
    memory_ab = module.memory_ab.clone()
    y = torch.tensor([0, 3, 5, 9])
    idx = given_idx(y, seed=8)
    out_l, _ = module(l, ab, y, idx)                    # writes memory_ab rows y in place
    out_l.sum().backward()
    assert not torch.equal(module.memory_ab, memory_ab)
    # both sides sum K+1 rows (entries <= sqrt(3 / D)) / T in another order: (K+1) U x (K+1) sqrt(3 / D) / T each
    grad_atol = 2 * (K + 1) ** 2 * U * (3 / D) ** 0.5 / T
    assert torch.allclose(l.grad, memory_ab[idx].sum(1) / T, rtol=0, atol=grad_atol)  # the bank as it was when scored


# ---------------------------------------------------------------- NCEAverage (CMC)

def test_nce_average_nce_mode_two_calls():
    torch.manual_seed(0)
    module = NCEAverage(D, N, K, T, M)
    assert module.params.tolist() == pytest.approx([K, T, -1, -1, M], rel=2 * U, abs=0)  # T rounded to float32: <= U
    bound = 1 / (D / 3) ** 0.5
    assert module.memory_l.shape == (N, D) and module.memory_l.abs().max() <= bound
    assert module.memory_l.abs().max() > 0.8 * bound  # really spread over [-s, s]

    y1, y2 = torch.tensor([3, 0, 17]), torch.tensor([5, 3, 11, 19])
    l1, ab1 = unit_features(3, D, seed=1), unit_features(3, D, seed=2)
    l2, ab2 = unit_features(4, D, seed=3), unit_features(4, D, seed=4)
    idx1, idx2 = given_idx(y1, 5), given_idx(y2, 6)

    mem_l, mem_ab = module.memory_l.clone(), module.memory_ab.clone()
    out_l, out_ab = module(l1, ab1, y1, idx1)
    want_l, z_l = expected_scores(l1, mem_ab, idx1, T)  # l is scored against the ab memory
    want_ab, z_ab = expected_scores(ab1, mem_l, idx1, T)
    assert out_l.shape == out_ab.shape == (3, K + 1, 1)
    torch.testing.assert_close(out_l.squeeze(-1), want_l, rtol=SCORE_RTOL, atol=0)
    torch.testing.assert_close(out_ab.squeeze(-1), want_ab, rtol=SCORE_RTOL, atol=0)
    torch.testing.assert_close(module.params[2], z_l, rtol=Z_RTOL, atol=0)
    torch.testing.assert_close(module.params[3], z_ab, rtol=Z_RTOL, atol=0)
    assert float(z_l) != pytest.approx(float(z_ab), rel=Z_RTOL)  # one Z per view: apart by more than Z's rounding
    mem_l, mem_ab = expected_memory(mem_l, y1, l1, M), expected_memory(mem_ab, y1, ab1, M)
    torch.testing.assert_close(module.memory_l, mem_l, rtol=0, atol=MEMORY_ATOL)
    torch.testing.assert_close(module.memory_ab, mem_ab, rtol=0, atol=MEMORY_ATOL)

    # second call: Z frozen, scores use the updated memory
    out_l, out_ab = module(l2, ab2, y2, idx2)
    torch.testing.assert_close(out_l.squeeze(-1), expected_scores(l2, mem_ab, idx2, T, z_l)[0], rtol=SCORE_RTOL,
                               atol=0)
    torch.testing.assert_close(out_ab.squeeze(-1), expected_scores(ab2, mem_l, idx2, T, z_ab)[0], rtol=SCORE_RTOL,
                               atol=0)
    torch.testing.assert_close(module.params[2:4], torch.stack([z_l, z_ab]), rtol=Z_RTOL, atol=0)
    torch.testing.assert_close(module.memory_l, expected_memory(mem_l, y2, l2, M), rtol=0, atol=MEMORY_ATOL)
    torch.testing.assert_close(module.memory_ab, expected_memory(mem_ab, y2, ab2, M), rtol=0, atol=MEMORY_ATOL)
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[torch.cat([y1, y2])] = False
    assert torch.equal(module.memory_l[untouched], mem_l[untouched])
    assert torch.equal(module.memory_ab[untouched], mem_ab[untouched])


def test_nce_average_softmax_mode_and_batch_of_one():
    torch.manual_seed(1)
    module = NCEAverage(D, N, K, T, M, use_softmax=True)
    y = torch.tensor([7])
    l, ab, idx = unit_features(1, D, seed=7), unit_features(1, D, seed=8), given_idx(y, 9)
    mem_l, mem_ab = module.memory_l.clone(), module.memory_ab.clone()
    out_l, out_ab = module(l, ab, y, idx)
    assert out_l.shape == out_ab.shape == (1, K + 1, 1)
    torch.testing.assert_close(out_l.squeeze(-1), expected_scores(l, mem_ab, idx, T, 'softmax')[0], rtol=0,
                               atol=LOGIT_ATOL)
    torch.testing.assert_close(out_ab.squeeze(-1), expected_scores(ab, mem_l, idx, T, 'softmax')[0], rtol=0,
                               atol=LOGIT_ATOL)
    assert module.params[2:4].tolist() == [-1, -1]  # softmax mode never sets Z
    torch.testing.assert_close(module.memory_ab, expected_memory(mem_ab, y, ab, M), rtol=0, atol=MEMORY_ATOL)


def test_nce_average_z_momentum_running_average():
    torch.manual_seed(2)
    zm = 0.9
    module = NCEAverage(D, N, K, T, M, z_momentum=zm)
    y1, y2 = torch.tensor([1, 2]), torch.tensor([4, 9])
    l1, ab1, l2, ab2 = (unit_features(2, D, seed=s) for s in (10, 11, 12, 13))
    idx1, idx2 = given_idx(y1, 14), given_idx(y2, 15)
    mem_l, mem_ab = module.memory_l.clone(), module.memory_ab.clone()
    module(l1, ab1, y1, idx1)
    _, z_l1 = expected_scores(l1, mem_ab, idx1, T)
    _, z_ab1 = expected_scores(ab1, mem_l, idx1, T)
    # first call: plain estimate
    torch.testing.assert_close(module.params[2:4], torch.stack([z_l1, z_ab1]), rtol=Z_RTOL, atol=0)
    mem_l, mem_ab = expected_memory(mem_l, y1, l1, M), expected_memory(mem_ab, y1, ab1, M)
    out_l, out_ab = module(l2, ab2, y2, idx2)
    _, est_l = expected_scores(l2, mem_ab, idx2, T)
    _, est_ab = expected_scores(ab2, mem_l, idx2, T)
    z_l2, z_ab2 = zm * z_l1 + (1 - zm) * est_l, zm * z_ab1 + (1 - zm) * est_ab
    # a positive mix of two Z: Z_RTOL still (+ 2 U for the mix, within its margin)
    torch.testing.assert_close(module.params[2:4], torch.stack([z_l2, z_ab2]), rtol=Z_RTOL, atol=0)
    torch.testing.assert_close(out_l.squeeze(-1), expected_scores(l2, mem_ab, idx2, T, z_l2)[0], rtol=SCORE_RTOL,
                               atol=0)
    torch.testing.assert_close(out_ab.squeeze(-1), expected_scores(ab2, mem_l, idx2, T, z_ab2)[0], rtol=SCORE_RTOL,
                               atol=0)


def test_nce_average_gradient_treats_z_as_constant():
    torch.manual_seed(3)
    module = NCEAverage(D, N, K, T, M)
    y = torch.tensor([0, 6, 13])
    idx = given_idx(y, 16)
    l0, ab0 = unit_features(3, D, seed=17), unit_features(3, D, seed=18)
    mem_l, mem_ab = module.memory_l.clone(), module.memory_ab.clone()
    l, ab = l0.clone().requires_grad_(), ab0.clone().requires_grad_()
    out_l, out_ab = module(l, ab, y, idx)
    (out_l.pow(2).sum() + out_ab.sum()).backward()  # memory/params written in place after scoring: must not break
    l_ref, ab_ref = l0.clone().requires_grad_(), ab0.clone().requires_grad_()
    want_l, _ = expected_scores(l_ref, mem_ab, idx, T, module.params[2].clone())
    want_ab, _ = expected_scores(ab_ref, mem_l, idx, T, module.params[3].clone())
    (want_l.pow(2).sum() + want_ab.sum()).backward()
    # each entry sums over K+1 candidates c_k m_kd, c_k = 2 out_k^2 / T (l) or out_k / T (ab), Z shared: out_k^2 is off
    # by 2 EXP_RTOL, the sum adds (K+1) U, relative to s = sum_k |c_k m_kd|; compared in units of s
    grad_rtol = 2 * EXP_RTOL + (K + 1) * U
    s_l = torch.einsum('bk,bkd->bd', 2 * want_l.detach() ** 2 / T, mem_ab[idx].abs())
    s_ab = torch.einsum('bk,bkd->bd', want_ab.detach() / T, mem_l[idx].abs())
    torch.testing.assert_close(l.grad / s_l, l_ref.grad / s_l, rtol=0, atol=grad_rtol)
    torch.testing.assert_close(ab.grad / s_ab, ab_ref.grad / s_ab, rtol=0, atol=grad_rtol)


def test_modules_sample_with_the_uniform_sampler_when_idx_is_none():
    y = torch.tensor([2, 19, 0])
    l, ab = unit_features(3, D, seed=19), unit_features(3, D, seed=20)
    torch.manual_seed(4)
    given, sampled = NCEAverage(D, N, K, T, M), NCEAverage(D, N, K, T, M)
    sampled.load_state_dict(given.state_dict())
    torch.manual_seed(21)
    idx = sample_contrast_indices(y, K, N)
    torch.manual_seed(21)
    out_sampled = sampled(l, ab, y)
    out_given = given(l, ab, y, idx)
    for a, b in zip(out_sampled, out_given):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same module state, inputs and idx: bit-identical


# ---------------------------------------------------------------- MemoryInsDis

@pytest.mark.parametrize('use_softmax', [False, True])
def test_memory_insdis_two_calls(use_softmax):
    torch.manual_seed(5)
    module = MemoryInsDis(D, N, K, T, M, use_softmax=use_softmax)
    assert module.params.tolist() == pytest.approx([K, T, -1, M], rel=2 * U, abs=0)  # T rounded to float32: <= U
    y1, y2 = torch.tensor([4, 8, 15]), torch.tensor([16])  # second call: B == 1 keeps its batch dim
    x1, x2 = unit_features(3, D, seed=22), unit_features(1, D, seed=23)
    idx1, idx2 = given_idx(y1, 24), given_idx(y2, 25)
    mem = module.memory.clone()
    out = module(x1, y1, idx1)
    want, z = expected_scores(x1, mem, idx1, T, 'softmax' if use_softmax else None)
    assert out.shape == (3, K + 1)
    score_tol = dict(rtol=0, atol=LOGIT_ATOL) if use_softmax else dict(rtol=SCORE_RTOL, atol=0)  # dot / T or exp / Z
    torch.testing.assert_close(out, want, **score_tol)
    torch.testing.assert_close(module.params[2], torch.tensor(-1.) if use_softmax else z,
                               rtol=0 if use_softmax else Z_RTOL, atol=0)  # softmax: the exact -1 left alone
    mem = expected_memory(mem, y1, x1, M)
    torch.testing.assert_close(module.memory, mem, rtol=0, atol=MEMORY_ATOL)
    out = module(x2, y2, idx2)
    assert out.shape == (1, K + 1)
    torch.testing.assert_close(out, expected_scores(x2, mem, idx2, T, 'softmax' if use_softmax else z)[0], **score_tol)
    torch.testing.assert_close(module.memory, expected_memory(mem, y2, x2, M), rtol=0, atol=MEMORY_ATOL)


def test_memory_insdis_z_momentum_and_backward():
    torch.manual_seed(6)
    zm = 0.5
    module = MemoryInsDis(D, N, K, T, M, z_momentum=zm)
    y1, y2 = torch.tensor([1, 3]), torch.tensor([5, 7])
    x1, x2 = unit_features(2, D, seed=26), unit_features(2, D, seed=27).requires_grad_()
    idx1, idx2 = given_idx(y1, 28), given_idx(y2, 29)
    mem = module.memory.clone()
    module(x1, y1, idx1)
    z1 = expected_scores(x1, mem, idx1, T)[1]
    mem = expected_memory(mem, y1, x1, M)
    out = module(x2, y2, idx2)
    z2 = zm * z1 + (1 - zm) * expected_scores(x2.detach(), mem, idx2, T)[1]
    torch.testing.assert_close(module.params[2], z2, rtol=Z_RTOL, atol=0)  # a positive mix of two Z (+ 2 U)
    torch.testing.assert_close(out, expected_scores(x2.detach(), mem, idx2, T, z2)[0], rtol=SCORE_RTOL, atol=0)
    out.sum().backward()
    assert torch.isfinite(x2.grad).all() and x2.grad.abs().sum() > 0


# ---------------------------------------------------------------- MemoryMoCo

def test_memory_moco_logits_queue_wraparound_and_pointer():
    torch.manual_seed(7)
    queue_size, batch = 7, 3  # 7 is not a multiple of 3: calls write slots 0-2, 3-5, 6,0,1, 2-4
    module = MemoryMoCo(D, N, queue_size, T)
    assert module.memory.shape == (queue_size, D) and module.queue_ptr.dtype == torch.long
    queue = module.memory.clone()
    ptr, z = 0, None
    for call in range(4):
        q = unit_features(batch, D, seed=30 + call).requires_grad_()
        k = unit_features(batch, D, seed=40 + call)
        out = module(q, k)
        dots = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1)  # B x (1 + queue)
        exp_scores = torch.exp(dots / T)
        if z is None:
            z = exp_scores.mean() * N  # Z uses the data-set size, not the queue size
        assert out.shape == (batch, queue_size + 1)
        # the same ops as MemoryMoCo.forward, but matmul kernels may round differently (alignment, blocking)
        torch.testing.assert_close(out, exp_scores / z, rtol=SCORE_RTOL, atol=0)
        torch.testing.assert_close(module.params[0], z.detach(), rtol=Z_RTOL, atol=0)
        out.sum().backward()  # the queue is written in place after scoring: must not break backward
        assert k.grad is None and q.grad is not None
        for row in k:
            queue[ptr] = row
            ptr = (ptr + 1) % queue_size
        assert int(module.queue_ptr) == ptr
        torch.testing.assert_close(module.memory, queue, rtol=0, atol=0)  # keys copied into the queue
    assert ptr == 5

    # B > queue size: only the newest keys survive, in order
    k = unit_features(9, D, seed=50)
    module(unit_features(9, D, seed=51), k)
    for row in k:
        queue[ptr] = row
        ptr = (ptr + 1) % queue_size
    assert int(module.queue_ptr) == ptr
    torch.testing.assert_close(module.memory, queue, rtol=0, atol=0)  # keys copied into the queue


def test_memory_moco_softmax_and_batch_of_one():
    torch.manual_seed(8)
    module = MemoryMoCo(D, N, 4, T, use_softmax=True)
    queue = module.memory.clone()
    q, k = unit_features(1, D, seed=52), unit_features(1, D, seed=53)
    out = module(q, k)
    assert out.shape == (1, 5)
    torch.testing.assert_close(out, torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / T, rtol=0,
                               atol=LOGIT_ATOL)  # dot / T
    assert module.params.tolist() == [-1]


def test_memory_moco_checkpoint_keeps_pointer_and_loads_old_state_dicts():
    torch.manual_seed(9)
    module = MemoryMoCo(D, N, 7, T)
    for call in range(3):
        module(unit_features(2, D, seed=60 + call), unit_features(2, D, seed=70 + call))
    state = module.state_dict()
    assert set(state) == {'params', 'memory', 'queue_ptr'} and int(state['queue_ptr']) == 6

    restored = MemoryMoCo(D, N, 7, T)
    restored.load_state_dict(state)
    assert int(restored.queue_ptr) == 6
    torch.testing.assert_close(restored.memory, module.memory, rtol=0, atol=0)  # loaded copies
    torch.testing.assert_close(restored.params, module.params, rtol=0, atol=0)

    # reference checkpoint: no queue_ptr, params an int64 tensor
    old = {'params': torch.tensor([1234]), 'memory': module.memory.clone()}
    restored.load_state_dict(old)
    assert set(old) == {'params', 'memory'}  # the caller's dict is left alone
    assert int(restored.queue_ptr) == 0 and restored.params.tolist() == [1234.]
    assert restored.params.dtype == torch.float32
    # the pointer restarts at slot 0
    k = unit_features(2, D, seed=80)
    restored(unit_features(2, D, seed=81), k)
    torch.testing.assert_close(restored.memory[:2], k, rtol=0, atol=0)  # keys copied into the queue
    assert int(restored.queue_ptr) == 2


def test_reference_state_dict_keys_load_into_nce_average_and_insdis():
    torch.manual_seed(10)
    cmc, insdis = NCEAverage(D, N, K, T, M), MemoryInsDis(D, N, K, T, M)
    assert set(cmc.state_dict()) == {'params', 'memory_l', 'memory_ab'}
    assert set(insdis.state_dict()) == {'params', 'memory'}
    old = {'params': torch.tensor([K, 0.2, 55.0, 66.0, 0.9]),
           'memory_l': torch.zeros(N, D), 'memory_ab': torch.ones(N, D)}
    cmc.load_state_dict(old)
    # forward reads T (and Z, momentum) from the loaded params
    y = torch.tensor([1])
    l, ab, idx = unit_features(1, D, seed=82), unit_features(1, D, seed=83), given_idx(y, 84)
    out_l, _ = cmc(l, ab, y, idx)
    # dot with a row of ones (D terms, |l|_1 <= sqrt(D)) vs l.sum(): D U sqrt(D) = 1.4e-6, / T = 0.2 -> 7e-6 relative
    torch.testing.assert_close(out_l.squeeze(-1), torch.exp(ab.new_ones(1, K + 1) * l.sum() / 0.2) / 55.0, rtol=1e-5,
                               atol=0)


# ---------------------------------------------------------------- uniform negatives

def test_sampled_indices_exclude_positive_and_are_uniform():
    num_items, num_negatives = 20, 50
    y = torch.arange(2000) % num_items
    g = torch.Generator().manual_seed(11)
    idx = sample_contrast_indices(y, num_negatives, num_items, generator=g)
    assert idx.shape == (2000, num_negatives + 1) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], y)
    negatives = idx[:, 1:]
    assert (negatives != y[:, None]).all()
    assert negatives.min() == 0 and negatives.max() == num_items - 1
    # per positive v, counts of every other item: expected uniform over the 19 others
    counts = torch.zeros(num_items, num_items)
    counts.index_put_((y[:, None].expand_as(negatives).reshape(-1), negatives.reshape(-1)),
                      torch.ones(negatives.numel()), accumulate=True)
    assert counts.diagonal().sum() == 0
    expected = (2000 // num_items) * num_negatives / (num_items - 1)
    off_diagonal = ~torch.eye(num_items, dtype=torch.bool)
    chi2 = ((counts[off_diagonal] - expected) ** 2 / expected).sum()
    dof = num_items * (num_items - 2)
    assert 0.7 * dof < chi2 < 1.3 * dof, float(chi2)

    # B == 1 and the smallest data set (2 items: the only negative is the other one)
    one = sample_contrast_indices(torch.tensor([1]), 3, 2)
    assert one.tolist() == [[1, 0, 0, 0]]
    with pytest.raises(ValueError):
        sample_contrast_indices(torch.tensor([0]), 3, 1)


# ---------------------------------------------------------------- alias tables

def alias_atol(table):
    """Error of implied_distribution: P(i) n sums prob_i and (1 - prob_j) over the a_i columns j aliased to i, each
    off by <= U from prob's rounding to float32 (the float64 build is exact to ~1e-16): (1 + max a_i) U / n."""
    return (1 + int(torch.bincount(table.alias).max())) * U / table.prob.numel()


def implied_distribution(table):
    """P(i) = sum_j [prob_j (j == i) + (1 - prob_j) (alias_j == i)] / N."""
    prob, alias = table.prob.double(), table.alias
    assert prob.min() >= 0 and prob.max() <= 1
    assert alias.dtype == torch.long and alias.min() >= 0 and alias.max() < prob.numel()
    return (prob + torch.zeros_like(prob).index_add_(0, alias, 1 - prob)) / prob.numel()


@pytest.mark.parametrize('weights', [
    torch.rand(1000, generator=torch.Generator().manual_seed(12)),
    torch.rand(1000, generator=torch.Generator().manual_seed(13)) ** 8,  # very skewed
    torch.ones(37),
    torch.tensor([0., 0., 5., 0.]),  # one-hot
    torch.tensor([0., 1., 0., 1., 0., 0., 3.]),  # zeros among weights
    torch.tensor([1e-9, 1., 1., 1e-9, 2.]),
    [3, 1, 2],  # plain list of ints
    torch.tensor([4.]),  # single item
])
def test_alias_table_is_valid(weights):
    table = AliasMethod(weights)
    p = torch.as_tensor(weights, dtype=torch.float64)
    torch.testing.assert_close(implied_distribution(table), p / p.sum(), rtol=0, atol=alias_atol(table))
    zero = p == 0
    if zero.any():  # an impossible item is never kept nor used as an alias
        assert (table.prob.double()[zero] == 0).all() and not torch.isin(table.alias[~zero], zero.nonzero()).any()


def test_alias_draw_frequencies_and_device_move():
    weights = torch.tensor([0.1, 0.0, 0.3, 0.05, 0.55])
    table = AliasMethod(weights)
    assert table.to('cpu') is table
    torch.manual_seed(14)
    draws = table.draw(200_000)
    assert draws.shape == (200_000,) and draws.dtype == torch.long
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    # sampling noise: sd sqrt(p (1 - p) / 200k) <= 1.1e-3, so 5e-3 is > 4 sd
    torch.testing.assert_close(freq, weights.double(), rtol=0, atol=5e-3)
    assert freq[1] == 0
    moved = AliasMethod(weights).to('meta')
    assert moved.prob.device.type == moved.alias.device.type == 'meta'


def test_alias_table_for_imagenet_size_builds_fast():
    weights = torch.rand(1_281_167, generator=torch.Generator().manual_seed(15))
    start = time.perf_counter()
    table = AliasMethod(weights)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, elapsed
    torch.testing.assert_close(implied_distribution(table), weights.double() / weights.double().sum(),
                               rtol=0, atol=alias_atol(table))


def test_alias_rejects_bad_weights():
    for bad in ([], [0., 0.], [1., -1.], [1., float('nan')]):
        with pytest.raises(ValueError):
            AliasMethod(torch.tensor(bad))


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize('shape', [(4, K + 1, 1), (4, K + 1), (1, K + 1, 1), (1, K + 1)])
def test_nce_criterion_matches_formula(shape):
    g = torch.Generator().manual_seed(16)
    x = torch.rand(*shape, generator=g) * 0.01
    n_data = 50
    loss = NCECriterion(n_data)(x)
    assert loss.shape == (1,)
    flat = x.reshape(shape[0], K + 1)
    m, pn, eps = K, 1 / n_data, 1e-7
    want = 0.
    for b in range(shape[0]):
        p0 = float(flat[b, 0])
        want += torch.log(torch.tensor(p0 / (p0 + m * pn + eps), dtype=torch.float64))
        for i in range(1, K + 1):
            pi = float(flat[b, i])
            want += torch.log(torch.tensor(m * pn / (pi + m * pn + eps), dtype=torch.float64))
    want = -want / shape[0]
    # float32 log of ratios (a few U each, |log| <= ~10) summed over <= 24 terms: ~30 U = 2e-6 relative, 5x margin
    torch.testing.assert_close(loss.double(), want.reshape(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape', [(4, K + 1, 1), (4, K + 1), (1, K + 1, 1)])
def test_nce_softmax_loss_matches_cross_entropy(shape):
    g = torch.Generator().manual_seed(17)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    loss = NCESoftmaxLoss()(x)
    flat = x.detach().reshape(shape[0], K + 1)
    manual = -(flat[:, 0] - torch.logsumexp(flat, dim=1)).mean()
    # log_softmax vs logsumexp over K+1 = 6 logits |x| <= ~4: a few U of |x| + log 6 (~6 U x 5 = 2e-6)
    torch.testing.assert_close(loss.detach(), manual, rtol=0, atol=2e-6)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(flat, torch.zeros(shape[0], dtype=torch.long)), rtol=0,
                               atol=0)  # NCESoftmaxLoss is this very call
    loss.backward()
    assert x.grad.shape == x.shape


# ---------------------------------------------------------------- device / dtype agnostic

def test_no_cuda_calls_in_package():
    for path in (pathlib.Path(__file__).resolve().parents[2] / 'NCE').glob('*.py'):
        assert '.cuda' not in path.read_text(), path


def test_buffers_follow_dtype_and_device():
    torch.manual_seed(18)
    modules = [NCEAverage(D, N, K, T, M), MemoryInsDis(D, N, K, T, M), MemoryMoCo(D, N, 6, T, z_momentum=0.9)]
    y = torch.tensor([3, 4])
    inputs = [lambda dt, dev: (torch.randn(2, D, dtype=dt, device=dev), torch.randn(2, D, dtype=dt, device=dev),
                               y.to(dev)),
              lambda dt, dev: (torch.randn(2, D, dtype=dt, device=dev), y.to(dev)),
              lambda dt, dev: (torch.randn(2, D, dtype=dt, device=dev), torch.randn(2, D, dtype=dt, device=dev))]
    for module, make in zip(modules, inputs):
        float32 = {name: buf.clone() for name, buf in module.state_dict().items()}
        module.double()
        assert all(buf.dtype == (torch.long if name == 'queue_ptr' else torch.float64)
                   for name, buf in module.state_dict().items())
        out = module(*make(torch.float64, 'cpu'))  # sampling included for the memory banks
        for o in (out if isinstance(out, tuple) else (out,)):
            assert o.dtype == torch.float64 and torch.isfinite(o).all()
        module.float()
        assert float32['params'].dtype == module.params.dtype == torch.float32
        module.to('meta')  # every piece of state is a buffer that moves, and forward makes nothing on the CPU
        assert all(buf.device.type == 'meta' for buf in module.state_dict().values())
        out = module(*make(torch.float32, 'meta'))
        for o in (out if isinstance(out, tuple) else (out,)):
            assert o.device.type == 'meta'
