"""Tests for models/: state-dict key/shape tables (the released weights must load), layer-by-layer
forward values against a second, functional code path, checkpoint-key compatibility, and init."""
import functools
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import models
from models import (InsResNet18, InsResNet50, LinearClassifierAlexNet, LinearClassifierResNet,
                    MyAlexNetCMC, MyResNetsCMC, build_cmc_model, build_ins_model, strip_module_prefix)

META = torch.device('meta')


@functools.lru_cache(maxsize=None)
def meta_cmc_model(name):
    """build_cmc_model(name) on the meta device, in eval mode: built once for the key, shape and head tests, which
    only read it (an eval-mode forward on meta tensors changes nothing)."""
    with META:
        return build_cmc_model(name).eval()


# ----------------------------------------------------------------------------------------------
# helpers: a second code path, written from SPEC, independent of the modules' forward()
# ----------------------------------------------------------------------------------------------
def randomise_batchnorm(model, seed=0):
    """Non-trivial BN statistics/affine so eval-mode BN is not (almost) the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def bn(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=1e-5)


def unit(x):
    return x / x.pow(2).sum(1, keepdim=True).sqrt()


def adaptive_pool_reference(x, out, reduce):
    """PyTorch's documented adaptive pooling bins: [floor(i*H/out), ceil((i+1)*H/out))."""
    height, width = x.shape[-2:]
    rows = []
    for i in range(out):
        h0, h1 = (i * height) // out, -(-((i + 1) * height) // out)
        cols = []
        for j in range(out):
            w0, w1 = (j * width) // out, -(-((j + 1) * width) // out)
            patch = x[..., h0:h1, w0:w1]
            cols.append(patch.amax((-2, -1)) if reduce == 'max' else patch.mean((-2, -1)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


# SPEC: kernels 11/5/3/3/3, strides 4/1/1/1/1, paddings 2/2/1/1/1, max-pool(3, 2) after 1, 2, 5.
ALEXNET_CONV_SPEC = [(4, 2, True), (1, 2, True), (1, 1, False), (1, 1, False), (1, 1, True)]


def half_alexnet_reference(net, x, adaptive):
    """All 9 features (layer 0..8) of a half AlexNet, computed with torch.nn.functional."""
    feats = [x]
    for index, (stride, padding, pooled) in enumerate(ALEXNET_CONV_SPEC, 1):
        block = getattr(net, f'conv_block_{index}')
        x = F.relu(bn(F.conv2d(x, block[0].weight, stride=stride, padding=padding), block[1]))
        if pooled:
            x = F.max_pool2d(x, 3, 2)
        if index == 5 and adaptive:
            x = adaptive_pool_reference(x, 6, 'max')
        feats.append(x)
    x = x.reshape(x.shape[0], -1)
    for fc in (net.fc6, net.fc7):
        x = F.relu(bn(x @ fc[0].weight.t() + fc[0].bias, fc[1]))
        feats.append(x)
    feats.append(unit(x @ net.fc8[0].weight.t() + net.fc8[0].bias))
    return feats


def resnet_reference(net, x, bottleneck, adaptive):
    """All 8 features (layer 0..7) of a ResNet, with the strides written out from SPEC."""
    feats = [x]
    x = F.relu(bn(F.conv2d(x, net.conv1.weight, stride=2, padding=3), net.bn1))
    x = F.max_pool2d(x, 3, 2, padding=1)
    feats.append(x)
    for stage in range(4):
        for index, block in enumerate(getattr(net, f'layer{stage + 1}')):
            stride = 2 if (stage > 0 and index == 0) else 1
            shortcut = x
            if block.downsample is not None:
                shortcut = bn(F.conv2d(x, block.downsample[0].weight, stride=stride), block.downsample[1])
            if bottleneck:  # stride on the 3x3 conv
                out = F.relu(bn(F.conv2d(x, block.conv1.weight), block.bn1))
                out = F.relu(bn(F.conv2d(out, block.conv2.weight, stride=stride, padding=1), block.bn2))
                out = bn(F.conv2d(out, block.conv3.weight), block.bn3)
            else:
                out = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=stride, padding=1), block.bn1))
                out = bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
            x = F.relu(out + shortcut)
        feats.append(x)
    pooled = F.avg_pool2d(x, 7).flatten(1) if not adaptive else x.mean((2, 3))
    feats.append(pooled)
    feats.append(unit(pooled @ net.fc.weight.t() + net.fc.bias))
    return feats


def assert_feats_close(actual, expected):
    assert actual.shape == expected.shape
    # conv / linear sums of up to 4608 (512 x 3 x 3) products in another order (oneDNN vs F.conv2d on the reference
    # path), through up to ~50 layers: ~sqrt(n) U = 4e-6 per layer in practice (n U = 2.7e-4 worst); atol for ~0 values
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# key and shape tables
# ----------------------------------------------------------------------------------------------
def resnet_key_count(blocks_per_stage, convs_per_block, stages_with_downsample):
    """Keys of one ResNet: every conv has a weight; every BN has weight, bias, running_mean,
    running_var, num_batches_tracked; stem = conv + BN; fc = weight + bias."""
    conv_bn = 1 + 5
    return conv_bn + sum(blocks_per_stage) * convs_per_block * conv_bn + stages_with_downsample * conv_bn + 2


ALEXNET_HALF_KEYS = 5 * (1 + 5) + 2 * (2 + 5) + 2  # conv blocks, fc6/fc7 (Linear + BN1d), fc8

KEY_TABLES = {
    'alexnet': (2 * ALEXNET_HALF_KEYS, {
        'encoder.l_to_ab.conv_block_1.0.weight': (48, 1, 11, 11),
        'encoder.ab_to_l.conv_block_1.0.weight': (48, 2, 11, 11),
        'encoder.l_to_ab.conv_block_1.1.running_var': (48,),
        'encoder.l_to_ab.conv_block_2.0.weight': (128, 48, 5, 5),
        'encoder.ab_to_l.conv_block_3.0.weight': (192, 128, 3, 3),
        'encoder.l_to_ab.conv_block_4.0.weight': (192, 192, 3, 3),
        'encoder.l_to_ab.conv_block_5.0.weight': (128, 192, 3, 3),
        'encoder.l_to_ab.fc6.0.weight': (2048, 4608),
        'encoder.l_to_ab.fc6.1.running_mean': (2048,),
        'encoder.ab_to_l.fc7.0.weight': (2048, 2048),
        'encoder.ab_to_l.fc8.0.weight': (128, 2048),
        'encoder.ab_to_l.fc8.0.bias': (128,),
    }),
    # ResNet-18 at width 0.5 and 2 needs a projection in layer1 too (64 -> 32 / 128 channels).
    'resnet18v1': (2 * resnet_key_count((2, 2, 2, 2), 2, 4), {
        'encoder.l_to_ab.conv1.weight': (64, 1, 7, 7),
        'encoder.l_to_ab.layer1.0.conv1.weight': (32, 64, 3, 3),
        'encoder.l_to_ab.layer1.0.downsample.0.weight': (32, 64, 1, 1),
        'encoder.ab_to_l.layer4.1.conv2.weight': (256, 256, 3, 3),
        'encoder.ab_to_l.fc.weight': (128, 256),
    }),
    'resnet18v2': (2 * resnet_key_count((2, 2, 2, 2), 2, 3), {
        'encoder.ab_to_l.conv1.weight': (64, 2, 7, 7),
        'encoder.l_to_ab.layer1.0.conv1.weight': (64, 64, 3, 3),
        'encoder.l_to_ab.layer2.0.downsample.0.weight': (128, 64, 1, 1),
        'encoder.l_to_ab.layer2.0.downsample.1.running_mean': (128,),
        'encoder.ab_to_l.fc.weight': (128, 512),
    }),
    'resnet18v3': (2 * resnet_key_count((2, 2, 2, 2), 2, 4), {
        'encoder.l_to_ab.layer1.0.downsample.0.weight': (128, 64, 1, 1),
        'encoder.l_to_ab.layer4.0.conv1.weight': (1024, 512, 3, 3),
        'encoder.ab_to_l.fc.weight': (128, 1024),
    }),
    'resnet50v1': (2 * resnet_key_count((3, 4, 6, 3), 3, 4), {
        'encoder.l_to_ab.conv1.weight': (64, 1, 7, 7),
        'encoder.ab_to_l.conv1.weight': (64, 2, 7, 7),
        'encoder.l_to_ab.layer1.0.conv1.weight': (32, 64, 1, 1),
        'encoder.l_to_ab.layer1.0.conv3.weight': (128, 32, 1, 1),
        'encoder.l_to_ab.layer1.0.downsample.0.weight': (128, 64, 1, 1),
        'encoder.l_to_ab.layer2.0.conv2.weight': (64, 64, 3, 3),
        'encoder.l_to_ab.layer4.2.conv3.weight': (1024, 256, 1, 1),
        'encoder.l_to_ab.fc.weight': (128, 1024),
    }),
    'resnet50v2': (2 * resnet_key_count((3, 4, 6, 3), 3, 4), {
        'encoder.l_to_ab.layer1.0.conv1.weight': (64, 64, 1, 1),
        'encoder.ab_to_l.layer3.5.bn3.running_var': (1024,),
        'encoder.ab_to_l.fc.weight': (128, 2048),
    }),
    'resnet50v3': (2 * resnet_key_count((3, 4, 6, 3), 3, 4), {
        'encoder.l_to_ab.layer1.0.conv1.weight': (128, 64, 1, 1),
        'encoder.l_to_ab.layer4.0.downsample.0.weight': (4096, 2048, 1, 1),
        'encoder.ab_to_l.fc.weight': (128, 4096),
    }),
    'resnet101v1': (2 * resnet_key_count((3, 4, 23, 3), 3, 4), {
        'encoder.l_to_ab.layer3.22.conv3.weight': (512, 128, 1, 1),
        'encoder.ab_to_l.fc.weight': (128, 1024),
    }),
    'resnet101v2': (2 * resnet_key_count((3, 4, 23, 3), 3, 4), {
        'encoder.l_to_ab.layer3.22.conv3.weight': (1024, 256, 1, 1),
        'encoder.ab_to_l.fc.weight': (128, 2048),
    }),
    'resnet101v3': (2 * resnet_key_count((3, 4, 23, 3), 3, 4), {
        'encoder.l_to_ab.layer3.22.conv3.weight': (2048, 512, 1, 1),
        'encoder.ab_to_l.fc.weight': (128, 4096),
    }),
}

INS_KEY_TABLES = {
    1: {'encoder.conv1.weight': (64, 3, 7, 7), 'encoder.layer4.0.downsample.0.weight': (2048, 1024, 1, 1),
        'encoder.fc.weight': (128, 2048)},
    2: {'encoder.layer1.0.conv1.weight': (128, 64, 1, 1), 'encoder.fc.weight': (128, 4096)},
    4: {'encoder.layer4.0.downsample.0.weight': (8192, 4096, 1, 1), 'encoder.fc.weight': (128, 8192)},
}


def assert_key_table(state_dict, count, shapes):
    assert len(state_dict) == count
    for key, shape in shapes.items():
        assert tuple(state_dict[key].shape) == shape, key


def test_key_counts_match_hand_counts():
    # The formula above against numbers counted independently (torchvision's resnet18/50 have 122/320).
    assert ALEXNET_HALF_KEYS == 46
    assert resnet_key_count((2, 2, 2, 2), 2, 3) == 122
    assert resnet_key_count((3, 4, 6, 3), 3, 4) == 320


@pytest.mark.parametrize('name', sorted(KEY_TABLES))
def test_cmc_state_dict_keys_and_shapes(name):
    model = meta_cmc_model(name)
    count, shapes = KEY_TABLES[name]
    assert_key_table(model.state_dict(), count, shapes)
    assert type(model) is (MyAlexNetCMC if name == 'alexnet' else MyResNetsCMC)


@pytest.mark.parametrize('width', [1, 2, 4])
def test_insresnet50_keys_and_shapes(width):
    with META:
        model = InsResNet50(width=width)
        same = build_ins_model('resnet50' if width == 1 else f'resnet50x{width}')
    assert_key_table(model.state_dict(), resnet_key_count((3, 4, 6, 3), 3, 4), INS_KEY_TABLES[width])
    assert {k: v.shape for k, v in same.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize('depth, torchvision_builder', [(18, torchvision.models.resnet18),
                                                       (50, torchvision.models.resnet50)])
def test_width1_resnet_matches_torchvision_layout(depth, torchvision_builder):
    # torchvision's ResNet has the same layout (stride on the 3x3 conv); only the head differs.
    with META:
        ours = (InsResNet18() if depth == 18 else InsResNet50()).encoder.state_dict()
        theirs = torchvision_builder(num_classes=128).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_half_width_resnet18_is_one_cmc_view_on_rgb():
    # resnet18x0.5 (the demo's InsDis / MoCo): every tensor of the CMC resnet18v1 L view's network, the stem's conv
    # on 3 input channels instead of 1; layer 6 is 256-d.
    with META:
        half = build_ins_model('resnet18x0.5')
        view = build_cmc_model('resnet18v1').encoder.l_to_ab
    ours = {k[len('encoder.'):]: tuple(v.shape) for k, v in half.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in view.state_dict().items()}
    assert ours == {**theirs, 'conv1.weight': (64, 3, 7, 7)} and theirs['conv1.weight'] == (64, 1, 7, 7)
    assert ours['layer4.1.conv2.weight'] == (256, 256, 3, 3) and ours['fc.weight'] == (128, 256)
    assert type(half) is InsResNet18 and models.linear_probe_multiplier('resnet18x0.5') == 1


def test_builders_reject_unknown_names():
    with pytest.raises(ValueError, match='resnet34v1'):
        build_cmc_model('resnet34v1')
    with pytest.raises(ValueError, match='resnet50x3'):
        build_ins_model('resnet50x3')
    assert type(build_ins_model('resnet18')) is InsResNet18
    assert [models.linear_probe_multiplier(n) for n in ('resnet50v1', 'resnet50v2', 'resnet101v3',
                                                        'resnet50', 'resnet50x2', 'resnet50x4')] == [1, 2, 4, 1, 2, 4]


# ----------------------------------------------------------------------------------------------
# shapes at every layer for every model (meta device: shape propagation only, no compute)
# ----------------------------------------------------------------------------------------------
ALEXNET_SHAPES_224 = [(3, 224, 224), (48, 27, 27), (128, 13, 13), (192, 13, 13), (192, 13, 13),
                      (128, 6, 6), (2048,), (2048,), (128,)]


def cmc_resnet_shapes_224(name):
    depth = int(name[len('resnet'):-2])
    width = {'v1': 0.5, 'v2': 1, 'v3': 2}[name[-2:]]
    expansion = 1 if depth == 18 else 4
    stage = [int(64 * width) * 2 ** s * expansion for s in range(4)]
    return [(3, 224, 224), (64, 56, 56), (stage[0], 56, 56), (stage[1], 28, 28), (stage[2], 14, 14),
            (stage[3], 7, 7), (stage[3],), (128,)]


@pytest.mark.parametrize('name', sorted(KEY_TABLES))
def test_cmc_output_shapes_every_layer(name):
    model = meta_cmc_model(name)
    x = torch.empty(2, 3, 224, 224, device=META)
    shapes = ALEXNET_SHAPES_224 if name == 'alexnet' else cmc_resnet_shapes_224(name)
    for layer, shape in enumerate(shapes):
        feat_l, feat_ab = model(x, layer)
        expected_l = (1,) + shape[1:] if layer == 0 else shape
        expected_ab = (2,) + shape[1:] if layer == 0 else shape
        assert tuple(feat_l.shape) == (2,) + expected_l and tuple(feat_ab.shape) == (2,) + expected_ab
    # the default layer is the embedding
    assert tuple(model(x)[0].shape) == (2, 128)


@pytest.mark.parametrize('name', ['alexnet', 'resnet50v1', 'resnet50v2', 'resnet50v3', 'resnet101v3'])
def test_linear_heads_accept_concatenated_features(name):
    """The heads' input sizes agree with the encoders' concatenated features (where SPEC's table holds)."""
    model = meta_cmc_model(name)
    with META:
        x = torch.empty(2, 3, 224, 224)
        layers = range(1, 8) if name == 'alexnet' else range(1 if name == 'resnet50v1' else 2, 7)
        for layer in layers:
            feat = torch.cat(model(x, layer), dim=1)
            if name == 'alexnet':
                head = LinearClassifierAlexNet(layer=layer, n_label=10)
            else:
                head = LinearClassifierResNet(layer=layer, n_label=10, width=models.linear_probe_multiplier(name))
            assert tuple(head(feat).shape) == (2, 10)


# ----------------------------------------------------------------------------------------------
# forward values against the functional reference path
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('size', [224, 64])
def test_alexnet_every_layer_matches_functional_path(size):
    torch.manual_seed(0)
    model = randomise_batchnorm(MyAlexNetCMC(feat_dim=16)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        # at 224 the reference path has no adaptive pool at all: ours must be the identity there
        expected_l = half_alexnet_reference(model.encoder.l_to_ab, x[:, :1], adaptive=size != 224)
        expected_ab = half_alexnet_reference(model.encoder.ab_to_l, x[:, 1:], adaptive=size != 224)
        for layer in range(9):
            feat_l, feat_ab = model(x, layer)
            assert_feats_close(feat_l, expected_l[layer])
            assert_feats_close(feat_ab, expected_ab[layer])
        assert tuple(expected_l[5].shape) == (2, 128, 6, 6)
        norms = torch.linalg.vector_norm(torch.cat(model(x), 0), dim=1)
        # normalise then norm again, both D-term sums (D = 16): <= (D + 1) U = 1e-6
        torch.testing.assert_close(norms, torch.ones(4), rtol=0, atol=2e-6)
        torch.testing.assert_close(model.encoder(x)[1], expected_ab[8], rtol=1e-4, atol=1e-5)  # as assert_feats_close


@pytest.mark.parametrize('size', [224, 64])
def test_resnet18v1_every_layer_matches_functional_path(size):
    torch.manual_seed(0)
    model = randomise_batchnorm(MyResNetsCMC('resnet18v1')).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected_l = resnet_reference(model.encoder.l_to_ab, x[:, :1], bottleneck=False, adaptive=size != 224)
        expected_ab = resnet_reference(model.encoder.ab_to_l, x[:, 1:], bottleneck=False, adaptive=size != 224)
        for layer in range(8):
            feat_l, feat_ab = model(x, layer)
            assert_feats_close(feat_l, expected_l[layer])
            assert_feats_close(feat_ab, expected_ab[layer])
        norms = torch.linalg.vector_norm(torch.cat(model(x), 0), dim=1)
        # normalise then norm again, both D-term sums (D = 128): <= (D + 1) U = 7.7e-6
        torch.testing.assert_close(norms, torch.ones(4), rtol=0, atol=1e-5)


def test_resnet50v1_embedding_matches_functional_path_at_224():
    torch.manual_seed(1)
    model = randomise_batchnorm(MyResNetsCMC('resnet50v1')).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feat_l, feat_ab = model(x)
        expected_l = resnet_reference(model.encoder.l_to_ab, x[:, :1], bottleneck=True, adaptive=False)[7]
        expected_ab = resnet_reference(model.encoder.ab_to_l, x[:, 1:], bottleneck=True, adaptive=False)[7]
    assert_feats_close(feat_l, expected_l)
    assert_feats_close(feat_ab, expected_ab)


def test_insresnet50_forward_matches_functional_path_at_64():
    torch.manual_seed(2)
    model = randomise_batchnorm(InsResNet50()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = resnet_reference(model.encoder, x, bottleneck=True, adaptive=True)
        for layer in (0, 1, 3, 6, 7):
            assert_feats_close(model(x, layer), expected[layer])
    assert tuple(expected[5].shape) == (2, 2048, 2, 2)


# ----------------------------------------------------------------------------------------------
# linear heads
# ----------------------------------------------------------------------------------------------
# A head against pooled @ W.t() + b: a matmul over F <= 9600 inputs (addmm vs matmul + add, other blocking) and the
# pooling's window sums in another order; outputs ~N(0, 1) (randn inputs, weights of std 0.01 x sqrt(F) ~ 1):
# ~sqrt(F) U = 6e-6 of the output scale in practice.
HEAD_RTOL, HEAD_ATOL = 1e-5, 1e-5


@pytest.mark.parametrize('layer, channels, spatial, grid', [(1, 96, 27, 10), (2, 256, 13, 6), (3, 384, 13, 5),
                                                           (4, 384, 13, 5), (5, 256, 6, 6), (5, 256, 1, 6)])
@pytest.mark.parametrize('pool_type', ['max', 'avg'])
def test_alexnet_head_values(layer, channels, spatial, grid, pool_type):
    torch.manual_seed(layer)
    head = LinearClassifierAlexNet(layer=layer, n_label=7, pool_type=pool_type)
    linear = head.classifier.LinearClassifier
    assert tuple(linear.weight.shape) == (7, channels * grid * grid)
    x = torch.randn(2, channels, spatial, spatial)
    pooled = x if spatial == grid else adaptive_pool_reference(x, grid, pool_type)
    expected = pooled.reshape(2, -1) @ linear.weight.t() + linear.bias
    torch.testing.assert_close(head(x), expected, rtol=HEAD_RTOL, atol=HEAD_ATOL)


@pytest.mark.parametrize('layer, channels, spatial, grid', [(1, 128, 56, 8), (2, 256, 56, 6), (3, 512, 28, 4),
                                                           (4, 1024, 14, 3), (5, 2048, 7, 7), (5, 2048, 2, 7)])
def test_resnet_head_values(layer, channels, spatial, grid):
    torch.manual_seed(layer)
    small = 4  # in_channels overrides the table (and keeps the test cheap)
    head = LinearClassifierResNet(layer=layer, n_label=5, in_channels=small)
    assert LinearClassifierResNet(layer=layer, n_label=5, width=2).classifier.LinearClassifier.in_features \
        == 2 * channels * grid * grid
    linear = head.classifier.LinearClassifier
    x = torch.randn(2, small, spatial, spatial)
    pooled = x if spatial == grid else adaptive_pool_reference(x, grid, 'avg')
    expected = pooled.reshape(2, -1) @ linear.weight.t() + linear.bias
    torch.testing.assert_close(head(x), expected, rtol=HEAD_RTOL, atol=HEAD_ATOL)


def test_resnet_head_layer6_flat_or_1x1():
    torch.manual_seed(0)
    head = LinearClassifierResNet(layer=6, n_label=3, width=4)
    linear = head.classifier.LinearClassifier
    assert linear.in_features == 8192
    x = torch.randn(2, 8192)
    expected = x @ linear.weight.t() + linear.bias
    torch.testing.assert_close(head(x), expected, rtol=HEAD_RTOL, atol=HEAD_ATOL)
    torch.testing.assert_close(head(x[:, :, None, None]), expected, rtol=HEAD_RTOL, atol=HEAD_ATOL)


def test_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match='layers'):
        LinearClassifierAlexNet(layer=8)
    with pytest.raises(ValueError, match='pool_type'):
        LinearClassifierResNet(layer=2, pool_type='median')


# ----------------------------------------------------------------------------------------------
# checkpoint compatibility
# ----------------------------------------------------------------------------------------------
def add_module_component(state_dict, after):
    """Rename keys the way nn.DataParallel at ``after`` would ('' = around the whole model)."""
    out = OrderedDict()
    for key, value in state_dict.items():
        out[('module.' + key) if after == '' else key.replace(after, after + 'module.', 1)] = value
    return out


@pytest.mark.parametrize('build, size', [(lambda: MyAlexNetCMC(feat_dim=8), 64),
                                         (lambda: MyResNetsCMC('resnet18v1', feat_dim=8), 32),
                                         (lambda: InsResNet18(feat_dim=8), 32)])
@pytest.mark.parametrize('after', ['encoder.', ''])
def test_load_module_prefixed_state_dict(build, size, after):
    torch.manual_seed(0)
    source = randomise_batchnorm(build()).eval()
    torch.manual_seed(1)
    target = build().eval()
    x = torch.randn(2, 3, size, size)
    prefixed = add_module_component(source.state_dict(), after)
    assert all('module.' in key for key in prefixed)
    original_keys = list(prefixed)
    assert str(target.load_state_dict(prefixed)) == '<All keys matched successfully>'
    assert list(prefixed) == original_keys  # the caller's dict is left alone
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_prefixed_keys_load_when_nested_in_another_module():
    torch.manual_seed(0)
    source = InsResNet18(feat_dim=4)
    holder = nn.ModuleDict({'net': InsResNet18(feat_dim=4)})
    state = add_module_component(OrderedDict(('net.' + k, v) for k, v in source.state_dict().items()), 'net.encoder.')
    assert 'net.encoder.module.conv1.weight' in state
    holder.load_state_dict(state)
    torch.testing.assert_close(holder['net'].encoder.conv1.weight, source.encoder.conv1.weight, rtol=0, atol=0)


def test_prefixed_and_plain_dicts_behave_alike_with_version_metadata():
    # BatchNorm reads its version from the metadata by module path; with version 2 a missing
    # num_batches_tracked is an error, with version 1 (pre-0.4.1 checkpoints) it is filled in.
    source = InsResNet18(feat_dim=4)
    for version, should_load in ((2, False), (1, True)):
        for after in ('', 'encoder.'):
            plain = OrderedDict((k, v) for k, v in source.state_dict().items() if 'num_batches_tracked' not in k)
            plain._metadata = OrderedDict((path, {'version': version}) for path, _ in source.named_modules())
            state = add_module_component(plain, after) if after else plain
            if after:
                state._metadata = OrderedDict(
                    (path.replace('encoder', 'encoder.module', 1), meta) for path, meta in plain._metadata.items())
            target = InsResNet18(feat_dim=4)
            if should_load:
                target.load_state_dict(state)
            else:
                with pytest.raises(RuntimeError, match=r'Missing key.*encoder\.bn1\.num_batches_tracked'):
                    target.load_state_dict(state)


def test_legacy_misspelled_linear_key_loads():
    torch.manual_seed(0)
    for head_class in (LinearClassifierResNet, LinearClassifierAlexNet):
        source, target = head_class(n_label=4), head_class(n_label=4)
        legacy = {k.replace('LinearClassifier', 'LiniearClassifier'): v for k, v in source.state_dict().items()}
        assert set(legacy) == {'classifier.LiniearClassifier.weight', 'classifier.LiniearClassifier.bias'}
        target.load_state_dict(add_module_component(legacy, ''))
        torch.testing.assert_close(target.classifier.LinearClassifier.weight, legacy[
            'classifier.LiniearClassifier.weight'], rtol=0, atol=0)


def test_wrong_model_state_dict_raises_naming_keys():
    alexnet_state = add_module_component(MyAlexNetCMC(feat_dim=8).state_dict(), 'encoder.')
    resnet = MyResNetsCMC('resnet18v2', feat_dim=8)
    v1_state = MyResNetsCMC('resnet18v1', feat_dim=8).state_dict()
    with pytest.raises(RuntimeError) as error:
        resnet.load_state_dict(alexnet_state)
    message = str(error.value)
    assert 'Missing key(s)' in message and '"encoder.l_to_ab.conv1.weight"' in message
    assert 'Unexpected key(s)' in message and '"encoder.l_to_ab.conv_block_1.0.weight"' in message
    with pytest.raises(RuntimeError, match=r'size mismatch for encoder\.l_to_ab\.layer1\.0\.conv1\.weight'):
        resnet.load_state_dict(v1_state)


def test_key_helpers():
    state = OrderedDict([('encoder.module.l_to_ab.fc.weight', torch.zeros(1)), ('module.x.module.y', torch.ones(1))])
    assert list(strip_module_prefix(state)) == ['encoder.l_to_ab.fc.weight', 'x.y']
    renamed = models.normalise_state_dict_keys({'classifier.LiniearClassifier.bias': 0},
                                               {'LiniearClassifier': 'LinearClassifier'})
    assert list(renamed) == ['classifier.LinearClassifier.bias']
    with pytest.raises(KeyError, match='collide'):
        strip_module_prefix({'module.a': 0, 'a': 1})
    with pytest.raises(RuntimeError, match='both'):
        InsResNet18().load_state_dict({'encoder.conv1.weight': 0, 'encoder.module.conv1.weight': 0}, strict=False)


# ----------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------
def test_resnet_init_statistics():
    torch.manual_seed(0)
    net = MyResNetsCMC('resnet18v2').encoder.l_to_ab
    for conv, kernel, out_channels in ((net.layer4[1].conv2, 3, 512), (net.layer4[0].downsample[0], 1, 512),
                                       (net.conv1, 7, 64)):
        expected_std = math.sqrt(2.0 / (kernel * kernel * out_channels))
        # sampling noise, not rounding: n >= 3136 weights (conv1: 64 x 1 x 7 x 7), sd of the std 1 / sqrt(2 n) = 1.3%,
        # of the mean std / sqrt(n) = 1.8% of std: 5% is > 2.5 sd (and the seed is fixed)
        assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
        assert abs(conv.weight.mean().item()) < 0.05 * expected_std
    batchnorms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorms) == 1 + 8 * 2 + 3
    for m in batchnorms:
        assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def test_linear_head_init_statistics():
    torch.manual_seed(0)
    for head in (LinearClassifierResNet(layer=6, n_label=1000), LinearClassifierAlexNet(layer=5, n_label=100)):
        linear = head.classifier.LinearClassifier
        # sampling noise, not rounding: n >= 9.2e5 weights of std 0.01, sd of the std 0.07%, of the mean 1e-5
        assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert abs(linear.weight.mean().item()) < 0.001
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
