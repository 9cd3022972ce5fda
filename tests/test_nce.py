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
    for scores, grad in results:
        assert torch.allclose(scores, expected, atol=1e-6) and torch.allclose(grad, expected_grad, atol=1e-6)
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
    assert torch.allclose(l.grad, memory_ab[idx].sum(1) / T, atol=1e-5)  # the bank as it was when scored


# ---------------------------------------------------------------- NCEAverage (CMC)

def test_nce_average_nce_mode_two_calls():
    torch.manual_seed(0)
    module = NCEAverage(D, N, K, T, M)
    assert module.params.tolist() == pytest.approx([K, T, -1, -1, M])
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
    torch.testing.assert_close(out_l.squeeze(-1), want_l)
    torch.testing.assert_close(out_ab.squeeze(-1), want_ab)
    torch.testing.assert_close(module.params[2], z_l)
    torch.testing.assert_close(module.params[3], z_ab)
    assert float(z_l) != pytest.approx(float(z_ab))  # one Z per view
    mem_l, mem_ab = expected_memory(mem_l, y1, l1, M), expected_memory(mem_ab, y1, ab1, M)
    torch.testing.assert_close(module.memory_l, mem_l)
    torch.testing.assert_close(module.memory_ab, mem_ab)

    # second call: Z frozen, scores use the updated memory
    out_l, out_ab = module(l2, ab2, y2, idx2)
    torch.testing.assert_close(out_l.squeeze(-1), expected_scores(l2, mem_ab, idx2, T, z_l)[0])
    torch.testing.assert_close(out_ab.squeeze(-1), expected_scores(ab2, mem_l, idx2, T, z_ab)[0])
    torch.testing.assert_close(module.params[2:4], torch.stack([z_l, z_ab]))
    torch.testing.assert_close(module.memory_l, expected_memory(mem_l, y2, l2, M))
    torch.testing.assert_close(module.memory_ab, expected_memory(mem_ab, y2, ab2, M))
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
    torch.testing.assert_close(out_l.squeeze(-1), expected_scores(l, mem_ab, idx, T, 'softmax')[0])
    torch.testing.assert_close(out_ab.squeeze(-1), expected_scores(ab, mem_l, idx, T, 'softmax')[0])
    assert module.params[2:4].tolist() == [-1, -1]  # softmax mode never sets Z
    torch.testing.assert_close(module.memory_ab, expected_memory(mem_ab, y, ab, M))


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
    torch.testing.assert_close(module.params[2:4], torch.stack([z_l1, z_ab1]))  # first call: plain estimate
    mem_l, mem_ab = expected_memory(mem_l, y1, l1, M), expected_memory(mem_ab, y1, ab1, M)
    out_l, out_ab = module(l2, ab2, y2, idx2)
    _, est_l = expected_scores(l2, mem_ab, idx2, T)
    _, est_ab = expected_scores(ab2, mem_l, idx2, T)
    z_l2, z_ab2 = zm * z_l1 + (1 - zm) * est_l, zm * z_ab1 + (1 - zm) * est_ab
    torch.testing.assert_close(module.params[2:4], torch.stack([z_l2, z_ab2]))
    torch.testing.assert_close(out_l.squeeze(-1), expected_scores(l2, mem_ab, idx2, T, z_l2)[0])
    torch.testing.assert_close(out_ab.squeeze(-1), expected_scores(ab2, mem_l, idx2, T, z_ab2)[0])


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
    torch.testing.assert_close(l.grad, l_ref.grad)
    torch.testing.assert_close(ab.grad, ab_ref.grad)


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
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- MemoryInsDis

@pytest.mark.parametrize('use_softmax', [False, True])
def test_memory_insdis_two_calls(use_softmax):
    torch.manual_seed(5)
    module = MemoryInsDis(D, N, K, T, M, use_softmax=use_softmax)
    assert module.params.tolist() == pytest.approx([K, T, -1, M])
    y1, y2 = torch.tensor([4, 8, 15]), torch.tensor([16])  # second call: B == 1 keeps its batch dim
    x1, x2 = unit_features(3, D, seed=22), unit_features(1, D, seed=23)
    idx1, idx2 = given_idx(y1, 24), given_idx(y2, 25)
    mem = module.memory.clone()
    out = module(x1, y1, idx1)
    want, z = expected_scores(x1, mem, idx1, T, 'softmax' if use_softmax else None)
    assert out.shape == (3, K + 1)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(module.params[2], torch.tensor(-1.) if use_softmax else z)
    mem = expected_memory(mem, y1, x1, M)
    torch.testing.assert_close(module.memory, mem)
    out = module(x2, y2, idx2)
    assert out.shape == (1, K + 1)
    torch.testing.assert_close(out, expected_scores(x2, mem, idx2, T, 'softmax' if use_softmax else z)[0])
    torch.testing.assert_close(module.memory, expected_memory(mem, y2, x2, M))


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
    torch.testing.assert_close(module.params[2], z2)
    torch.testing.assert_close(out, expected_scores(x2.detach(), mem, idx2, T, z2)[0])
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
        torch.testing.assert_close(out, exp_scores / z)
        torch.testing.assert_close(module.params[0], z.detach())
        out.sum().backward()  # the queue is written in place after scoring: must not break backward
        assert k.grad is None and q.grad is not None
        for row in k:
            queue[ptr] = row
            ptr = (ptr + 1) % queue_size
        assert int(module.queue_ptr) == ptr
        torch.testing.assert_close(module.memory, queue)
    assert ptr == 5

    # B > queue size: only the newest keys survive, in order
    k = unit_features(9, D, seed=50)
    module(unit_features(9, D, seed=51), k)
    for row in k:
        queue[ptr] = row
        ptr = (ptr + 1) % queue_size
    assert int(module.queue_ptr) == ptr
    torch.testing.assert_close(module.memory, queue)


def test_memory_moco_softmax_and_batch_of_one():
    torch.manual_seed(8)
    module = MemoryMoCo(D, N, 4, T, use_softmax=True)
    queue = module.memory.clone()
    q, k = unit_features(1, D, seed=52), unit_features(1, D, seed=53)
    out = module(q, k)
    assert out.shape == (1, 5)
    torch.testing.assert_close(out, torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / T)
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
    torch.testing.assert_close(restored.memory, module.memory)
    torch.testing.assert_close(restored.params, module.params)

    # reference checkpoint: no queue_ptr, params an int64 tensor
    old = {'params': torch.tensor([1234]), 'memory': module.memory.clone()}
    restored.load_state_dict(old)
    assert set(old) == {'params', 'memory'}  # the caller's dict is left alone
    assert int(restored.queue_ptr) == 0 and restored.params.tolist() == [1234.]
    assert restored.params.dtype == torch.float32
    # the pointer restarts at slot 0
    k = unit_features(2, D, seed=80)
    restored(unit_features(2, D, seed=81), k)
    torch.testing.assert_close(restored.memory[:2], k)
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
    torch.testing.assert_close(out_l.squeeze(-1), torch.exp(ab.new_ones(1, K + 1) * l.sum() / 0.2) / 55.0)


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
    torch.testing.assert_close(implied_distribution(table), p / p.sum(), rtol=0, atol=1e-6)
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
                               rtol=0, atol=1e-6)


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
    torch.testing.assert_close(loss.double(), want.reshape(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape', [(4, K + 1, 1), (4, K + 1), (1, K + 1, 1)])
def test_nce_softmax_loss_matches_cross_entropy(shape):
    g = torch.Generator().manual_seed(17)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    loss = NCESoftmaxLoss()(x)
    flat = x.detach().reshape(shape[0], K + 1)
    manual = -(flat[:, 0] - torch.logsumexp(flat, dim=1)).mean()
    torch.testing.assert_close(loss.detach(), manual)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(flat, torch.zeros(shape[0], dtype=torch.long)))
    loss.backward()
    assert x.grad.shape == x.shape


# ---------------------------------------------------------------- device / dtype agnostic

def test_no_cuda_calls_in_package():
    for path in (pathlib.Path(__file__).resolve().parents[1] / 'NCE').glob('*.py'):
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
