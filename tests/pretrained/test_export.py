"""scripts/export.py: each format that can hold an encoder gives, on real photographs, the features of ours
(``PretrainedEncoder.features``, layer 6) to 1e-5: torchvision and timm (InsDis / MoCo resnet50, each view of CMC
resnet50v2, a checkpoint in the reference's layout), detectron2 mapped back (``from_detectron2``), safetensors (every
architecture); and the one-line refusals. Weights: random, with BatchNorm made non-trivial (eval mode matters)."""
import argparse
import errno
import importlib
import json
import os
import pickle
import pickletools
import re
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import timm
import torch
import torchvision
import torchvision.transforms.functional as TF
from conftest import ROOT, SAFETENSORS_NO_ROOM, TORCH_ZIP_FAILURE, no_room_left
from safetensors import safe_open
from torch import nn

from engine.errors import UserError, run_main
from models import build_cmc_model, build_ins_model
from pretrained import load_encoder
from pretrained.detectron2_format import detectron2_name, from_detectron2, torchvision_name
from views.flags import key_names

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
export = importlib.import_module('export')          # scripts/export.py

SIZE = 64
EDGES = os.path.join(ROOT, 'examples', 'edges_view.py')
ATOL = 1e-5
OPTS = {  # our checkpoints' opt for each encoder: method, --model, views
    'cmc_alexnet': {'model': 'alexnet', 'views': ['L', 'ab'], 'view_channels': [1, 2], 'image_size': SIZE},
    'cmc_resnet18v1': {'model': 'resnet18v1', 'views': ['L', 'ab'], 'view_channels': [1, 2], 'image_size': SIZE},
    'cmc_resnet50v2': {'model': 'resnet50v2', 'views': ['L', 'ab'], 'view_channels': [1, 2], 'image_size': SIZE},
    'insdis_resnet50': {'model': 'resnet50', 'moco': False, 'image_size': SIZE},
    'moco_resnet50': {'model': 'resnet50', 'moco': True, 'image_size': SIZE},
    'cmc_edges': {'model': 'resnet18v1', 'views': ['L', 'edges'], 'view_channels': [1, 1], 'image_size': SIZE,
                  'view_module': EDGES},                                     # a view of a --view_module
    'cmc_depth': {'model': 'resnet18v1', 'views': ['L', 'depth'], 'view_channels': [1, 1], 'image_size': SIZE},
}
EXTRA_FLAGS = {'cmc_edges': ['--view_module', EDGES]}


@pytest.fixture(scope='module')
def images():
    """astronaut, chelsea and coffee: centre square, resized to SIZE px; uint8 3 x 3 x SIZE x SIZE."""
    out = []
    for image in (skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()):
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        square = TF.center_crop(chw, min(chw.shape[1:]))
        out.append(TF.resize(square, [SIZE, SIZE], antialias=True))
    return torch.stack(out)


def non_trivial_batchnorm(model, photos, seed):
    """BatchNorm weight, bias and running statistics away from 1, 0, 0, 1: a train-mode pass on ``photos`` (uint8
    B x 3 x H x W; each view gets its first channels, roughly normalised) sets the running statistics, so that the
    features stay O(1) on photographs, then they are moved by a random amount."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0, 0.1, generator=g)
            m.momentum = 1.0
        x = (photos.float() / 255 - 0.5) / 0.25
        model.train()(torch.cat([x[:, :c] for c in getattr(model.encoder, 'view_channels', [3])], dim=1))
        for m in norms:
            m.momentum = 0.1
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.1 * m.running_var.sqrt())
            m.running_var.mul_(torch.empty(m.num_features).uniform_(0.7, 1.4, generator=g))
    return model.eval()


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory, images):
    """{name: path} of our checkpoints ({'opt', 'model', 'epoch'}; MoCo also 'model_ema'), built once per module,
    and 'reference': CMC resnet50v2's weights in the reference's layout (encoder.module. keys, a Namespace opt)."""
    folder, paths = tmp_path_factory.mktemp('checkpoints'), {}
    for seed, (name, opt) in enumerate(OPTS.items()):
        torch.manual_seed(seed)
        model = build_ins_model(opt['model']) if 'views' not in opt else \
            build_cmc_model(opt['model'], 128, opt['view_channels'], key_names(opt['views']))
        state = non_trivial_batchnorm(model, images, seed).state_dict()
        extra = {'model_ema': state} if opt.get('moco') else {}
        paths[name] = str(folder / f'{name}.pth')
        torch.save({'opt': opt, 'model': state, 'epoch': 3, **extra}, paths[name])
        if name == 'cmc_resnet50v2':
            reference = {key.replace('encoder.', 'encoder.module.', 1): value for key, value in state.items()}
            paths['reference'] = str(folder / 'CMC_resnet50v2.pth')
            torch.save({'opt': argparse.Namespace(model='resnet50v2'), 'model': reference, 'epoch': 240},
                       paths['reference'])
    return paths


@pytest.fixture(scope='module')
def encoders(checkpoints):
    return {name: load_encoder(path) for name, path in checkpoints.items()}


def export_to(tmp_path, checkpoint, to, out, *extra):
    """Run the script's main; returns the paths it wrote."""
    return export.main(['--model_path', checkpoint, '--to', to, '--out', str(tmp_path / out), *extra])


def assert_same_features(theirs, ours, label):
    print(f'max |difference| {label}: {(theirs - ours).abs().max().item():.3g} (features: mean |x| '
          f'{ours.abs().mean():.3g})')
    assert ours.abs().mean() > 0.1 and not torch.allclose(ours[0], ours[1])
    torch.testing.assert_close(theirs.float(), ours, atol=ATOL, rtol=0)


def per_view(encoder, images):
    """[(view, its channels of the normalised views tensor, our features of it at layer 6)] in view order."""
    views = torch.split(encoder.preprocess(images), encoder.info['view_channels'], dim=1)
    features = torch.chunk(encoder.features(images), len(views), dim=1)
    return list(zip(encoder.views, views, features))


def torchvision_resnet50(state, channels):
    """The README's lines: torchvision's resnet50, its conv1 on the view's channels, the state dict loaded (strict);
    then fc (zeros, untrained) dropped for the features."""
    model = torchvision.models.resnet50()
    if channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    model.load_state_dict(state)
    model.fc = nn.Identity()
    return model.eval()


def timm_features(state, channels, views):
    model = timm.create_model('resnet50', pretrained=False, num_classes=1000, in_chans=channels)
    model.load_state_dict(state)
    return model.eval().forward_head(model.forward_features(views), pre_logits=True)


@pytest.mark.parametrize('name', ['insdis_resnet50', 'moco_resnet50', 'cmc_resnet50v2', 'reference'])
def test_torchvision_and_timm_give_our_features(tmp_path, checkpoints, encoders, images, name, capsys):
    written = export_to(tmp_path, checkpoints[name], 'torchvision', '{view}.pth')
    out = capsys.readouterr().out
    assert 'fc.weight, fc.bias are zeros' in out and 'UNTRAINED' in out and 'dropped: fc.weight, fc.bias' in out
    encoder = encoders[name]
    assert written == [str(tmp_path / f'{view}.pth') for view in encoder.views]
    for (view, views, ours), path in zip(per_view(encoder, images), written):
        state = torch.load(path, weights_only=True)
        assert set(state) == set(torchvision.models.resnet50().state_dict())
        assert not state['fc.weight'].any() and state['fc.weight'].shape == (1000, 2048)
        with torch.no_grad():
            assert_same_features(torchvision_resnet50(state, views.shape[1])(views), ours,
                                 f'torchvision {name} {view}')
            assert_same_features(timm_features(state, views.shape[1], views), ours, f'timm {name} {view}')


@pytest.mark.parametrize('name', ['insdis_resnet50', 'moco_resnet50', 'cmc_resnet50v2'])
def test_detectron2_file_maps_back_to_our_features(tmp_path, checkpoints, encoders, images, name):
    written = export_to(tmp_path, checkpoints[name], 'detectron2', 'r50_{view}.pkl')
    for (view, views, ours), path in zip(per_view(encoders[name], images), written):
        with open(path, 'rb') as f:
            names = {arg for op, arg, _ in pickletools.genops(f) if op.name in ('SHORT_BINUNICODE', 'BINUNICODE')}
            f.seek(0)
            data = pickle.load(f)
        # the classes the pickle calls, names any numpy has (numpy 2's own pickling names numpy._core)
        assert {'numpy', 'ndarray', 'builtins', 'bytearray'} <= names and not any('core' in n for n in names)
        assert data['__author__'] and data['matching_heuristics'] is True
        model = data['model']
        assert {'stem.conv1.weight', 'stem.conv1.norm.running_var', 'res2.0.shortcut.weight',
                'res2.0.shortcut.norm.bias', 'res5.2.conv3.norm.weight'} <= set(model)
        assert not any('fc' in key or 'num_batches_tracked' in key or 'layer' in key for key in model)
        assert all(isinstance(value, np.ndarray) for value in model.values())
        with torch.no_grad():
            resnet = torchvision_resnet50(from_detectron2(model), views.shape[1])
            assert_same_features(resnet(views), ours, f'detectron2 round trip {name} {view}')


def test_detectron2_names_are_moco_converters_and_map_back():
    for key in torchvision.models.resnet50().state_dict():
        if not key.startswith('fc.') and 'num_batches_tracked' not in key:
            assert torchvision_name(detectron2_name(key)) == key
    assert detectron2_name('bn1.running_mean') == 'stem.conv1.norm.running_mean'
    assert detectron2_name('layer4.0.downsample.1.weight') == 'res5.0.shortcut.norm.weight'
    assert detectron2_name('layer3.5.bn2.bias') == 'res4.5.conv2.norm.bias'


@pytest.mark.parametrize('name', list(OPTS) + ['reference'])
def test_safetensors_holds_every_encoder_and_its_preprocessing(tmp_path, checkpoints, encoders, images, name):
    [path] = export_to(tmp_path, checkpoints[name], 'safetensors', f'{name}.safetensors', *EXTRA_FLAGS.get(name, []))
    with safe_open(path, framework='pt') as f:
        meta = {key: json.loads(value) for key, value in f.metadata().items() if key != 'format'}
    encoder = encoders[name]
    assert (meta['method'], meta['model'], meta['width']) == (encoder.info['method'], encoder.info['model'],
                                                              encoder.info['width'])
    assert (meta['views'], meta['view_channels'], meta['feature_layer']) == (
        list(encoder.views), encoder.info['view_channels'], 6)
    assert meta['source_sha256'] == encoder.info['source_sha256'] and len(meta['source_sha256']) == 64
    colour, *other = meta['preprocessing']
    assert colour['kind'] == 'colour' and colour['space'] in ('Lab', 'RGB') and colour['mean'] and colour['std']
    if name == 'cmc_edges':
        assert other == [{'view': 'edges', 'kind': 'computed', 'channels': 1, 'module': EDGES}]
    if name == 'cmc_depth':
        assert other[0]['kind'] == 'file' and other[0]['view'] == 'depth'
    # a view read from files cannot be made from RGB: the views tensor itself, as the user would give it
    given = {'images': images} if encoder.view is not None else {'views': torch.randn(3, 2, SIZE, SIZE)}
    assert_same_features(load_encoder(path).features(**given), encoder.features(**given), f'safetensors {name}')


def run_cli(capsys, *argv):
    """scripts/export.py's main as run from the shell: (exit code, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        run_main(export.main, list(argv))
    return stopped.value.code, capsys.readouterr().err.strip()


def test_refusals_are_one_error_line(tmp_path, checkpoints, capsys):
    small, alexnet = checkpoints['cmc_resnet18v1'], checkpoints['cmc_alexnet']
    probe, broken = str(tmp_path / 'probe.pth'), str(tmp_path / 'broken.pth')
    torch.save({'opt': {'model': 'resnet18v1'}, 'classifier': {}, 'model': {}}, probe)
    ckpt = torch.load(small, weights_only=True)
    ckpt['model']['encoder.l_to_ab.bn1.running_var'][0] = float('nan')
    torch.save(ckpt, broken)
    half, net = str(tmp_path / 'half.pth'), build_ins_model('resnet18x0.5')      # the demo's MoCo
    torch.save({'opt': {'model': 'resnet18x0.5', 'moco': True}, 'model': net.state_dict(),
                'model_ema': net.state_dict(), 'epoch': 1}, half)
    cases = [(small, 'torchvision', 'x_{view}.pth', '--to torchvision cannot hold --model resnet18v1'),
             (half, 'torchvision', 'x.pth', '--model resnet18x0.5 (a moco ResNet-18 at width 0.5)'),
             (alexnet, 'detectron2', 'x_{view}.pkl', '--to detectron2 cannot hold --model alexnet'),
             (checkpoints['cmc_resnet50v2'], 'torchvision', 'x.pth', 'put {view} in --out'),
             (small, 'safetensors', 'x.pth', 'end --out with .safetensors'),
             (str(tmp_path / 'missing.pth'), 'safetensors', 'x.safetensors', 'does not exist'),
             (probe, 'safetensors', 'x.safetensors', "linear probe's checkpoint"),
             (broken, 'safetensors', 'x.safetensors', 'non-finite')]
    for checkpoint, to, out, needle in cases:
        code, err = run_cli(capsys, '--model_path', checkpoint, '--to', to, '--out', str(tmp_path / out))
        assert code == 2 and err.startswith('error: ') and needle in err and '\n' not in err, err
        if to in ('torchvision', 'detectron2'):
            assert 'export it with --to safetensors' in err or '{view}' in err
    assert sorted(os.listdir(tmp_path)) == ['broken.pth', 'half.pth', 'probe.pth']          # nothing written


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, checkpoints, capsys):
    out = tmp_path / 'cmc.safetensors'
    out.write_bytes(b'old bytes')
    args = ['--model_path', checkpoints['cmc_resnet18v1'], '--to', 'safetensors', '--out', str(out)]
    code, err = run_cli(capsys, *args)
    assert code == 2 and 'already exists; pass --overwrite' in err
    assert out.read_bytes() == b'old bytes' and os.listdir(tmp_path) == ['cmc.safetensors']
    export.main(args + ['--overwrite'])
    assert load_encoder(str(out)).info['model'] == 'resnet18v1' and os.listdir(tmp_path) == ['cmc.safetensors']


def test_a_failed_export_changes_nothing(tmp_path, checkpoints, monkeypatch):
    """The disk fills up while the second view is written: the first view's old file stays, no temporary is left."""
    (tmp_path / 'cmc_L.pth').write_bytes(b'old bytes')
    save = torch.save

    def save_then_fill_the_disk(state, path):
        if 'cmc_ab.pth' in path:                            # the temporary file beside it
            raise OSError(errno.ENOSPC, 'No space left on device')
        save(state, path)

    monkeypatch.setattr(torch, 'save', save_then_fill_the_disk)
    with pytest.raises(UserError, match='could not write .*cmc_ab.pth: No space left on device'):
        export_to(tmp_path, checkpoints['cmc_resnet50v2'], 'torchvision', 'cmc_{view}.pth', '--overwrite')
    assert (tmp_path / 'cmc_L.pth').read_bytes() == b'old bytes' and os.listdir(tmp_path) == ['cmc_L.pth']


@pytest.mark.parametrize('failure', ['torch', 'safetensors', 'other'])
def test_a_full_disk_is_one_line_whatever_the_writer_raises(tmp_path, checkpoints, monkeypatch, failure):
    """Writers that keep no OSError: torch.save to a path raises only its zip writer's RuntimeError (the disk then
    has no room left: statvfs faked), safetensors a SafetensorError whose text has "os error 28". Another failure,
    with room on the disk, stays the traceback of a bug."""
    from safetensors import SafetensorError

    def fail(*args):                                # (payload, path): torch.save's; (encoder, path): the export's
        with open(args[-1], 'wb') as f:
            f.write(b'partial')
        raise SafetensorError(SAFETENSORS_NO_ROOM) if failure == 'safetensors' else RuntimeError(TORCH_ZIP_FAILURE)

    if failure == 'torch':
        no_room_left(monkeypatch, tmp_path)
    monkeypatch.setattr(torch, 'save', fail)
    monkeypatch.setattr(export, 'write_safetensors', fail)
    to, out = ('safetensors', 'x.safetensors') if failure == 'safetensors' else ('torchvision', 'x.pth')
    if failure == 'other':
        with pytest.raises(RuntimeError, match='unexpected pos'):
            export_to(tmp_path, checkpoints['moco_resnet50'], to, out)
    else:
        with pytest.raises(UserError) as e:
            export_to(tmp_path, checkpoints['moco_resnet50'], to, out)
        assert re.fullmatch(rf'could not write {re.escape(str(tmp_path / out))}: No space left on device \(\d+ MiB '
                            r'free there\); free some space or give --out on another disk \(no existing file was '
                            r'changed\)', str(e.value)), str(e.value)
    assert os.listdir(tmp_path) == []


def test_an_empty_out_is_refused_before_any_work(tmp_path, checkpoints, capsys):
    for to in ('torchvision', 'safetensors'):
        code, err = run_cli(capsys, '--model_path', str(tmp_path / 'not_read.pth'), '--to', to, '--out', '')
        assert code == 2 and err == 'error: --out is empty; give the file to write'


def test_the_script_runs_from_the_shell(tmp_path, checkpoints):
    command = [sys.executable, 'scripts/export.py', '--model_path', checkpoints['cmc_resnet18v1'], '--to',
               'torchvision', '--out', str(tmp_path / 'cmc_{view}.pth')]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr.startswith('error: --to torchvision cannot hold --model resnet18v1 (a cmc ResNet-18 at '
                                  'width 0.5)') and 'export it with --to safetensors' in done.stderr


def test_a_symlinked_output_is_written_through(tmp_path, checkpoints):
    """--out a link: the file it points to gets the export (a dangling link's target is created); the link stays."""
    target, link = tmp_path / 'target.pth', tmp_path / 'link.pth'
    target.write_bytes(b'old')
    link.symlink_to(target.name)
    export_to(tmp_path, checkpoints['moco_resnet50'], 'torchvision', str(link), '--overwrite')
    assert link.is_symlink()
    assert torch.load(str(target), weights_only=True)['fc.weight'].shape == (1000, 2048)
    dangling = tmp_path / 'dangling.pth'
    dangling.symlink_to('made.pth')
    export_to(tmp_path, checkpoints['moco_resnet50'], 'torchvision', str(dangling))
    assert dangling.is_symlink() and (tmp_path / 'made.pth').is_file()


def test_exports_given_as_checkpoints_and_a_contradicting_view_are_one_line(tmp_path, checkpoints, capsys):
    pkl = tmp_path / 'cmc_{view}.pkl'
    export_to(tmp_path, checkpoints['cmc_resnet50v2'], 'detectron2', str(pkl))
    code, err = run_cli(capsys, '--model_path', str(tmp_path / 'cmc_L.pkl'), '--to', 'safetensors', '--out',
                        str(tmp_path / 'x.safetensors'))
    assert code == 2 and err.startswith('error: ') and 'is a detectron2 export' in err and '\n' not in err
    code, err = run_cli(capsys, '--model_path', checkpoints['cmc_resnet50v2'], '--view', 'YCbCr', '--to',
                        'safetensors', '--out', str(tmp_path / 'y.safetensors'))
    assert code == 2 and '--view YCbCr contradicts' in err and 'records the views L ab' in err
    assert not (tmp_path / 'y.safetensors').exists()


@pytest.mark.parametrize('key,value,needle', [
    ('model', 'resnet99', "model 'resnet99'"), ('method', 'simclr', "method 'simclr'"),
    ('method', 'moco', "model 'resnet18v1' for method 'moco'"), ('view_channels', ['1', '2'], 'view_channels'),
    ('views', None, 'views None'), ('preprocessing', 'junk', 'preprocessing that does not match'),
    ('image_size', -5, 'image_size -5'), ('width', 1, "width 1 where model 'resnet18v1' has another"),
])
def test_safetensors_metadata_that_describes_no_encoder_is_one_line(tmp_path, checkpoints, key, value, needle):
    from safetensors.torch import load_file, save_file
    good = tmp_path / 'good.safetensors'
    export_to(tmp_path, checkpoints['cmc_resnet18v1'], 'safetensors', str(good))
    with safe_open(str(good), 'pt') as f:
        metadata = f.metadata()
    metadata[key] = json.dumps(value)
    save_file(load_file(str(good)), str(tmp_path / 'bad.safetensors'), metadata=metadata)
    with pytest.raises(UserError, match=re.escape(needle)):
        load_encoder(str(tmp_path / 'bad.safetensors'))
