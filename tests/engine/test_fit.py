"""engine.fit.Fit: a run that fails before its first checkpoint leaves neither a run folder nor TensorBoard events
(a rerun would add its own to them), and a loader worker killed during the epoch-end work does not lose the epoch."""
import glob
import os

import pytest

import train_CMC
from engine.errors import TrainingStopped, UserError
from engine.fit import Fit
from engine.checkpoint import RunFolder, load_checkpoint
from engine.data import set_loader_epoch  # noqa: F401  (the loader Fit positions)
from engine.runtime import setup_runtime

TINY = ['--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', 'cpu', '--print_freq', '100',
        '--model', 'alexnet', '--nce_k', '8', '--seed', '0', '--epochs', '2']


def fit(tmp_path, data, evaluate):
    """Fit of a tiny train_CMC run whose epoch-end evaluator is ``evaluate``."""
    opt = train_CMC.parse_option(['--dataset', 'folder', '--data_folder', data, '--model_path', str(tmp_path / 'm'),
                                  '--tb_path', str(tmp_path / 'tb'), '--knn_freq', '0', *TINY])
    rt = setup_runtime(opt)
    parts = train_CMC.build(opt, rt)
    parts.logged.evaluators = [evaluate]
    return Fit(opt, rt, RunFolder(f'{opt.model_path}/{opt.model_name}'), parts.loader, parts.saved, parts.stepper,
               parts.logged, ['train_CMC.py'])


def test_a_run_failing_before_its_first_checkpoint_leaves_no_events(tmp_path, image_folder):
    def bad_val_image(epoch, meters):                          # the kNN pass meets an undecodable val image
        raise UserError('cannot decode image val/class_0/3.png')
    with pytest.raises(UserError):
        fit(tmp_path, image_folder, bad_val_image)()
    assert not os.path.exists(tmp_path / 'm') and not os.path.exists(tmp_path / 'tb')    # epoch 1 was logged


def test_a_worker_killed_during_the_epoch_end_work_keeps_the_epoch(tmp_path, image_folder):
    def killed_worker(epoch, meters):                          # torch's error when a kNN loader worker is SIGKILLed
        raise RuntimeError('DataLoader worker (pid 4242) is killed by signal: Killed. ')
    with pytest.raises(TrainingStopped) as stopped:
        fit(tmp_path, image_folder, killed_worker)()
    (current,) = glob.glob(str(tmp_path / 'm' / '*' / 'current.pth'))
    assert load_checkpoint(current)['epoch'] == 1                # the epoch trained is saved, then the run stops
    assert str(stopped.value).startswith('error: a data-loading worker (pid 4242) was killed by signal SIGKILL')
    assert str(stopped.value).endswith(f"resume with: python train_CMC.py --resume {current}")
