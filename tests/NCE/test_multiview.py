"""Tests for N-view CMC (Tian et al. 2019, Sec. 3.3): the multi-view contrast memory, the multi-view encoder and the
cross-view prediction baseline.

Expected values are written out from the formulas in float64 on tiny seeded inputs; the two-view case is compared
bit for bit (torch.equal) against a copy of the reference-layout NCEAverage as it was before the N-view rewrite.
"""
import math

import pytest
import torch
from torch import nn

from NCE import MultiviewContrast, NCEAverage, contrast_view_pairs, sample_contrast_indices
from NCE.NCEAverage import (ContrastMemory, gather_from_all_processes, init_memory, momentum_update_,
                            score_against_memory)
from models import (HalfAlexNet, MultiViewEncoder, MyAlexNetCMC, ResNet, TwoViewEncoder, build_cmc_model)
from models.predictive import CrossViewPredictor
from test_nce import given_idx, unit_features  # the same N and K as here

N, K, D, T, M = 20, 5, 8, 0.1, 0.5

# Tolerances: the module works in float32, the expected values below in float64.
# - a dot of D = 8 terms (unit feature, memory row of norm <= sqrt(3) at init) is off by a few ulps: ~D U sqrt(3)
#   with U = 2^-24, i.e. < 1e-6 absolute; dot / T (T = 0.1) then < 1e-5;
# - exp(dot / T) has relative error = the absolute error of dot / T (< 1e-5), and Z, a mean over B (K+1) <= 24 such
#   terms, adds ~24 U; exp / Z thus stays within 3e-5 relative;
# - a memory row after the update (norm 1) is off by a few ulps per coordinate (the norm of D squares, one division).
LOGIT_ATOL = 1e-5
SCORE_RTOL = 3e-5
MEMORY_ATOL = 1e-6

VIEWS_3 = ('L', 'ab', 'depth')
VIEWS_4 = ('L', 'ab', 'depth', 'normal')
# scored ordered pairs '<anchor>_<memory view>', written out by hand from CMC eq. 6 (core) and eq. 7 (full graph)
EXPECTED_PAIRS = {
    (VIEWS_3, 'core'): ['L_ab', 'ab_L', 'L_depth', 'depth_L'],
    (VIEWS_3, 'full'): ['L_ab', 'ab_L', 'L_depth', 'depth_L', 'ab_depth', 'depth_ab'],
    (VIEWS_4, 'core'): ['L_ab', 'ab_L', 'L_depth', 'depth_L', 'L_normal', 'normal_L'],
    (VIEWS_4, 'full'): ['L_ab', 'ab_L', 'L_depth', 'depth_L', 'L_normal', 'normal_L',
                        'ab_depth', 'depth_ab', 'ab_normal', 'normal_ab', 'depth_normal', 'normal_depth'],
}


def expected_dots(feature, memory, idx):
    """f . memory[idx], B x (K+1), in float64."""
    return torch.einsum('bd,bkd->bk', feature.double(), memory.double()[idx])


def expected_memory(memory, y, feature):
    """Rows y -> normalise(m row + (1 - m) feature); other rows unchanged (float64)."""
    out = memory.double().clone()
    mixed = M * out[y] + (1 - M) * feature.double()
    out[y] = mixed / mixed.norm(dim=1, keepdim=True)
    return out


# ---------------------------------------------------------------- the reference two-view memory (pre-N-view copy)

class ReferenceNCEAverage(ContrastMemory):
    """NCEAverage exactly as it was before MultiviewContrast (its class body copied here as the reference)."""

    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None):
        super().__init__(outputSize, K, use_softmax, z_momentum)
        self.register_buffer('params', torch.tensor([K, T, -1., -1., momentum]))
        self.register_buffer('memory_l', init_memory(outputSize, inputSize))
        self.register_buffer('memory_ab', init_memory(outputSize, inputSize))

    def forward(self, l, ab, y, idx=None):
        y = y.reshape(-1)
        idx = self.contrast_indices(y, idx)
        temperature, momentum = self.params[1].clone(), self.params[4].clone()
        out_l = self.calibrate(score_against_memory(l, self.memory_ab, idx), temperature, 2)
        out_ab = self.calibrate(score_against_memory(ab, self.memory_l, idx), temperature, 3)
        y_all = gather_from_all_processes(y)
        for memory, feature in ((self.memory_l, l), (self.memory_ab, ab)):
            momentum_update_(memory, y_all, gather_from_all_processes(feature.detach()), momentum)
        return out_l.unsqueeze(-1), out_ab.unsqueeze(-1)


# ---------------------------------------------------------------- MultiviewContrast: N views, formulas

@pytest.mark.parametrize('views', [VIEWS_3, VIEWS_4])
@pytest.mark.parametrize('paradigm', ['core', 'full'])
@pytest.mark.parametrize('use_softmax', [False, True])
def test_multiview_contrast_two_calls_against_the_formulas(views, paradigm, use_softmax):
    torch.manual_seed(0)
    module = MultiviewContrast(D, N, K, T, M, use_softmax=use_softmax, views=views, paradigm=paradigm)
    names = EXPECTED_PAIRS[(views, paradigm)]
    assert module.pair_names() == names
    pairs = [tuple(views.index(v) for v in name.split('_')) for name in names]  # (anchor, memory view)
    memory_keys = [f'memory_{v.lower()}' for v in views]
    assert list(module.state_dict().keys()) == ['params'] + memory_keys
    assert module.params.tolist() == pytest.approx([K, T] + [-1] * len(names) + [M])

    memories = [getattr(module, key).double().clone() for key in memory_keys]
    zs = [None] * len(names)
    for call, (batch, y) in enumerate([(3, torch.tensor([3, 0, 17])), (4, torch.tensor([5, 3, 11, 19]))]):
        feats = [unit_features(batch, D, seed=10 * call + v) for v in range(len(views))]
        idx = given_idx(y, seed=100 + call)
        scores = module(feats, y, idx)
        assert list(scores.keys()) == names
        for slot, (name, (anchor, other)) in enumerate(zip(names, pairs)):
            logits = expected_dots(feats[anchor], memories[other], idx) / T  # B x (K+1)
            out = scores[name]
            assert out.shape == (batch, K + 1, 1) and out.dtype == torch.float32
            if use_softmax:
                torch.testing.assert_close(out.squeeze(-1).double(), logits, rtol=0, atol=LOGIT_ATOL)
                continue
            if zs[slot] is None:  # first call: Z = n mean(exp(dots / T)), then frozen
                zs[slot] = torch.exp(logits).mean() * N
            torch.testing.assert_close(out.squeeze(-1).double(), torch.exp(logits) / zs[slot],
                                       rtol=SCORE_RTOL, atol=0)
            torch.testing.assert_close(module.params[2 + slot].double(), zs[slot], rtol=SCORE_RTOL, atol=0)
        if use_softmax:
            assert module.params[2:-1].tolist() == [-1] * len(names)  # softmax mode never sets Z
        memories = [expected_memory(memory, y, feature) for memory, feature in zip(memories, feats)]
        for key, memory in zip(memory_keys, memories):
            torch.testing.assert_close(getattr(module, key).double(), memory, rtol=0, atol=MEMORY_ATOL)
    assert module.params[[0, 1, -1]].tolist() == pytest.approx([K, T, M])


def test_paradigms_list_the_paper_pairs():
    assert contrast_view_pairs(4, 'core') == [(0, 1), (0, 2), (0, 3)]  # eq. 6: core view against the others
    assert contrast_view_pairs(4, 'full') == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # eq. 7: all C(4, 2)
    with pytest.raises(ValueError):
        contrast_view_pairs(3, 'ring')
    for bad_views in (['L'], ['L', 'l'], ['L', 'a b']):
        with pytest.raises(ValueError):
            MultiviewContrast(D, N, K, views=bad_views)


def test_one_negative_draw_shared_by_all_pairs():
    torch.manual_seed(1)
    given = MultiviewContrast(D, N, K, T, M, views=VIEWS_3, paradigm='full')
    sampled = MultiviewContrast(D, N, K, T, M, views=VIEWS_3, paradigm='full')
    sampled.load_state_dict(given.state_dict())
    y = torch.tensor([2, 19, 0])
    feats = [unit_features(3, D, seed=s) for s in (1, 2, 3)]
    torch.manual_seed(7)
    idx = sample_contrast_indices(y, K, N)
    after_one_draw = torch.randn(4)
    torch.manual_seed(7)
    out_sampled = sampled(feats, y)
    assert torch.equal(torch.randn(4), after_one_draw)  # exactly one draw for all six ordered pairs
    out_given = given(feats, y, idx)
    for name in out_given:
        assert torch.equal(out_sampled[name], out_given[name])


def test_gradient_reaches_each_view_through_its_pairs():
    torch.manual_seed(2)
    module = MultiviewContrast(D, N, K, T, M, use_softmax=True, views=VIEWS_3, paradigm='core')
    y = torch.tensor([1, 4])
    idx = given_idx(y, seed=3)
    memories = [module.memory(v).clone() for v in range(3)]
    feats = [unit_features(2, D, seed=s).requires_grad_() for s in (4, 5, 6)]
    sum(out.sum() for out in module(feats, y, idx).values()).backward()
    # d/df_i sum_j sum_k f_i . memory_j[idx] / T over the pairs with anchor i: L against ab and depth, others against L
    want = [(memories[1][idx] + memories[2][idx]).sum(1) / T, memories[0][idx].sum(1) / T,
            memories[0][idx].sum(1) / T]
    for feat, grad in zip(feats, want):
        torch.testing.assert_close(feat.grad, grad, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- two views: bit for bit with the reference

@pytest.mark.parametrize('use_softmax,z_momentum', [(False, None), (True, None), (False, 0.9)])
@pytest.mark.parametrize('make', [
    lambda *a, **k: NCEAverage(*a, **k),
    lambda *a, **k: MultiviewContrast(*a, **k, views=('L', 'ab')),
], ids=['NCEAverage', 'MultiviewContrast_L_ab'])
def test_two_views_equal_the_reference_bit_for_bit(make, use_softmax, z_momentum):
    torch.manual_seed(3)
    reference = ReferenceNCEAverage(D, N, K, T, M, use_softmax=use_softmax, z_momentum=z_momentum)
    torch.manual_seed(3)
    module = make(D, N, K, T, M, use_softmax=use_softmax, z_momentum=z_momentum)
    assert list(module.state_dict().keys()) == list(reference.state_dict().keys()) == \
        ['params', 'memory_l', 'memory_ab']
    for call, (batch, y) in enumerate([(3, torch.tensor([3, 0, 17])), (4, torch.tensor([5, 3, 11, 19]))]):
        l, ab = unit_features(batch, D, seed=20 + call), unit_features(batch, D, seed=30 + call)
        torch.manual_seed(40 + call)  # the negatives are drawn inside: same RNG state, same draws
        want = reference(l, ab, y)
        torch.manual_seed(40 + call)
        got = module(l, ab, y) if isinstance(module, NCEAverage) else tuple(module([l, ab], y).values())
        assert len(got) == 2
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        for key, value in reference.state_dict().items():
            assert torch.equal(module.state_dict()[key], value), key
    assert module.params[2] > 0 if not use_softmax else module.params[2] == -1


def test_nce_average_pair_names_and_reference_checkpoint_load():
    torch.manual_seed(4)
    reference = ReferenceNCEAverage(D, N, K, T, M)
    reference(unit_features(2, D, seed=1), unit_features(2, D, seed=2), torch.tensor([0, 1]))
    module = NCEAverage(D, N, K, T, M)
    module.load_state_dict(reference.state_dict())
    assert module.pair_names() == ['l_ab', 'ab_l']
    assert torch.equal(module.params, reference.params)


# ---------------------------------------------------------------- encoders

def reference_two_view_alexnet(feat_dim):
    """Today's MyAlexNetCMC construction order: encoder.l_to_ab = HalfAlexNet(1), then encoder.ab_to_l =
    HalfAlexNet(2)."""
    model, encoder = nn.Module(), nn.Module()
    encoder.l_to_ab = HalfAlexNet(in_channel=1, feat_dim=feat_dim)
    encoder.ab_to_l = HalfAlexNet(in_channel=2, feat_dim=feat_dim)
    model.encoder = encoder
    return model


def reference_two_view_resnet(depth, width, feat_dim):
    model, encoder = nn.Module(), nn.Module()
    encoder.l_to_ab = ResNet(depth, width, in_channel=1, low_dim=feat_dim)
    encoder.ab_to_l = ResNet(depth, width, in_channel=2, low_dim=feat_dim)
    model.encoder = encoder
    return model


@pytest.mark.parametrize('name,reference', [
    ('alexnet', lambda: reference_two_view_alexnet(16)),
    ('resnet18v1', lambda: reference_two_view_resnet(18, 0.5, 16)),
])
def test_two_view_build_keeps_keys_and_seeded_weights(name, reference):
    torch.manual_seed(5)
    want = reference().state_dict()
    for kwargs in ({}, {'view_channels': (1, 2), 'view_names': ('L', 'ab')}):
        torch.manual_seed(5)
        model = build_cmc_model(name, 16, **kwargs)
        assert isinstance(model.encoder, TwoViewEncoder)
        got = model.state_dict()
        assert list(got.keys()) == list(want.keys())
        assert all(torch.equal(got[key], want[key]) for key in want)


def test_multi_view_resnet_channels_names_and_forward():
    torch.manual_seed(6)
    model = build_cmc_model('resnet18v1', 16, view_channels=(1, 2, 1, 3), view_names=VIEWS_4).eval()
    encoder = model.encoder
    assert isinstance(encoder, MultiViewEncoder) and not isinstance(encoder, TwoViewEncoder)
    assert encoder.module_names == ('l_to_ab', 'ab_to_l', 'depth', 'normal')
    assert [net.conv1.in_channels for net in encoder.view_networks()] == [1, 2, 1, 3]
    assert {key.split('.')[1] for key in model.state_dict()} == {'l_to_ab', 'ab_to_l', 'depth', 'normal'}
    x = torch.randn(2, 7, 32, 32)
    with torch.no_grad():
        feats = model(x)
        assert isinstance(feats, list) and [f.shape for f in feats] == [(2, 16)] * 4
        for feat in feats:
            torch.testing.assert_close(feat.norm(dim=1), torch.ones(2))
        starts = [0, 1, 3, 4, 7]  # the views' channel slices
        for v, net in enumerate(encoder.view_networks()):
            assert torch.equal(feats[v], net(x[:, starts[v]:starts[v + 1]], 7))
        assert [f.shape for f in model(x, layer=5)] == [(2, 256, 1, 1)] * 4  # layer4 of width 0.5: 8 x 32 channels


def test_multi_view_alexnet_and_default_names():
    torch.manual_seed(7)
    model = MyAlexNetCMC(feat_dim=8, view_channels=(1, 2, 1)).eval()
    assert model.encoder.view_names == ('l', 'ab', 'view2')
    assert [net.conv_block_1[0].in_channels for net in model.encoder.view_networks()] == [1, 2, 1]
    with torch.no_grad():
        assert [f.shape for f in model(torch.randn(2, 4, 64, 64))] == [(2, 8)] * 3
    with pytest.raises(ValueError):
        build_cmc_model('resnet18v1', 8, view_channels=(1, 2, 1), view_names=('L', 'ab'))


# ---------------------------------------------------------------- cross-view prediction baseline

def smooth_views(batch, size):
    """A fixed batch where ab is a function of L (so L -> ab is learnable): L = sin(a x + p) cos(b y),
    ab = (L / 2, 1/2 - L^2)."""
    g = torch.Generator().manual_seed(0)
    grid = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing='ij')  # H x W
    freq = (torch.rand(batch, 2, 1, 1, generator=g) * 3 + 1) * math.pi
    phase = torch.rand(batch, 1, 1, generator=g) * 6
    lum = (torch.sin(freq[:, 0] * xx + phase) * torch.cos(freq[:, 1] * yy)).unsqueeze(1)  # B x 1 x H x W
    return torch.cat([lum, 0.5 * lum, 0.5 - lum * lum], dim=1)  # B x 3 x H x W


def test_cross_view_predictor_shapes_and_loss_definition():
    torch.manual_seed(8)
    predictor = CrossViewPredictor(build_cmc_model('resnet18v1', 16), hidden=8).eval()
    assert predictor.layer == 4 and list(predictor.decoders.keys()) == ['L_to_ab', 'ab_to_L']
    x = smooth_views(2, 32)
    with torch.no_grad():
        predictions = predictor.predict(x)
        losses = predictor(x)
    assert predictions['L_to_ab'].shape == (2, 2, 32, 32) and predictions['ab_to_L'].shape == (2, 1, 32, 32)
    torch.testing.assert_close(losses['L_to_ab'], ((predictions['L_to_ab'] - x[:, 1:]) ** 2).mean())
    torch.testing.assert_close(losses['ab_to_L'], ((predictions['ab_to_L'] - x[:, :1]) ** 2).mean())
    # the encoder is the CMC model itself: its keys are a CMC checkpoint's, probe-able like any other
    assert set(predictor.encoder.state_dict()) == set(build_cmc_model('resnet18v1', 16).state_dict())
    assert CrossViewPredictor(build_cmc_model('alexnet', 8), hidden=8).layer == 5  # conv5


def test_cross_view_prediction_loss_drops_with_sgd():
    torch.manual_seed(9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny batch: one thread is faster than contending for a shared CPU
    try:
        history, encoder_learns = sgd_on_prediction_loss(steps=20)
    finally:
        torch.set_num_threads(threads)
    assert history[-1] < 0.7 * history[0], history
    assert encoder_learns


def sgd_on_prediction_loss(steps):
    predictor = CrossViewPredictor(build_cmc_model('resnet18v1', 16), hidden=16)
    x = smooth_views(8, 32)
    optimizer = torch.optim.SGD(predictor.parameters(), lr=0.05, momentum=0.9)
    conv1 = predictor.encoder.encoder.l_to_ab.conv1.weight.detach().clone()
    history = []
    for _ in range(steps):
        loss = sum(predictor(x).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history, not torch.equal(predictor.encoder.encoder.l_to_ab.conv1.weight, conv1)  # the encoder learns
