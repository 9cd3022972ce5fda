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


@pytest.fixture(scope='module')
def cmc_encoder(tmp_path_factory, cmc18):
    path = tmp_path_factory.mktemp('enc') / 'c.pth'
    return load_encoder(save(path, {'model': 'resnet18v1', 'views': ['L', 'ab'], 'image_size': 32}, cmc18))


def test_float_images_are_refused_and_views_go_by_name(cmc_encoder):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for wrong in (images.float() / 255, images.float()):          # would be taken for normalised views: refused
        with pytest.raises(UserError, match=r'takes uint8 RGB images \(0..255\), got torch.float32'):
            cmc_encoder.features(wrong)
    views = cmc_encoder.preprocess(images)
    assert torch.equal(cmc_encoder.features(views=views.double()), cmc_encoder.features(images))
    assert torch.equal(cmc_encoder.features(images), torch.cat(cmc_encoder.network(views, 6), dim=1))
    with pytest.raises(UserError, match='one of them'):
        cmc_encoder.features(images, views=views)
    with pytest.raises(UserError, match=r'views= takes the float views tensor B x 3 x H x W'):
        cmc_encoder.features(views=views[:, :2])


@pytest.mark.parametrize('layer', [0, 8, '6', 6.0, True])
def test_a_layer_out_of_range_is_refused(cmc_encoder, layer):
    with pytest.raises(UserError, match=r'has layers 1..7'):
        cmc_encoder.features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), layer)


def test_bad_devices_and_a_contradicting_model_are_one_line(tmp_path, cmc18):
    path = save(tmp_path / 'c.pth', {'model': 'resnet18v1'}, cmc18)
    with pytest.raises(UserError, match="device='gpu' is no device"):
        load_encoder(path, device='gpu')
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match='no CUDA device is visible'):
            load_encoder(path, device='cuda')
    with pytest.raises(UserError, match='--model resnet50v2 contradicts'):
        load_encoder(path, model='resnet50v2')


def test_unrecorded_views_are_assumed_lab_aloud_or_given(tmp_path, cmc18):
    path = save(tmp_path / 'c.pth', {'model': 'resnet18v1', 'image_size': None, 'feat_dim': None}, cmc18)
    with pytest.warns(UserWarning, match="assumed --view Lab"):
        assert load_encoder(path).views == ('L', 'ab')
    encoder = load_encoder(path, view='YCbCr')
    assert encoder.views == ('Y', 'CbCr') and encoder.info['preprocessing'][0]['space'] == 'YCbCr'
    assert (encoder.info['image_size'], encoder.info['feat_dim']) == (224, 128)     # None: the defaults


def test_the_view_module_used_is_the_one_recorded(tmp_path):
    # the checkpoint names a file that is gone; the module is now examples/edges_view.py (the same file the hub tests
    # load: a view name is registered by one file per process)
    moved = Path(__file__).resolve().parents[2] / 'examples' / 'edges_view.py'
    net = build_cmc_model('resnet18v1', view_channels=(1, 1), view_names=('L', 'edges'))
    path = save(tmp_path / 'e.pth', {'model': 'resnet18v1', 'views': ['L', 'edges'], 'view_channels': [1, 1],
                                     'view_module': str(tmp_path / 'gone.py'),
                                     'view_module_path': str(tmp_path / 'gone.py')}, net)
    encoder = load_encoder(path, view_module=str(moved))
    assert encoder.info['preprocessing'][1] == {'view': 'edges', 'kind': 'computed', 'channels': 1,
                                                'module': str(moved)}
    assert encoder.info['view_module_path'] == str(moved)


def test_a_non_finite_safetensors_file_is_refused(tmp_path, cmc18):
    encoder = load_encoder(save(tmp_path / 'c.pth', {'model': 'resnet18v1'}, cmc18))
    with torch.no_grad():
        encoder.network.encoder.l_to_ab.conv1.weight[0, 0, 0, 0] = float('nan')
    write_safetensors(encoder, tmp_path / 'nan.safetensors')
    with pytest.raises(UserError, match='holds non-finite values'):
        load_encoder(str(tmp_path / 'nan.safetensors'))


def test_a_view_module_that_does_not_register_the_view_is_refused(tmp_path):
    """The checkpoint's view 'ridges' (a name no other test registers); the module given registers another."""
    other = tmp_path / 'other_views.py'
    other.write_text('from views import register_view\n'
                     'register_view("valleys", 1, lambda rgb: rgb[:, :1].float())\n')
    net = build_cmc_model('resnet18v1', view_channels=(1, 1), view_names=('L', 'ridges'))
    path = save(tmp_path / 'r.pth', {'model': 'resnet18v1', 'views': ['L', 'ridges'], 'view_channels': [1, 1],
                                     'view_module': 'gone.py', 'view_module_path': str(tmp_path / 'gone.py')}, net)
    with pytest.raises(UserError, match=r'does not register the view\(s\) ridges that .* uses'):
        load_encoder(path, view_module=str(other))
    encoder = load_encoder(path)                         # the module is gone: loads, and preprocess says why
    assert encoder.info['preprocessing'][1]['kind'] == 'computed'
    with pytest.raises(UserError, match='gone.py'):
        encoder.preprocess(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_a_contradicting_view_is_refused(tmp_path, cmc18):
    path = save(tmp_path / 'c.pth', {'model': 'resnet18v1', 'view': 'Lab'}, cmc18)
    with pytest.raises(UserError, match='--view YCbCr contradicts .* records the views L ab; drop it'):
        load_encoder(path, view='YCbCr')
    assert load_encoder(path, view='Lab').views == ('L', 'ab')
