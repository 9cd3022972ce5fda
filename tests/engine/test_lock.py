"""engine.lock: one run per run folder. The same flags started twice: the second stops at once with one line naming
the process that holds the folder, and changes nothing; the lock goes with its process, SIGKILL included (issue 22:
both runs started, overwrote each other's current.pth and mixed their TensorBoard events)."""
import glob
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

import train_CMC
from conftest import ROOT
from engine.errors import UserError
from engine.lock import holder, lock_folder

TINY = ['--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', 'cpu', '--print_freq', '100',
        '--model', 'alexnet', '--nce_k', '8', '--seed', '0']


def digests(folder):
    return {path: hashlib.sha256(open(path, 'rb').read()).hexdigest()
            for path in sorted(glob.glob(os.path.join(folder, '**', '*'), recursive=True)) if os.path.isfile(path)}


def wait_for_lock(path, process, timeout=120):
    """Until ``process`` holds the flock on ``path`` (read from /proc/locks)."""
    deadline = time.time() + timeout
    while f'process {process.pid} ' not in holder(path) + ' ':
        assert process.poll() is None and time.time() < deadline, process.stdout.read() if process.stdout else ''
        time.sleep(0.1)


def test_a_second_run_on_a_run_folder_stops_with_one_line_and_changes_nothing(tmp_path, image_folder):
    flags = ['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'models'),
             '--tb_path', str(tmp_path / 'tb'), *TINY]
    train_CMC.main([*flags, '--epochs', '1'])
    (run,) = glob.glob(str(tmp_path / 'models' / '*'))
    (tb,) = glob.glob(str(tmp_path / 'tb' / '*'))
    # the first run continues, as a real process (python train_CMC.py, 40 more epochs: it runs while we look)
    first = subprocess.Popen([sys.executable, 'train_CMC.py', *flags, '--epochs', '40', '--resume', 'auto'], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ,
                                                                                        'OMP_NUM_THREADS': '1'})
    try:
        wait_for_lock(run, first)
        first.send_signal(signal.SIGSTOP)                          # frozen, still holding the folder: nothing moves
        before = {**digests(run), **digests(tb)}
        with pytest.raises(UserError) as error:                    # the same command, started again
            train_CMC.main([*flags, '--epochs', '40', '--resume', 'auto'])
        message = str(error.value)
        assert message.startswith(f'run folder {os.path.abspath(run)} is in use by process {first.pid} (python ')
        assert 'train_CMC.py --dataset folder' in message and message.endswith(
            "two runs in one folder would overwrite each other's checkpoints; wait for that run to end (or stop it), "
            "or give this one another --model_path")
        assert {**digests(run), **digests(tb)} == before            # the refused run wrote nothing
        first.send_signal(signal.SIGKILL)                          # no clean-up at all: the kernel drops the lock
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    train_CMC.main([*flags, '--epochs', '2', '--resume', 'auto'])   # the folder is free again
    assert holder(run) == 'another process'                         # and this run let it go when it ended


def test_the_tensorboard_folder_is_locked_too(tmp_path, image_folder):
    """Two runs whose run folders differ (--model_path) but whose TensorBoard folder is the same would mix events."""
    flags = ['--dataset', 'folder', '--data_folder', image_folder, '--tb_path', str(tmp_path / 'tb'), *TINY,
             '--epochs', '1']
    train_CMC.main([*flags, '--model_path', str(tmp_path / 'a')])
    (tb,) = glob.glob(str(tmp_path / 'tb' / '*'))
    fd = lock_folder(tb, 'TensorBoard folder')                      # a run that is still logging there
    try:
        with pytest.raises(UserError, match=f'TensorBoard folder {tb} is in use by process {os.getpid()} '):
            train_CMC.main([*flags, '--model_path', str(tmp_path / 'b')])
    finally:
        os.close(fd)
    assert not os.path.exists(tmp_path / 'b')                       # the refused run left no folder behind


def test_a_sigkilled_runs_loader_workers_do_not_keep_its_folder(tmp_path, image_folder):
    """A flock belongs to the open file, which forked loader workers share: they close their copies, so the folder is
    free the moment the run is killed, not when its orphaned workers notice (seconds later)."""
    flags = ['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'models'),
             '--tb_path', str(tmp_path / 'tb'), *TINY, '--num_workers', '2', '--epochs', '40', '--print_freq', '1']
    run = subprocess.Popen([sys.executable, 'train_CMC.py', *flags], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        for line in run.stdout:                                    # its workers are up and reading
            if line.startswith('Train: [2]'):
                break
        (folder,) = glob.glob(str(tmp_path / 'models' / '*'))
        workers = subprocess.run(['pgrep', '-P', str(run.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) >= 2 and f'process {run.pid} ' in holder(folder) + ' '
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        assert holder(folder) == 'another process'                  # free at once, orphans or not
        os.close(lock_folder(folder, 'run folder'))
    finally:
        run.kill()


def test_a_probe_takes_its_run_folder_before_computing_features(tmp_path, image_folder, monkeypatch):
    """Two probes started together must not both compute their features (hours on ImageNet) before one is refused."""
    import LinearProbing
    from engine import probe
    train_CMC.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'm'),
                    '--tb_path', str(tmp_path / 'tb'), *TINY, '--epochs', '1'])
    (ckpt,) = glob.glob(str(tmp_path / 'm' / '*' / 'current.pth'))
    argv = ['--dataset', 'folder', '--data_folder', image_folder, '--model_path', ckpt, '--save_path',
            str(tmp_path / 'probe'), '--tb_path', str(tmp_path / 'tb'), '--image_size', '64', '--num_workers', '0',
            '--batch_size', '8', '--device', 'cpu', '--model', 'alexnet', '--layer', '5', '--epochs', '1',
            '--cache_features']
    run = os.path.join(tmp_path, 'probe', f'calibrated_{os.path.basename(os.path.dirname(ckpt))}_bsz_8_lr_0.1_decay_0')
    os.makedirs(run)
    fd = lock_folder(run, 'run folder')                             # the other probe, computing its features
    monkeypatch.setattr(probe, '_features_and_targets', lambda *a, **k: pytest.fail('features computed'))
    try:
        with pytest.raises(UserError, match=f'run folder {run} is in use by process {os.getpid()} '):
            LinearProbing.main(argv)
    finally:
        os.close(fd)
    assert os.listdir(run) == [] and not os.path.exists(tmp_path / 'tb' / f'{os.path.basename(run)}_layer5')
