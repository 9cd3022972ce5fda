"""views.registry, views.loading and views.stack: the built-in views, register_view and its refusals, --view_module
import and recovery from a checkpoint, ViewStack with computed views and its first-batch check of what the user's
function returns. Views registered here get names no other test uses (the registry lives for the whole process)."""
import os
import re
import sys
import textwrap

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch

import views
from engine.errors import UserError
from inputs.multiview import MultiviewFolder
from views import loading, registry
from views.stack import ViewStack

# The colour views as the code before the registry had them: name -> (colour space, channels), and those with colour.
OLD_COLOUR_VIEWS = {'L': ('Lab', (0,)), 'ab': ('Lab', (1, 2)), 'a': ('Lab', (1,)), 'b': ('Lab', (2,)),
                    'Y': ('YCbCr', (0,)), 'CbCr': ('YCbCr', (1, 2)), 'Cb': ('YCbCr', (1,)), 'Cr': ('YCbCr', (2,)),
                    'H': ('HSV', (0,)), 'S': ('HSV', (1,)), 'V': ('HSV', (2,))}
OLD_CHROMA_VIEWS = ('ab', 'a', 'b', 'CbCr', 'Cb', 'Cr', 'H', 'S')


def photo(size=48):
    """1 x 3 x size x size uint8: a corner of a real photograph."""
    crop = skimage.data.astronaut()[100:100 + size, 150:150 + size]
    return torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous()


def test_built_in_views_are_the_colour_views_of_before():
    assert views.COLOUR_VIEWS == OLD_COLOUR_VIEWS
    assert set(views.CHROMA_VIEWS) == set(OLD_CHROMA_VIEWS)
    for name, (space, picked) in OLD_COLOUR_VIEWS.items():
        view = views.get_view(name)
        assert (view.kind, view.channels, view.chroma, view.from_rgb) == ('colour', len(picked),
                                                                          name in OLD_CHROMA_VIEWS, True)


@pytest.mark.parametrize('name', list(OLD_COLOUR_VIEWS))
def test_a_colour_views_function_is_its_channels_of_skimage(name):
    """fn(rgb) against scikit-image's conversion of the same pixels, normalised by VIEW_STATS (a second path)."""
    x = photo()
    space, picked = OLD_COLOUR_VIEWS[name]
    convert = {'Lab': skimage.color.rgb2lab, 'YCbCr': skimage.color.rgb2ycbcr, 'HSV': skimage.color.rgb2hsv}[space]
    mean, std = (np.asarray(v)[list(picked)] for v in views.VIEW_STATS[space])
    expected = (convert(x[0].permute(1, 2, 0).numpy())[..., list(picked)] - mean) / std         # H x W x C
    out = views.get_view(name).fn(x)
    assert out.shape == (1, len(picked), 48, 48) and out.dtype == torch.float32
    # 2e-5 of the normalised range: float32 rounding (the colour tests' bound on DeviceView)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).double().numpy(), expected, atol=2e-5, rtol=0)


def double_it(rgb):
    return rgb.float().mul(2 / 255).sub(1)


def test_register_view_refuses_clashes_and_bad_arguments():
    with pytest.raises(UserError, match=r"the name is taken by the colour view 'L' \(built in\)"):
        views.register_view('l', 1, double_it)                         # names compare case-insensitively
    with pytest.raises(UserError, match='channels must be a positive int, got 0'):
        views.register_view('reg_zero', 0, double_it)
    with pytest.raises(UserError, match='fn must be a function'):
        views.register_view('reg_not_callable', 1, 'edges')
    for bad in ('2d', 'my-view', 'RGB'):
        with pytest.raises(UserError, match='cannot name a view'):
            views.register_view(bad, 1, double_it)
    first = views.register_view('reg_twice', 3, double_it)
    assert views.register_view('reg_twice', 3, double_it).source == first.source == __file__   # a re-import
    with pytest.raises(UserError, match=r"taken by the computed view 'reg_twice' \(" + re.escape(__file__)):
        views.register_view('reg_twice', 3, lambda rgb: rgb.float())
    assert 'reg_twice' in views.view_names('computed') and 'reg_twice' not in views.view_names('colour')


def write_module(folder, name, body):
    path = os.path.join(folder, f'{name}.py')
    with open(path, 'w') as f:
        f.write(textwrap.dedent(body))
    return path


def test_load_view_module_by_path_and_by_name(tmp_path, monkeypatch):
    path = write_module(tmp_path, 'by_path_views', '''
        from views import register_view
        register_view('load_by_path', 2, lambda rgb: rgb[:, :2].float())
    ''')
    assert loading.load_view_module(path) == path and views.find_view('load_by_path').channels == 2
    assert loading.load_view_module(os.path.relpath(path)) == path          # the same file: imported once
    write_module(tmp_path, 'by_name_views', '''
        from views import register_view
        register_view('load_by_name', 1, lambda rgb: rgb[:, :1].float())
    ''')
    monkeypatch.chdir(tmp_path)                                         # importable from the working directory
    assert loading.load_view_module('by_name_views') == str(tmp_path / 'by_name_views.py')
    assert views.find_view('load_by_name').kind == 'computed'
    assert str(tmp_path) in sys.path                                    # as for a script: the modules beside it import


def test_load_view_module_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(loading.ViewModuleNotFound, match=r'--view_module nowhere.py: no such file \(give the .py'):
        loading.load_view_module('nowhere.py')
    with pytest.raises(loading.ViewModuleNotFound, match='no module of that name is importable from'):
        loading.load_view_module('no_such_module_here')
    broken = write_module(tmp_path, 'broken_views', 'import views\nraise RuntimeError("bad\\nthing")\n')
    with pytest.raises(UserError, match=rf'importing {broken} failed \(line 2\): RuntimeError: bad thing$'):
        loading.load_view_module(broken)
    empty = write_module(tmp_path, 'empty_views', 'x = 1\n')
    with pytest.raises(UserError, match='registers no view; call views.register_view'):
        loading.load_view_module(empty)
    clash = write_module(tmp_path, 'clash_views', 'import views\nviews.register_view("CbCr", 2, abs)\n')
    with pytest.raises(UserError, match="taken by the colour view 'CbCr'"):
        loading.load_view_module(clash)


def test_restore_view_module_tries_the_absolute_path_then_the_value_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs('moved')
    path = write_module(tmp_path / 'moved', 'restored_views', '''
        from views import register_view
        register_view('restored_view', 1, lambda rgb: rgb[:, :1].float())
    ''')
    assert loading.restore_view_module({}, None, 'ckpt') == (None, None)
    # the absolute path is gone, the value as given (relative to the working directory) still finds it
    saved = {'view_module': 'moved/restored_views.py', 'view_module_path': '/gone/restored_views.py'}
    assert loading.restore_view_module(saved, None, 'ckpt') == ('moved/restored_views.py', path)
    saved = {'view_module': 'elsewhere/restored_views.py', 'view_module_path': path}
    assert loading.restore_view_module(saved, None, 'ckpt') == ('elsewhere/restored_views.py', path)
    lost = {'view_module': 'lost_views.py', 'view_module_path': '/gone/lost_views.py'}
    with pytest.raises(UserError, match=r'ckpt was trained with --view_module lost_views.py \(/gone/lost_views.py\), '
                                        r'which is not found now; pass --view_module PATH'):
        loading.restore_view_module(lost, None, 'ckpt')
    assert loading.restore_view_module(lost, 'moved/restored_views.py', 'ckpt') == ('moved/restored_views.py', path)


def test_view_stack_puts_computed_views_beside_colour_and_file_views():
    views.register_view('stack_negative', 2, lambda rgb: 1 - rgb[:, 1:].float() / 255)
    x = torch.randint(0, 256, (2, 4, 8, 8), dtype=torch.uint8)          # RGB, then one file view's channel
    stack = ViewStack(['L', 'stack_negative', 'depth_like'], {'depth_like': 1})
    assert stack.channels == [1, 2, 1] and stack.in_channels == 4
    out = stack(x)
    expected = torch.cat([views.DeviceView('Lab')(x[:, :3])[:, :1], 1 - x[:, 1:3].float() / 255,
                          (x[:, 3:].float() / 255 - 0.5) / 0.5], 1)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    # a computed view alone still reads the RGB channels
    assert ViewStack(['stack_negative', 'depth_like'], {'depth_like': 1}).in_channels == 4


@pytest.mark.parametrize('returned, message', [
    (lambda rgb: rgb[:, :2].float(), r"returned torch.float32 \(2, 2, 8, 8\) on cpu .* expected a float tensor "
                                     r"\(2, 1, 8, 8\) on cpu \(register_view's channels is 1\)"),
    (lambda rgb: rgb[:, :1], r"returned torch.uint8 \(2, 1, 8, 8\)"),
    (lambda rgb: rgb[:, :1].float()[:, :, :4], r"returned torch.float32 \(2, 1, 4, 8\)"),
    (lambda rgb: rgb[:, :1].float().log() - rgb[:, :1].float().log(), r"returned \d+ non-finite values \(NaN or inf\) "
                                                                       r"of 128 on its first batch"),
    (lambda rgb: [rgb], r"returned a list; its function must return a float tensor B x 1 x H x W"),
])
def test_what_a_users_function_returns_is_checked_on_the_first_batch(returned, message):
    name = f'bad_{abs(hash(message)) % 10 ** 8}'
    views.register_view(name, 1, returned)
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match=rf"view '{name}' \({re.escape(__file__)}\) " + message):
        ViewStack(['L', name])(x)


def third(rgb):
    return torch.nn.functional.conv2d(rgb[:, :1].float(), torch.full((1, 1, 1, 1), 1 / 3))


def test_computed_views_run_in_float32_under_autocast():
    """The kNN monitor encodes under autocast: a user's conv would otherwise run in bfloat16."""
    views.register_view('autocast_probe', 1, third)
    x = photo(16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = ViewStack(['L', 'autocast_probe'])(x)
        rounded = third(x).float()                                       # what autocast alone gives
    assert torch.equal(out[:, 1:], third(x)) and not torch.equal(rounded, third(x))


def test_a_view_folder_named_like_a_registered_view_is_an_error(tmp_path):
    views.register_view('folder_clash', 1, lambda rgb: rgb[:, :1].float())
    for folder in ('rgb', 'folder_clash'):
        os.makedirs(tmp_path / 'train' / folder / 'c0')
    with pytest.raises(UserError, match=r"has a view folder 'folder_clash', but 'folder_clash' is also a registered "
                                        r"computed view \(" + re.escape(__file__) + r"\); rename the folder or the "
                                        r"view"):
        MultiviewFolder(str(tmp_path / 'train'), ['L', 'folder_clash'])
    with pytest.raises(UserError, match="also a registered colour view"):
        registry.register_file_view('ab', 1, str(tmp_path))


@pytest.mark.parametrize('name', ['training', 'forward', 'split', 'view_names', 'Eval', 'l_to_ab'])
def test_names_the_encoder_already_answers_to_cannot_name_a_view(name):
    """A view's network becomes an attribute of the encoder: 'training' would replace nn.Module's flag, 'split' the
    encoder's channel split."""
    with pytest.raises(UserError, match=rf"register_view: {name!r} cannot name a view: the encoder already has an "
                                        rf"attribute {name.lower()!r}"):
        views.register_view(name, 1, double_it)
    from views.flags import check_views
    with pytest.raises(UserError, match=rf"view folder {name!r} cannot name a view"):
        check_views(['L', name], 'multiview_folder')


def test_what_the_function_returns_is_checked_on_every_batch_and_its_errors_are_one_line(tmp_path):
    calls = []

    def shrinks_later(rgb):
        calls.append(1)
        return rgb[:, :1].float()[:, :, :4 if len(calls) > 1 else None]

    views.register_view('shrinks_later', 1, shrinks_later)
    stack, x = ViewStack(['L', 'shrinks_later']), torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assert stack(x).shape == (2, 2, 8, 8)
    with pytest.raises(UserError, match=r"view 'shrinks_later' .* returned torch.float32 \(2, 1, 4, 8\)"):
        stack(x)                                                     # the second batch: no traceback either
    path = tmp_path / 'raising_views.py'
    path.write_text('import views\n\n\ndef boom(rgb):\n    return rgb.float() / undefined_name\n\n\n'
                    'views.register_view("raises_inside", 1, boom)\n')
    loading.load_view_module(str(path))
    with pytest.raises(UserError) as error:
        ViewStack(['L', 'raises_inside'])(x)
    assert str(error.value) == (f"view 'raises_inside' ({path}) raised NameError: name 'undefined_name' is not "
                                f"defined at {path}:5")
    assert 'raises_inside' in ViewStack(['L', 'raises_inside']).non_finite_hint


def test_a_view_module_imports_the_modules_beside_it_and_says_where_it_failed(tmp_path, monkeypatch):
    (tmp_path / 'helper_for_views.py').write_text('SCALE = 3.0\n')
    module = write_module(tmp_path, 'with_helper_views', '''
        import helper_for_views
        from views import register_view
        register_view('helped_view', 1, lambda rgb: rgb[:, :1].float() / helper_for_views.SCALE)
    ''')
    monkeypatch.chdir('/')                                       # not the module's folder
    loading.load_view_module(module)
    assert views.find_view('helped_view').source == module
    typo = write_module(tmp_path, 'typo_views', 'import views\n\nx = 1\ny = undefined_here\n')
    with pytest.raises(UserError, match=rf'importing {typo} failed \(line 4\): NameError'):
        loading.load_view_module(typo)
    with pytest.raises(UserError, match='os is a built-in module, not a file that registers views'):
        loading.load_view_module('os')


def test_a_view_name_in_another_case_is_named_in_the_error():
    views.register_view('CaseView', 1, double_it)
    from views.flags import check_views
    with pytest.raises(UserError, match=r"unknown view 'caseview': did you mean 'CaseView'\?"):
        check_views(['L', 'caseview'], 'folder')
