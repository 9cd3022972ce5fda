"""models/split_bn.py: split BatchNorm (ShuffleBN on one device, MoCo Sec. 3.3) against a hand computation, torch's
BatchNorm where they must agree, and the point of it: a shuffled key batch changes split-BN features, not plain BN's.

Runs on TEST_DEVICE (default cpu). Tolerances: float32 sums over a few thousand values, reduced in a different order
by torch's fused kernel than by the plain tensor ops here, agree to ~1e-6 relative; outputs are O(1), so
atol = rtol = 1e-5 leaves a 10x margin while any wrong statistic (e.g. the whole batch's, or a biased/unbiased mix-up)
is off by 1e-2 or more.
"""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.resnet import ResNet
from models.split_bn import SplitBatchNorm1d, SplitBatchNorm2d, convert_split_batchnorm, shuffle_bn_mode

DEVICE = torch.device(os.environ.get('TEST_DEVICE', 'cpu'))
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def no_tf32():
    """cuDNN convolutions in TF32 (10-bit mantissa) would swamp the float32 tolerances of the model-level tests;
    restored afterwards so other tests see torch's defaults."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def batch(b=8, c=4, h=5, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a per-sample offset makes the sub-batches' statistics clearly different from the whole batch's
    x = torch.randn(b, c, h, w, generator=g) * 2 + torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
    return x.to(DEVICE)


def split_bn(c=4, n=2, **kw):
    bn = SplitBatchNorm2d(c, num_splits=n, **kw).to(DEVICE)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
    return bn


def hand_split_bn(x, n, weight, bias, eps):
    """Written from the definition: each of the n consecutive sub-batches normalised by its own per-channel mean and
    biased variance over (batch, H, W), then y = x_hat * weight + bias. Returns y and the per-split mean and
    unbiased variance (n x C each)."""
    outs, means, uvars = [], [], []
    for part in x.chunk(n):
        count = part.shape[0] * part.shape[2] * part.shape[3]
        mean = part.sum(dim=(0, 2, 3)) / count
        sq = ((part - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))
        var = sq / count
        x_hat = (part - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
        outs.append(x_hat * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))
        means.append(mean)
        uvars.append(sq / (count - 1))
    return torch.cat(outs), torch.stack(means), torch.stack(uvars)


@pytest.mark.parametrize('n', [2, 4])
def test_forward_matches_hand_computation(n):
    x, bn = batch(), split_bn(n=n)
    y = bn(x)
    want, _, _ = hand_split_bn(x, n, bn.weight.detach(), bn.bias.detach(), bn.eps)
    torch.testing.assert_close(y, want, **TOL)
    whole = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    assert (y - whole).abs().max() > 1e-2                   # not the whole batch's statistics


def test_channels_last_keeps_format_and_values():
    x, bn = batch(), split_bn(n=2)
    y = bn(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, bn(x), **TOL)


def test_one_split_equals_batchnorm2d_exactly():
    x = batch()
    ours, ref = split_bn(n=1), nn.BatchNorm2d(4).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    assert torch.equal(ours(x), ref(x))
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


@pytest.mark.parametrize('momentum', [0.1, None])
def test_running_stats_after_one_step(momentum):
    n, x = 4, batch()
    bn = split_bn(n=n, momentum=momentum)
    with torch.no_grad():                                    # non-trivial starting statistics
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    bn(x)
    _, means, uvars = hand_split_bn(x, n, bn.weight.detach(), bn.bias.detach(), bn.eps)
    f = 1.0 if momentum is None else momentum               # momentum=None: cumulative average, 1 / (1 step)
    torch.testing.assert_close(bn.running_mean, (1 - f) * 0.3 + f * means.mean(0), **TOL)
    torch.testing.assert_close(bn.running_var, (1 - f) * 2.0 + f * uvars.mean(0), **TOL)
    assert bn.num_batches_tracked.item() == 1
    bn(x)
    assert bn.num_batches_tracked.item() == 2                # once per forward, not once per split


def test_eval_mode_is_batchnorm2d():
    x, ours, ref = batch(), split_bn(n=4), nn.BatchNorm2d(4).to(DEVICE)
    ours(batch(seed=3))                                      # move the running stats off their initial values
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()
    assert torch.equal(ours(x), ref(x))
    assert torch.equal(ours(x[:3]), ref(x[:3]))              # any batch size in eval mode


def test_state_dict_keys_and_loading():
    ours, ref = split_bn(n=2), nn.BatchNorm2d(4).to(DEVICE)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())                   # strict, both ways
    ours.load_state_dict(ref.state_dict())


def test_gradient_flows():
    x = batch().requires_grad_(True)
    bn = split_bn(n=2)
    (bn(x) * torch.arange(x.numel(), device=DEVICE).view_as(x)).sum().backward()
    for t in (x, bn.weight, bn.bias):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # and equals the gradient of the hand computation
    x2 = x.detach().clone().requires_grad_(True)
    w2, b2 = bn.weight.detach().clone().requires_grad_(True), bn.bias.detach().clone().requires_grad_(True)
    y2, _, _ = hand_split_bn(x2, 2, w2, b2, bn.eps)
    (y2 * torch.arange(x.numel(), device=DEVICE).view_as(x)).sum().backward()
    # the weights 0..479 make the summed gradients O(1e3): relative tolerance carries it
    for got, want in ((x.grad, x2.grad), (bn.weight.grad, w2.grad), (bn.bias.grad, b2.grad)):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-5)


def test_indivisible_batch_is_a_clear_error():
    with pytest.raises(ValueError, match=r'batch of 6 cannot be split into num_splits=4'):
        split_bn(n=4)(batch(b=6))
    with pytest.raises(ValueError, match='positive integer'):
        SplitBatchNorm2d(4, num_splits=0)


def test_batchnorm1d():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 3, generator=g) + torch.arange(8.0).view(8, 1)).to(DEVICE)
    bn = SplitBatchNorm1d(3, num_splits=2).to(DEVICE)
    want = torch.cat([(p - p.mean(0)) / torch.sqrt(p.var(0, unbiased=False) + bn.eps) for p in x.chunk(2)])
    torch.testing.assert_close(bn(x), want, **TOL)


def small_resnet():
    torch.manual_seed(0)
    model = ResNet(18, 0.5, 3, 128).to(DEVICE)
    with torch.no_grad():                                    # non-trivial BN state, so eval mode is a real check
        g = torch.Generator().manual_seed(0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def test_convert_replaces_every_batchnorm_and_keeps_eval_outputs(no_tf32):
    model = small_resnet()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    model.eval()
    with torch.no_grad():
        before = model(x)
    keys_before = list(model.state_dict())
    params_before = [id(p) for p in model.parameters()]
    converted = convert_split_batchnorm(model, 2)
    splits = [m for m in converted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert converted is model and len(splits) == n_bn > 16
    assert all(type(m) is SplitBatchNorm2d and m.num_splits == 2 and not m.training for m in splits)
    assert list(converted.state_dict()) == keys_before
    assert [id(p) for p in converted.parameters()] == params_before    # the same tensors, not copies
    with torch.no_grad():
        assert torch.equal(converted(x), before)
    assert convert_split_batchnorm(model, 1) is model
    plain = small_resnet()
    plain.load_state_dict(converted.state_dict())             # checkpoints stay loadable by plain BatchNorm


def test_convert_a_bare_batchnorm_shares_its_tensors():
    bn = nn.BatchNorm2d(4).to(DEVICE).train()
    split = convert_split_batchnorm(bn, 4)
    assert type(split) is SplitBatchNorm2d and split.training
    assert split.weight is bn.weight and split.running_var is bn.running_var
    assert convert_split_batchnorm(split, 2).num_splits == 2


def test_shuffled_keys_differ_with_split_bn_only(no_tf32):
    """The point of ShuffleBN: the key encoder runs (in training mode, as MoCo's does) on a shuffled batch and the
    features are put back in order. With one plain BatchNorm the shuffle changes nothing; with split BatchNorm each
    key is normalised with a different sub-batch's statistics, so its feature changes."""
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    plain = small_resnet().train()
    split = convert_split_batchnorm(copy.deepcopy(plain), 2).train()
    with torch.no_grad():
        plain_straight, plain_shuffled = plain(x), plain(x[perm])[torch.argsort(perm)]
        split_straight, split_shuffled = split(x), split(x[perm])[torch.argsort(perm)]
    torch.testing.assert_close(plain_shuffled, plain_straight, **TOL)
    assert (split_shuffled - split_straight).abs().max() > 1e-2
    # sub-batch 0 of the 2-split forward is the plain network run on that half alone
    with torch.no_grad():
        torch.testing.assert_close(split_straight[:4], copy.deepcopy(plain)(x[:4]), **TOL)


def test_shuffle_bn_mode_lines():
    assert shuffle_bn_mode(4, 1, 1) == 'ShuffleBN across 4 processes (DDP)'
    assert shuffle_bn_mode(1, 4, 1) == 'ShuffleBN across 4 GPUs (DataParallel)'
    assert shuffle_bn_mode(1, 1, 8) == 'ShuffleBN: split BatchNorm over 8 sub-batches on one device'
    assert shuffle_bn_mode(1, 1, 1).startswith('ShuffleBN: none: one BatchNorm sees the whole batch')
    assert 'each split over 2' in shuffle_bn_mode(4, 1, 2)
