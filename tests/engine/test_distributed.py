"""torchrun + DDP on the CPU (gloo, 2 processes): the MoCo queue stays one across processes (CMC's memory banks:
tests/test_scaling.py::test_resume_and_sigterm_under_two_processes)."""
import os
import subprocess
import sys

from engine import checkpoint
from conftest import ROOT


def torchrun(script, *args):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', script, *args]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def common(tmp_path, data):
    # 24 images, 2 processes x batch 4: each process sees 12 of them, 3 steps per epoch
    return ['--dataset', 'folder', '--data_folder', data, '--model_path', str(tmp_path / 'm'), '--tb_path',
            str(tmp_path / 't'), '--image_size', '64', '--num_workers', '0', '--batch_size', '4', '--nce_k', '8',
            '--epochs', '1', '--seed', '0', '--device', 'cpu', '--knn_freq', '0']


def only_checkpoint(tmp_path):
    (run,) = os.listdir(tmp_path / 'm')
    return checkpoint.load_checkpoint(str(tmp_path / 'm' / run / 'current.pth'))


# CMC's memory banks stay one across the processes: checked on epoch 1's checkpoint of the 2-process run that
# tests/test_scaling.py::test_resume_and_sigterm_under_two_processes stops and resumes (one torchrun start fewer).


def test_moco_queue_takes_every_process_keys(tmp_path, image_folder):
    torchrun('train_moco_ins.py', *common(tmp_path, image_folder), '--model', 'resnet18', '--moco', '--softmax',
             '--nce_k', '20')
    ckpt = only_checkpoint(tmp_path)
    # 3 steps x 2 processes x 4 keys = 24 keys into a queue of 20: the pointer wrapped to 24 % 20
    assert int(ckpt['contrast']['queue_ptr']) == 4
    assert set(ckpt['model_ema']) == set(ckpt['model'])
