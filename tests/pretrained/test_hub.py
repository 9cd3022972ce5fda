"""hubconf.py through torch.hub (source='local') on real photographs, against a second code path: scikit-image's
colour conversions with the training normalisation written out, and the model the probes build and feed
(LinearProbing.py, eval_moco_ins.py); the .safetensors export, the reference's layout, views not made from RGB,
a fresh process in another folder, and the one-line refusals."""
import argparse
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.color
import skimage.data
import skimage.transform
import torch
from conftest import ROOT

import hubconf
import views
from engine.checkpoint import load_checkpoint
from engine.errors import UserError
from models import build_cmc_model, build_ins_model
from pretrained.safetensors_format import write_safetensors
from views import DeviceView, ViewStack
from views.flags import file_channels, key_names

SIZE = 64
EDGES = os.path.join(ROOT, 'examples', 'edges_view.py')
# The training normalisation, written out: (x - mean) / std per channel, x in scikit-image's units (RGB: x / 255).
LAB = ((50.0, 6.025, -6.6895), (50.0, 92.208, 101.1675))
YCBCR = ((116.151, 121.080, 132.342), (109.500, 111.855, 111.964))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# name -> (hub entry, its checkpoint's opt); InsDis / MoCo record --moco as train_moco_ins.py does
CHECKPOINTS = {
    'lab': ('cmc', {'model': 'resnet18v1', 'views': ['L', 'ab'], 'view_channels': [1, 2], 'image_size': SIZE}),
    'ycbcr': ('cmc', {'model': 'resnet18v1', 'views': ['Y', 'CbCr'], 'view_channels': [1, 2]}),
    'insdis': ('insdis', {'model': 'resnet18', 'moco': False}),
    'moco': ('moco', {'model': 'resnet18', 'moco': True}),
}
METHODS = {'cmc': 'CMC', 'insdis': 'InsDis', 'moco': 'MoCo'}


def hub(entry, checkpoint, **kwargs):
    return torch.hub.load(ROOT, entry, source='local', checkpoint=str(checkpoint), **kwargs)


def network(opt):
    """The model the probes build for a checkpoint's opt (its weights not loaded)."""
    if opt['model'].endswith(('v1', 'v2', 'v3')):
        return build_cmc_model(opt['model'], 128, opt['view_channels'], key_names(opt['views']))
    return build_ins_model(opt['model'])


def save(path, opt, seed, ema=False):
    """A pretraining checkpoint of a freshly initialised model (seed ``seed``) at ``path``, with a MoCo key encoder
    (``model_ema``) if ``ema``; returns the model, in eval mode."""
    torch.manual_seed(seed)
    model = network(opt).eval()
    state = model.state_dict()
    torch.save({'opt': opt, 'model': state, 'epoch': 3, **({'model_ema': state} if ema else {})}, str(path))
    return model


def scikit_views(photos, convert, stats):
    """B x 3 x H x W float64: scikit-image's ``convert`` of each H x W x 3 photo, then (x - mean) / std."""
    mean, std = (np.array(values)[:, None, None] for values in stats)
    return torch.from_numpy(np.stack([(convert(image.permute(1, 2, 0).numpy()).transpose(2, 0, 1) - mean) / std
                                      for image in photos]))


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def one_line(error):
    message = str(error.value)
    assert '\n' not in message and message, message
    return message


@pytest.fixture(scope='module')
def photos():
    """astronaut, chelsea and coffee at 64 x 64: uint8 3 x 3 x 64 x 64."""
    images = [skimage.transform.resize(getattr(skimage.data, name)(), (SIZE, SIZE), anti_aliasing=True,
                                       preserve_range=True).round().astype(np.uint8)
              for name in ('astronaut', 'chelsea', 'coffee')]
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """name -> the path of its .pth."""
    folder = tmp_path_factory.mktemp('hub')
    for seed, (name, (_, opt)) in enumerate(CHECKPOINTS.items()):
        save(folder / f'{name}.pth', opt, seed, ema=name == 'moco')
    return {name: folder / f'{name}.pth' for name in CHECKPOINTS}


@pytest.fixture(scope='module')
def encoders(checkpoints):
    return {name: hub(CHECKPOINTS[name][0], path) for name, path in checkpoints.items()}


def test_the_entries_are_listed_with_their_usage(monkeypatch):
    # torch 2.14's hub.list / hub.help take only a GitHub repository: give them this folder as its checkout
    monkeypatch.setattr(torch.hub, '_get_cache_or_reload', lambda repo, *args, **kwargs: repo)
    assert torch.hub.list(ROOT) == ['cmc', 'insdis', 'moco']
    for entry in ('cmc', 'insdis', 'moco'):
        doc = torch.hub.help(ROOT, entry)
        assert 'PretrainedEncoder' in doc and f"'{entry}', source='local', checkpoint=" in doc
        assert 'encoder.features(images)' in doc
    assert all(importlib.util.find_spec(package) for package in hubconf.dependencies)


@pytest.mark.parametrize('name,convert,stats', [('lab', skimage.color.rgb2lab, LAB),
                                                ('ycbcr', skimage.color.rgb2ycbcr, YCBCR),
                                                ('insdis', lambda image: image / 255, IMAGENET),
                                                ('moco', lambda image: image / 255, IMAGENET)])
def test_preprocess_is_scikit_image_normalised_as_in_training(encoders, photos, name, convert, stats):
    encoder = encoders[name]
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    out = encoder.preprocess(photos)
    assert out.dtype == torch.float32 and out.shape == (3, 3, SIZE, SIZE)
    assert max_diff(out, scikit_views(photos, convert, stats)) < 1e-5        # 7e-7 measured (Lab)


@pytest.mark.parametrize('name', list(CHECKPOINTS))
def test_features_are_what_the_probes_feed_their_classifier(checkpoints, encoders, photos, name):
    ckpt = load_checkpoint(str(checkpoints[name]))
    opt = ckpt['opt']
    model = network(opt)
    model.load_state_dict(ckpt['model'])
    model.eval()
    cmc = CHECKPOINTS[name][0] == 'cmc'
    view = ViewStack(opt['views'], file_channels(opt['views'], opt['view_channels'])) if cmc else DeviceView('RGB')
    encoder = encoders[name]
    assert encoder.info['method'] == CHECKPOINTS[name][0]
    for layer in (5, 6):
        with torch.no_grad():
            out = model(view(photos), layer)
        expected = torch.cat(out, dim=1) if cmc else out            # the views in checkpoint order
        features = encoder.features(photos, layer)
        assert features.shape == expected.shape and max_diff(features, expected) <= 1e-5
    assert features.shape == (3, 512)                   # CMC: 2 views x 256 (ResNet-18 at width 0.5); ResNet-18: 512


def test_device_puts_the_encoder_there(checkpoints, encoders, photos, device):
    """device= (TEST_DEVICE=cuda runs it on the GPU): uint8 images on the CPU are moved to the encoder's device."""
    encoder = hub('cmc', checkpoints['lab'], device=str(device))
    assert encoder.device.type == device.type
    views_there, features_there = encoder.preprocess(photos), encoder.features(photos)
    assert views_there.device.type == features_there.device.type == device.type
    assert max_diff(views_there.cpu(), encoders['lab'].preprocess(photos)) < 1e-5
    # convolutions may run in TF32 on a GPU: about 1e-3 relative
    torch.testing.assert_close(features_there.cpu(), encoders['lab'].features(photos), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('name', ['lab', 'moco'])
def test_the_safetensors_export_loads_through_hub_with_the_same_features(tmp_path, encoders, photos, name):
    exported = tmp_path / f'{name}.safetensors'
    write_safetensors(encoders[name], exported)
    again = hub(CHECKPOINTS[name][0], exported)
    assert again.info['method'] == encoders[name].info['method'] and not again.training
    assert torch.equal(again.features(photos), encoders[name].features(photos))


@pytest.mark.parametrize('entry,model,opt', [
    ('cmc', 'resnet18v1', argparse.Namespace(model='resnet18v1')),
    ('cmc', 'resnet18v1', argparse.Namespace()),                    # no --model recorded: arch= gives it
    ('insdis', 'resnet50', argparse.Namespace(model='resnet50', moco=False)),
])
def test_the_reference_layout_loads(tmp_path, photos, entry, model, opt):
    """The released weights: an argparse.Namespace opt, keys under DataParallel's ``module.``."""
    torch.manual_seed(0)
    net = network({'model': model, 'views': ['L', 'ab'], 'view_channels': [1, 2]}).eval()
    state = {(k.replace('encoder.', 'encoder.module.', 1) if entry == 'cmc' else 'module.' + k): v
             for k, v in net.state_dict().items()}                 # CMC wrapped its encoder, InsDis its model
    path = tmp_path / 'ckpt_epoch_240.pth'
    torch.save({'opt': opt, 'model': state, 'epoch': 240}, str(path))
    given = {} if 'model' in vars(opt) else {'arch': model}
    if given:
        with pytest.raises(UserError, match='does not record its --model') as error:
            hub(entry, path)
        one_line(error)
    encoder = hub(entry, path, **given)
    view = ViewStack(['L', 'ab']) if entry == 'cmc' else DeviceView('RGB')
    with torch.no_grad():
        out = net(view(photos), 6)
    assert max_diff(encoder.features(photos), torch.cat(out, 1) if entry == 'cmc' else out) <= 1e-5


def test_a_view_read_from_files_needs_the_views_tensor(tmp_path, photos):
    opt = {'model': 'resnet18v1', 'views': ['L', 'ab', 'depth'], 'view_channels': [1, 2, 1]}
    model = save(tmp_path / 'depth.pth', opt, 1)
    encoder = hub('cmc', tmp_path / 'depth.pth')
    with pytest.raises(UserError) as error:
        encoder.preprocess(photos)
    assert 'depth' in one_line(error) and 'give features(views=...) the views tensor' in one_line(error)
    depth = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    views_tensor = torch.cat([scikit_views(photos, skimage.color.rgb2lab, LAB), depth], dim=1)   # float64
    with torch.no_grad():
        expected = torch.cat(model(views_tensor.float(), 6), dim=1)
    assert max_diff(encoder.features(views=views_tensor), expected) <= 1e-5


def edges_checkpoint(folder, module, module_path):
    """A CMC checkpoint on views L and edges (examples/edges_view.py) whose opt names ``module`` / ``module_path``."""
    opt = {'model': 'resnet18v1', 'views': ['L', 'edges'], 'view_channels': [1, 1], 'view_module': module,
           'view_module_path': module_path}
    return save(folder / 'edges.pth', opt, 2), folder / 'edges.pth'


def test_a_view_module_found_makes_the_views(tmp_path, photos):
    model, path = edges_checkpoint(tmp_path, 'examples/edges_view.py', EDGES)
    encoder = hub('cmc', path)
    out = encoder.preprocess(photos)
    views.load_view_module(EDGES)
    assert torch.equal(out[:, 1:], views.get_view('edges').fn(photos))
    assert max_diff(out[:, :1], scikit_views(photos, skimage.color.rgb2lab, LAB)[:, :1]) < 1e-5
    with torch.no_grad():
        assert max_diff(encoder.features(photos), torch.cat(model(out, 6), dim=1)) <= 1e-5


def test_a_view_module_gone_needs_the_views_tensor_or_view_module(tmp_path, photos):
    gone = str(tmp_path / 'gone' / 'edges_view.py')
    model, path = edges_checkpoint(tmp_path, 'gone/edges_view.py', gone)
    encoder = hub('cmc', path)
    with pytest.raises(UserError) as error:
        encoder.preprocess(photos)
    message = one_line(error)
    assert gone in message and 'view_module=PATH' in message and 'the view(s) edges' in message
    assert 'give features(views=...) the views tensor' in message
    views_tensor = torch.randn(3, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_diff(encoder.features(views=views_tensor), torch.cat(model(views_tensor, 6), dim=1)) <= 1e-5
    found = hub('cmc', path, view_module=EDGES)                     # the way out the message gives
    assert torch.equal(found.preprocess(photos)[:, 1:], views.get_view('edges').fn(photos))


def test_another_methods_checkpoint_names_its_entry(tmp_path, checkpoints):
    for entry, name, right in (('cmc', 'moco', 'moco'), ('moco', 'lab', 'cmc'), ('insdis', 'moco', 'moco'),
                               ('moco', 'insdis', 'insdis')):
        with pytest.raises(UserError) as error:
            hub(entry, checkpoints[name])
        assert f'holds an encoder trained with {METHODS[right]} ' in one_line(error)
        assert f"torch.hub.load({ROOT!r}, {right!r}, source='local'" in one_line(error)
    with pytest.raises(UserError, match="arch='resnet50' is no CMC --model"):
        hub('cmc', checkpoints['lab'], arch='resnet50')
    for missing in ('nope.pth', 'nope.safetensors'):
        with pytest.raises(UserError, match='does not exist') as error:
            hub('cmc', tmp_path / missing)
        one_line(error)
    # an InsDis / MoCo file that does not say which it is (no opt 'moco', no 'model_ema'): as the entry says
    save(tmp_path / 'either.pth', {'model': 'resnet18'}, 0)
    assert [hub(entry, tmp_path / 'either.pth').info['method'] for entry in ('insdis', 'moco')] == ['insdis', 'moco']


CHILD = textwrap.dedent("""
    import os, sys
    import torch
    root, checkpoint, exported, images, out = sys.argv[1:]
    import models                       # a package of this name of the user's own, beside this script
    try:
        torch.hub.load(root, 'cmc', source='local', checkpoint=checkpoint)
    except ImportError as e:
        clash = str(e)
    del sys.modules['models']
    encoder = torch.hub.load(root, 'cmc', source='local', checkpoint=checkpoint)
    again = torch.hub.load(root, 'cmc', source='local', checkpoint=exported)
    x = torch.load(images)
    ours = {name for name, module in list(sys.modules.items()) if '.' not in name and (getattr(
        module, '__file__', None) or '') in (os.path.join(root, name, '__init__.py'), os.path.join(root, name + '.py'))}
    torch.save({'clash': clash, 'on_path': root in sys.path, 'features': encoder.features(x),
                'exported': again.features(x), 'packages': sorted(ours)}, out)
""")


def test_a_fresh_process_in_another_folder(tmp_path, checkpoints, encoders, photos):
    """torch.hub as a user runs it: another working directory, the repository not on sys.path, a package of theirs
    named like one of ours; no trust prompt (stdin closed) and nothing written to the hub cache."""
    (tmp_path / 'models').mkdir()
    (tmp_path / 'models' / '__init__.py').write_text('')
    (tmp_path / 'child.py').write_text(CHILD)
    write_safetensors(encoders['lab'], tmp_path / 'lab.safetensors')
    torch.save(photos, str(tmp_path / 'photos.pt'))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', TORCH_HOME=str(tmp_path / 'torch_home'))
    args = [str(checkpoints['lab']), str(tmp_path / 'lab.safetensors'), str(tmp_path / 'photos.pt'),
            str(tmp_path / 'out.pt')]
    run = subprocess.run([sys.executable, 'child.py', ROOT, *args], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = torch.load(str(tmp_path / 'out.pt'))
    assert 'models' in out['clash'] and "not this repository's" in out['clash'] and '\n' not in out['clash']
    assert not out['on_path'] and not (tmp_path / 'torch_home').exists()
    assert out['packages'] == sorted(hubconf._OURS)                 # the packages hubconf.py checks are all it imports
    expected = encoders['lab'].features(photos)
    assert torch.equal(out['features'], expected) and torch.equal(out['exported'], expected)
