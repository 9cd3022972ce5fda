"""pretrained.load / safetensors_format: what a checkpoint says of its encoder (info), and the one-line refusals."""
import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch

from engine.errors import UserError
from models import build_cmc_model, build_ins_model
from pretrained import load_encoder
from pretrained.safetensors_format import FORMAT, write_safetensors


def save(path, opt, model, **extra):
    torch.save({'opt': opt, 'model': model.state_dict(), 'epoch': 7, **extra}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def cmc18():
    torch.manual_seed(0)
    return build_cmc_model('resnet18v1')


def test_info_of_a_cmc_checkpoint(tmp_path, cmc18):
    path = save(tmp_path / 'c.pth', {'model': 'resnet18v1', 'views': ['L', 'ab'], 'view_channels': [1, 2],
                                     'image_size': 64, 'feat_dim': 128}, cmc18)
    info = load_encoder(path).info
    assert (info['method'], info['model'], info['width'], info['views'], info['view_channels']) == \
        ('cmc', 'resnet18v1', 0.5, ['L', 'ab'], [1, 2])
    assert info['source_sha256'] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert (info['image_size'], info['feature_layer'], info['epoch']) == (64, 6, 7)
    l_view, ab_view = info['preprocessing']
    assert l_view == {'view': 'L', 'kind': 'colour', 'space': 'Lab', 'channels': [0], 'mean': [50.0], 'std': [50.0]}
    assert (ab_view['mean'], ab_view['std']) == ([6.025, -6.6895], [92.208, 101.1675])


def test_reference_layout_and_legacy_ycbcr_view(tmp_path, cmc18):
    """The released weights: a Namespace opt with --view YCbCr, keys under encoder.module."""
    state = {k.replace('encoder.', 'encoder.module.', 1): v for k, v in cmc18.state_dict().items()}
    path = tmp_path / 'ref.pth'
    torch.save({'opt': argparse.Namespace(model='resnet18v1', view='YCbCr'), 'model': state, 'epoch': 240}, str(path))
    encoder = load_encoder(str(path))
    assert encoder.views == ('Y', 'CbCr')
    assert encoder.info['preprocessing'][1]['space'] == 'YCbCr'
    torch.testing.assert_close(encoder.network.state_dict()['encoder.l_to_ab.conv1.weight'],
                               cmc18.state_dict()['encoder.l_to_ab.conv1.weight'], rtol=0, atol=0)


def test_moco_insdis_and_predictive_are_told_apart(tmp_path, cmc18):
    net = build_ins_model('resnet18')
    moco = save(tmp_path / 'm.pth', {'model': 'resnet18', 'moco': True}, net, model_ema=net.state_dict())
    insdis = save(tmp_path / 'i.pth', {'model': 'resnet18', 'moco': False}, net)
    predictive = save(tmp_path / 'p.pth', {'model': 'resnet18v1', 'objective': 'predictive'}, cmc18)
    assert [load_encoder(p).info['method'] for p in (moco, insdis, predictive)] == ['moco', 'insdis', 'cmc-predictive']
    assert load_encoder(moco).info['preprocessing'][0]['mean'] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize('opt,extra,needle', [
    ({}, {}, 'does not record its --model'),
    ({'model': 'vgg16'}, {}, 'none of this project'),
    ({'model': 'resnet18v1'}, {'classifier': {}}, "linear probe's checkpoint"),
])
def test_refusals(tmp_path, cmc18, opt, extra, needle):
    path = save(tmp_path / 'x.pth', opt, cmc18, **extra)
    with pytest.raises(UserError, match=needle):
        load_encoder(path)


def test_a_checkpoint_of_another_model_names_both(tmp_path, cmc18):
    path = save(tmp_path / 'x.pth', {'model': 'resnet50v1'}, cmc18)
    with pytest.raises(UserError, match='does not fit --model resnet50v1'):
        load_encoder(path)


def test_non_finite_weights_are_refused(tmp_path):
    net = build_cmc_model('resnet18v1')
    with torch.no_grad():
        net.encoder.l_to_ab.bn1.running_var[0] = float('inf')
    with pytest.raises(UserError, match='non-finite'):
        load_encoder(save(tmp_path / 'x.pth', {'model': 'resnet18v1'}, net))


def test_safetensors_round_trip_and_refusals(tmp_path, cmc18):
    encoder = load_encoder(save(tmp_path / 'c.pth', {'model': 'resnet18v1'}, cmc18))
    write_safetensors(encoder, tmp_path / 'c.safetensors')
    again = load_encoder(str(tmp_path / 'c.safetensors'))
    assert again.info == json.loads(json.dumps(encoder.info))
    for key, value in encoder.network.state_dict().items():
        assert torch.equal(again.network.state_dict()[key], value), key

    (tmp_path / 'junk.safetensors').write_bytes(b'not a header')
    with pytest.raises(UserError, match='not a readable safetensors file'):
        load_encoder(str(tmp_path / 'junk.safetensors'))
    import safetensors.torch
    safetensors.torch.save_file({'w': torch.ones(2)}, str(tmp_path / 'other.safetensors'), metadata={'x': '1'})
    with pytest.raises(UserError, match=FORMAT):
        load_encoder(str(tmp_path / 'other.safetensors'))
