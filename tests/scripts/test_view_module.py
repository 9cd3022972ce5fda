"""Your own view in one file (README, "Add a view"): examples/edges_view.py against scikit-image's Sobel filter, then
train_CMC.py --view_module with it, the probe (--probe_views edges) and --resume finding the module again from the
checkpoint in fresh processes, and the one-line errors of a module that is lost, missing, clashing or wrong."""
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.color
import skimage.data
import skimage.filters
import torch

import train_CMC
import views
from conftest import ROOT
from engine import checkpoint
from engine.errors import UserError
from inputs.multiview import MultiviewFolder

EXAMPLE = os.path.join('examples', 'edges_view.py')
TINY = ['--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', 'cpu', '--seed', '0',
        '--print_freq', '100', '--model', 'alexnet', '--nce_k', '8', '--epochs', '1']


def edges_fn():
    """The example's function, loaded as --view_module loads it."""
    views.load_view_module(os.path.join(ROOT, EXAMPLE))
    return views.get_view('edges').fn


@pytest.mark.parametrize('photo', ['astronaut', 'coffee'])
def test_the_edges_view_is_scikit_images_sobel_of_the_luminance(photo):
    image = getattr(skimage.data, photo)()[::4, ::4]                        # H x W x 3 uint8, borders included
    expected = skimage.filters.sobel(skimage.color.rgb2gray(image))       # float64 in [0, 1]
    rgb = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    out = edges_fn()(rgb)
    assert out.shape == (1, 1, *image.shape[:2]) and out.dtype == torch.float32
    assert expected.max() > 0.3                                            # real edges, not a flat image
    # float32 grey, 3 x 3 sums and a square root against float64: ~1e-6 of the [0, 1] range
    np.testing.assert_allclose((out[0, 0].double().numpy() + 1) / 2, expected, atol=2e-6, rtol=0)


def run_script(args, cwd):
    """A script in a fresh Python process (nothing registered yet), from ``cwd``."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT})


def test_train_probe_and_resume_with_the_example_view(tmp_path, image_folder, monkeypatch):
    monkeypatch.chdir(ROOT)                                  # the README's command, run from the repository
    flags = ['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'models'),
             '--tb_path', str(tmp_path / 'tb'), *TINY, '--views', 'L', 'ab', 'edges']
    train_CMC.main(['--view_module', EXAMPLE, *flags])
    (run,) = glob.glob(str(tmp_path / 'models' / '*'))
    assert os.path.basename(run).endswith('_views_L_ab_edges')
    ckpt = checkpoint.load_checkpoint(os.path.join(run, 'current.pth'))
    assert ckpt['opt']['view_module'] == EXAMPLE and ckpt['opt']['view_module_path'] == os.path.join(ROOT, EXAMPLE)
    assert ckpt['opt']['view_channels'] == [1, 2, 1]
    assert set(ckpt['contrast']) == {'params', 'memory_l', 'memory_ab', 'memory_edges'}
    assert {k.split('.')[1] for k in ckpt['model']} == {'l_to_ab', 'ab_to_l', 'edges'}
    # a fresh process elsewhere: the probe finds the module from the checkpoint's absolute path
    probe = run_script([os.path.join(ROOT, 'LinearProbing.py'), '--dataset', 'folder', '--data_folder', image_folder,
                        '--model_path', os.path.join(run, 'current.pth'), '--save_path', str(tmp_path / 'probe'),
                        '--tb_path', str(tmp_path / 'tb'), '--image_size', '64', '--num_workers', '0',
                        '--batch_size', '8', '--device', 'cpu', '--seed', '0', '--model', 'alexnet', '--layer', '6',
                        '--epochs', '1', '--cache_features', '--bn', '--probe_views', 'edges'], cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert 'best Acc@1' in probe.stdout
    (probe_ckpt,) = glob.glob(str(tmp_path / 'probe' / '*_probe_edges' / 'current.pth'))
    assert checkpoint.load_checkpoint(probe_ckpt)['classifier']['classifier.LinearClassifier.weight'].shape == (3, 2048)
    # and --resume, without --view_module, continues the run
    resumed = run_script(['train_CMC.py', *flags, '--epochs', '2', '--resume', 'auto'], cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f'=> resumed from {os.path.join(run, "current.pth")}: epoch 2, step 0' in resumed.stdout
    assert checkpoint.load_checkpoint(os.path.join(run, 'current.pth'))['epoch'] == 2


def write_module(path, name, body):
    with open(path, 'w') as f:
        f.write(textwrap.dedent(f'''
            import torch
            from views import register_view
            register_view({name!r}, 1, lambda rgb: {body})
        '''))
    return str(path)


def test_a_lost_view_module_is_one_line_and_view_module_finds_it(tmp_path, image_folder):
    os.makedirs(tmp_path / 'a')
    module = write_module(tmp_path / 'a' / 'grey_views.py', 'grey_lost', 'rgb.float().mean(1, keepdim=True) / 128 - 1')
    train_CMC.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'models'),
                    '--tb_path', str(tmp_path / 'tb'), *TINY, '--views', 'L', 'grey_lost', '--view_module', module])
    (ckpt,) = glob.glob(str(tmp_path / 'models' / '*' / 'current.pth'))
    shutil.move(str(tmp_path / 'a'), str(tmp_path / 'b'))
    probe = [os.path.join(ROOT, 'LinearProbing.py'), '--dataset', 'folder', '--data_folder', image_folder,
             '--model_path', ckpt, '--save_path', str(tmp_path / 'probe'), '--tb_path', str(tmp_path / 'tb'),
             '--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', 'cpu', '--model', 'alexnet',
             '--layer', '5', '--epochs', '1', '--cache_features']
    lost = run_script(probe, cwd=tmp_path)
    assert lost.returncode == 2 and lost.stderr == (
        f'error: {ckpt} was trained with --view_module {module} ({module}), which is not found now; pass '
        f'--view_module PATH (the file that registers its views)\n')
    assert not os.path.exists(tmp_path / 'probe')
    found = run_script([*probe, '--view_module', 'b/grey_views.py'], cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-2000:]


def test_a_wrong_view_function_stops_the_first_batch_with_one_line(tmp_path, image_folder):
    module = write_module(tmp_path / 'liar_views.py', 'two_channel_liar', 'rgb[:, :2].float()')
    with pytest.raises(UserError) as error:
        train_CMC.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'm'),
                        '--tb_path', str(tmp_path / 'tb'), *TINY, '--views', 'L', 'two_channel_liar',
                        '--view_module', module])
    assert str(error.value).startswith(f"view 'two_channel_liar' ({module}) returned") and '\n' not in str(error.value)
    assert 'returned torch.float32 (8, 2, 64, 64) on cpu for a uint8 (8, 3, 64, 64) batch on cpu; expected a ' \
           "float tensor (8, 1, 64, 64) on cpu (register_view's channels is 1)" in str(error.value)
    assert not os.path.exists(tmp_path / 'm')                 # a run that fails before its first save leaves nothing


def test_view_module_mistakes_are_one_line_each(tmp_path, image_folder):
    base = ['--data_folder', image_folder, '--model_path', 'm', '--tb_path', 't', '--dataset', 'folder']
    with pytest.raises(UserError, match='--view_module nowhere.py: no such file'):
        train_CMC.parse_option([*base, '--views', 'L', 'edges', '--view_module', 'nowhere.py'])
    with pytest.raises(UserError, match=r'unknown view never_registered: .* give your own with --view_module'):
        train_CMC.parse_option([*base, '--views', 'L', 'never_registered'])
    clash = tmp_path / 'clash.py'
    clash.write_text('from views import register_view\nregister_view("Y", 1, abs)\n')
    with pytest.raises(UserError, match=r"register_view\('Y', ...\): the name is taken by the colour view 'Y'"):
        train_CMC.parse_option([*base, '--views', 'L', 'Y', '--view_module', str(clash)])


def test_a_multiview_folder_makes_computed_views_from_its_rgb_folder(tmp_path):
    views.register_view('rgb_made', 1, lambda rgb: rgb[:, :1].float())
    for folder in ('rgb', 'depth'):
        os.makedirs(tmp_path / folder / 'c0')
        image = np.full((6, 6, 3) if folder == 'rgb' else (6, 6), 7, np.uint8)
        from PIL import Image
        Image.fromarray(image).save(tmp_path / folder / 'c0' / 'x.png')
    data = MultiviewFolder(str(tmp_path), ['L', 'rgb_made', 'depth'])
    assert data.folders == ['rgb', 'depth'] and data.file_channels == {'depth': 1}
    assert data[0][0].shape == (4, 6, 6) and views.get_view('depth').kind == 'file'


def code_of(source):
    """The AST of Python source without its docstrings (comments are not in an AST)."""
    import ast
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, 'body', None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def test_the_readme_shows_the_example_as_it_is():
    readme = open(os.path.join(ROOT, 'README.md')).read()
    section = readme[readme.index('## Add a view'):]
    start = section.index('```python\n') + len('```python\n')
    shown = section[start:section.index('```\n', start)]
    assert code_of(shown) == code_of(open(os.path.join(ROOT, EXAMPLE)).read())
