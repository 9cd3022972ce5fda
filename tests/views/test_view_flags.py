"""views.flags: a probe reads the views of its checkpoint, and imports a view module only when a view needs it; a
module whose view has other channels than the checkpoint's is refused in one line; a resume names changed view
channels as what they are."""
import argparse

import pytest

import views
from engine.errors import UserError
from engine.flags import describe_changes, flag_changes
from views.flags import checkpoint_views


def probe_opt(**given):
    opt = dict(view=None, view_given=None, view_module=None, probe_views=None, dataset='folder',
               model_path='ckpt.pth', model_name='probe')
    opt.update(given)
    return argparse.Namespace(**opt)


def test_a_colour_view_checkpoint_needs_no_view_module_even_if_it_recorded_one():
    opt = probe_opt()
    checkpoint_views(opt, {'views': ['L', 'ab'], 'view_channels': [1, 2], 'view_module': 'gone.py',
                           'view_module_path': '/nowhere/gone.py'})
    assert (opt.views, opt.view, opt.view_channels, opt.view_module) == (['L', 'ab'], 'Lab', [1, 2], None)


def test_a_view_registered_with_other_channels_than_the_checkpoints_is_refused():
    views.register_view('three_channels_now', 3, lambda rgb: rgb.float())
    with pytest.raises(UserError) as error:
        checkpoint_views(probe_opt(), {'views': ['L', 'three_channels_now'], 'view_channels': [1, 1]})
    assert str(error.value) == (f"view 'three_channels_now' has 3 channel(s) as registered now ({__file__}), but "
                                f"ckpt.pth was trained with 1: give the --view_module it was trained with")


def test_a_resume_names_changed_view_channels_as_what_they_are():
    refused, noted = flag_changes({'view_channels': [1, 1], 'view_module_path': '/a.py', 'epochs': 1},
                                  argparse.Namespace(view_channels=[1, 3], view_module_path='/b.py', epochs=2),
                                  fixed={'view_channels'})
    assert describe_changes(refused) == "the views' input channels [1, 3] (checkpoint: [1, 1])"
    assert describe_changes(noted) == '--epochs 2 (checkpoint: 1)'        # the module's path is no flag to note
