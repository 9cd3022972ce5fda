"""Each method owns its objective: forward(x, index) returns a StepResult whose loss is the paper's formula, written out
here, on the scores a twin of the method computes with the same random draws (``scores``), and whose metrics and
console / TensorBoard names are the reference's. Tiny encoders (tests/ddp_worker.py's), float32, on the CPU."""
import copy
import math

import pytest
import torch

from ddp_worker import FEAT, Tiny
from methods import CMC, CrossViewPrediction, InsDis, MoCo
from models import build_cmc_model

N, K, B, T, EPS = 24, 6, 5, 0.1, 1e-7


def nce(scores):
    """NCE loss (Wu et al. 2018 eq. 4, SPEC section 4): B x (K+1) [x 1] scores, P_n = 1 / N, m = K."""
    s = scores.reshape(scores.shape[0], -1).double()
    noise = K / N
    return -(torch.log(s[:, 0] / (s[:, 0] + noise + EPS)).sum() +
             torch.log(noise / (s[:, 1:] + noise + EPS)).sum()).item() / s.shape[0]


def info_nce(scores):
    """Softmax cross-entropy with the positive in column 0 (InfoNCE, MoCo eq. 1): mean of logsumexp(s) - s_0."""
    s = scores.reshape(scores.shape[0], -1).double()
    return (torch.logsumexp(s, dim=1) - s[:, 0]).mean().item()


def twin_run(method, *args, draws=1):
    """(method's StepResult, its twin's scores): the same inputs and the same random draws (negatives, ShuffleBN)."""
    twin = copy.deepcopy(method)
    torch.manual_seed(draws)
    result = method(*args)
    torch.manual_seed(draws)
    scores = twin.scores(*args)
    assert all(torch.equal(a, b) for a, b in zip(method.state_dict().values(), twin.state_dict().values()))
    return result, scores


def batch(channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, channels, 8, 8, generator=g), torch.randperm(N, generator=g)[:B]


def test_cmc_two_views_nce_is_the_sum_over_both_directions_with_the_reference_names():
    torch.manual_seed(0)
    method = CMC(Tiny(bn=False, views=2), FEAT, N, K, T=T, views=('L', 'ab'))
    x, index = batch()
    result, scores = twin_run(method, x, index)
    expected = {'l_loss': nce(scores['L_ab']), 'ab_loss': nce(scores['ab_L'])}
    # float32 logs of B (K+1) terms against float64: ~1e-6 relative
    assert result.loss.item() == pytest.approx(expected['l_loss'] + expected['ab_loss'], rel=1e-5)
    assert set(result.metrics) == {'loss', 'l_loss', 'ab_loss', 'l_prob', 'ab_prob'}
    assert result.metrics['loss'] is result.loss
    for key in ('l_loss', 'ab_loss'):
        assert result.metrics[key].item() == pytest.approx(expected[key], rel=1e-5)
    assert result.metrics['l_prob'].item() == scores['L_ab'][:, 0].mean().item()
    assert result.metrics['ab_prob'].item() == scores['ab_L'][:, 0].mean().item()
    assert method.console_fields == [('loss', 'loss'), ('l_prob', 'l_p'), ('ab_prob', 'ab_p'), ('l_loss', 'l_loss'),
                                     ('ab_loss', 'ab_loss')]
    assert method.tb_tags == [('l_prob', 'l_prob'), ('ab_prob', 'ab_prob'), ('l_loss', 'l_loss'),
                              ('ab_loss', 'ab_loss')]


def test_cmc_three_views_softmax_full_graph_sums_six_ordered_pairs():
    torch.manual_seed(0)
    method = CMC(Tiny(bn=False, views=3), FEAT, N, K, T=T, use_softmax=True, views=('L', 'ab', 'S'), paradigm='full')
    x, index = batch()
    result, scores = twin_run(method, x, index)
    pairs = ['L_ab', 'ab_L', 'L_S', 'S_L', 'ab_S', 'S_ab']
    assert list(scores) == pairs
    assert result.loss.item() == pytest.approx(sum(info_nce(scores[p]) for p in pairs), rel=1e-5)
    for pair in pairs:
        assert result.metrics[f'loss_{pair}'].item() == pytest.approx(info_nce(scores[pair]), rel=1e-5)
        assert result.metrics[f'prob_{pair}'].item() == scores[pair][:, 0].mean().item()
    assert method.console_fields == [('loss', 'loss')] + [(f'{kind}_{p}', f'{kind}_{p}') for p in pairs
                                                          for kind in ('loss', 'prob')]
    assert ('loss', 'loss') not in method.tb_tags and len(method.tb_tags) == 12


@pytest.mark.parametrize('softmax', [False, True])
def test_insdis_loss_and_prob(softmax):
    torch.manual_seed(0)
    method = InsDis(Tiny(bn=False), FEAT, N, K, T=T, use_softmax=softmax)
    x, index = batch()
    result, scores = twin_run(method, x, index)
    assert scores.shape == (B, K + 1)
    assert result.loss.item() == pytest.approx((info_nce if softmax else nce)(scores), rel=1e-5)
    assert result.metrics['prob'].item() == scores[:, 0].mean().item()
    assert method.console_fields == [('loss', 'loss'), ('prob', 'prob')]
    assert method.tb_tags == [('loss', 'ins_loss'), ('prob', 'ins_prob'), ('learning_rate', 'learning_rate')]


def test_moco_splits_query_and_key_crops_and_its_after_step_is_the_momentum_update():
    torch.manual_seed(0)
    alpha = 0.9
    method = MoCo(Tiny(bn=True), FEAT, N, K, T=T, use_softmax=True, alpha=alpha)
    x, _ = batch(channels=6)
    twin = copy.deepcopy(method)
    torch.manual_seed(3)
    result = method(x, None)                                       # B x 6 x H x W: query crop | key crop
    torch.manual_seed(3)
    scores = twin.scores(x[:, :3], x[:, 3:])
    assert result.loss.item() == pytest.approx(info_nce(scores), rel=1e-5)
    assert result.metrics['prob'].item() == scores[:, 0].mean().item()
    assert method.tb_tags == [('loss', 'ins_loss'), ('prob', 'ins_prob'), ('learning_rate', 'learning_rate')]
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)                                            # the query encoder moved, as an SGD step does
    before = [p.clone() for p in method.encoder_k.parameters()]
    method.after_step()
    for p_q, p_k, old in zip(method.encoder.parameters(), method.encoder_k.parameters(), before):
        torch.testing.assert_close(p_k, alpha * old + (1 - alpha) * p_q, rtol=0, atol=1e-6)


def test_predictive_loss_is_the_sum_of_its_directions_l2_losses():
    torch.manual_seed(0)
    encoder = build_cmc_model('resnet18v1', 16, (1, 2), ('L', 'ab'))
    method = CrossViewPrediction(encoder, (1, 2), ('L', 'ab'))
    x = torch.tanh(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    result = method(x, None)
    losses = copy.deepcopy(method).losses(x)
    assert list(losses) == ['L_to_ab', 'ab_to_L']
    assert result.loss.item() == pytest.approx(sum(loss.item() for loss in losses.values()), rel=1e-6)
    # the L2 loss written out: mean over B x C_t x H x W of (prediction - target)^2, targets the input views
    predictions = method.predictor.predict(x)
    by_hand = ((predictions['L_to_ab'] - x[:, 1:]) ** 2).mean().item()
    assert result.metrics['loss_L_to_ab'].item() == pytest.approx(by_hand, rel=1e-6)
    assert not math.isclose(by_hand, 0.0)
    assert method.console_fields == [('loss', 'loss'), ('loss_L_to_ab', 'loss_L_to_ab'),
                                     ('loss_ab_to_L', 'loss_ab_to_L')]
    assert method.tb_tags == method.console_fields[1:]
