"""torchrun + DDP on the CPU (gloo, 2 processes): the memory bank and the MoCo queue stay one across processes."""
import os
import subprocess
import sys

import torch

from engine import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_cmc_memory_banks_are_synchronised_across_processes(tmp_path, image_folder):
    torchrun('train_CMC.py', *common(tmp_path, image_folder), '--model', 'alexnet')
    ckpt = only_checkpoint(tmp_path)
    # Rows written by the momentum update are unit vectors; the random init's rows are not (norm ~1 +- 0.1).
    # Rank 0 saved the checkpoint: with synchronised banks it holds the updates of BOTH processes' samples.
    for key in ('memory_l', 'memory_ab'):
        norms = ckpt['contrast'][key].norm(dim=1)
        # F.normalize and norm again, both over feat_dim = 128 terms: <= (128 + 1) U = 7.7e-6
        torch.testing.assert_close(norms, torch.ones(24), atol=1e-5, rtol=0)
    assert ckpt['contrast']['params'][2] > 0 and ckpt['contrast']['params'][3] > 0


def test_moco_queue_takes_every_process_keys(tmp_path, image_folder):
    torchrun('train_moco_ins.py', *common(tmp_path, image_folder), '--model', 'resnet18', '--moco', '--softmax',
             '--nce_k', '20')
    ckpt = only_checkpoint(tmp_path)
    # 3 steps x 2 processes x 4 keys = 24 keys into a queue of 20: the pointer wrapped to 24 % 20
    assert int(ckpt['contrast']['queue_ptr']) == 4
    assert set(ckpt['model_ema']) == set(ckpt['model'])
