"""engine.finite: nothing non-finite is written, and a checkpoint holding NaN or inf is refused by the probes and by
--resume, naming the first bad tensor (issue 22: an absurd learning rate kept the loss finite for an epoch while
BatchNorm's running variance went to inf, and current.pth was saved with it)."""
import glob
import os

import pytest
import torch
from torch import nn

import LinearProbing
import train_CMC
from engine import checkpoint
from engine.errors import TrainingStopped, UserError
from engine.finite import describe, first_non_finite, float_tensors, run_tensors

TINY = ['--image_size', '64', '--num_workers', '0', '--device', 'cpu', '--print_freq', '100', '--model', 'resnet18v1',
        '--nce_k', '8', '--epochs', '1', '--seed', '0', '--softmax', '--knn_freq', '0']


def test_the_first_non_finite_tensor_is_found_and_described_with_its_optimizer_state_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()                                                    # momentum buffers exist now
    named = run_tensors({'model': model}, optimizer)
    assert [name for name, _ in named][:3] == ['model.0.weight', 'model.0.bias', 'model.1.weight']
    assert 'optimizer momentum_buffer of model.1.bias' in [name for name, _ in named]
    assert all(t.is_floating_point() for _, t in named)                 # num_batches_tracked (long) is left out
    assert first_non_finite(named) is None
    optimizer.state[model[1].bias]['momentum_buffer'][2] = float('-inf')
    assert describe(*first_non_finite(run_tensors({'model': model}, optimizer))) == \
        'optimizer momentum_buffer of model.1.bias (1 inf of 4 values)'
    model[1].running_var[[0, 3]] = float('nan')
    model[1].running_var[1] = float('inf')
    assert describe(*first_non_finite(run_tensors({'model': model}, optimizer))) == \
        'model.1.running_var (2 NaN and 1 inf of 4 values)'
    nested = {'a': [torch.ones(2), {'b': torch.tensor([1.0, float('nan')])}], 'n': torch.arange(3)}
    assert [name for name, _ in float_tensors(nested)] == ['a.0', 'a.1.b']
    assert first_non_finite(float_tensors(nested))[0] == 'a.1.b'


def test_a_finite_loss_over_an_infinite_state_saves_nothing(tmp_path, image_folder):
    """lr 1e10, two steps an epoch: the first step blows the weights up, the second step's forward sends BatchNorm's
    running variance to inf while its normalised output, and so the loss, stays finite."""
    with pytest.raises(TrainingStopped) as stopped:
        train_CMC.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'm'),
                        '--tb_path', str(tmp_path / 'tb'), *TINY, '--batch_size', '12', '--learning_rate', '1e10'])
    assert stopped.value.exit_code == 3
    assert str(stopped.value).startswith('error: the state is not finite after epoch 1: model.encoder.l_to_ab.')
    assert 'running_var (' in str(stopped.value) and 'stopped without saving, the last checkpoint is kept' in \
        str(stopped.value)
    assert not os.path.exists(tmp_path / 'm')                      # no checkpoint, no empty run folder


@pytest.fixture(scope='module')
def diverged(tmp_path_factory, image_folder):
    """A good checkpoint of a CMC run, and a copy of it with one NaN in its encoder (what a diverged run wrote
    before this check existed)."""
    root = tmp_path_factory.mktemp('diverged')
    train_CMC.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(root / 'm'),
                    '--tb_path', str(root / 'tb'), *TINY, '--batch_size', '8'])
    (good,) = glob.glob(str(root / 'm' / '*' / 'current.pth'))
    ckpt = checkpoint.load_checkpoint(good)
    ckpt['model']['encoder.ab_to_l.layer2.0.bn2.running_var'][5] = float('nan')
    bad = str(root / 'bad.pth')
    checkpoint.save_checkpoint(ckpt, bad)
    return root, good, bad


def test_the_probe_refuses_a_checkpoint_holding_non_finite_values(tmp_path, image_folder, diverged):
    _, _, bad = diverged
    with pytest.raises(UserError) as error:
        LinearProbing.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', bad, '--save_path',
                            str(tmp_path / 'p'), '--tb_path', str(tmp_path / 'tb'), '--image_size', '64',
                            '--num_workers', '0', '--device', 'cpu', '--model', 'resnet18v1', '--epochs', '1'])
    assert str(error.value) == (f'{bad} holds non-finite values: model.encoder.ab_to_l.layer2.0.bn2.running_var (1 NaN '
                                f'of 64 values); the run that wrote it had diverged: use an earlier checkpoint of it '
                                f'(ckpt_epoch_N.pth), or pretrain again with a lower --learning_rate')
    assert not os.path.exists(tmp_path / 'p')


def test_resume_refuses_a_checkpoint_holding_non_finite_values(image_folder, diverged):
    root, good, bad = diverged
    before = open(good, 'rb').read()
    with pytest.raises(UserError, match=r'holds non-finite values: model\.encoder\.ab_to_l\.layer2\.0\.bn2\.'):
        train_CMC.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(root / 'm'),
                        '--tb_path', str(root / 'tb'), *TINY, '--batch_size', '8', '--epochs', '2', '--resume', bad])
    assert open(good, 'rb').read() == before


def test_the_likely_causes_are_the_scripts_own():
    """Pretraining has a temperature (--nce_t); the probes do not, and are told what they can change."""
    from argparse import Namespace
    from engine.finite import likely_causes
    assert '--nce_t' in likely_causes(Namespace(nce_t=0.07, learning_rate=0.03))
    probe = likely_causes(Namespace(learning_rate=0.1, bn=False))
    assert '--nce_t' not in probe and 'NCE' not in probe and '--bn' in probe and '--learning_rate' in probe
