"""Under torchrun every process must take the same decisions at the same point: stopping on a signal (within one
step, whatever --print_freq), ending on a failed save, and evaluating / saving rank 0's BatchNorm statistics.
Two gloo processes on the CPU (torch.multiprocessing), and one real torchrun of train_CMC.py with a full disk."""
import os
import resource
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import ROOT
from engine.errors import UserError
from engine.fit import Fit
from engine.signals import StopSignal
from engine.runtime import Runtime


def _join(rank, port):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    return Runtime(device=torch.device('cpu'), rank=rank, world_size=2)


def _stop_case(rank, rt):
    """Rank 1 gets SIGTERM's flag during step 5 of 40; both report the step after which they stopped."""
    stop, stopped_after = StopSignal(), None
    for step in range(1, 41):
        if rank == 1 and step == 5:
            stop.signum = signal.SIGTERM               # as the handler would set it during this step
        if stop.poll(rt):
            stopped_after = step
            break
    return {'stopped_after': stopped_after, 'agreed': int(stop.agreed_signum)}


def _save_case(rank, rt):
    """Rank 0 (the writer) fails to save; both processes must raise the same UserError, none wait."""

    def full_disk():
        raise UserError('could not write current.pth: No space left on device')

    def no_permission():
        raise PermissionError(13, 'Permission denied')

    results = []
    for save in (full_disk, no_permission):
        try:
            fit = SimpleNamespace(writer=rank == 0, rt=rt, run=SimpleNamespace(path='/runs/r', flag='--model_path'))
            Fit._save_everywhere(fit, save)
            results.append('returned')
        except UserError as e:
            results.append(str(e))
    return results


def _norm_case(rank, rt):
    """Each process's BatchNorm has seen its own batch; after broadcast_norm_buffers both hold rank 0's."""
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model.train()(torch.randn(8, 3, 6, 6) + rank)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rt.broadcast_norm_buffers(model)
    return {'before': before, 'after': model.state_dict()}


def _worker(rank, port, out):
    """The three cases in one pair of processes (starting them is most of the time)."""
    rt = _join(rank, port)
    results = {name: case(rank, rt) for name, case in (('stop', _stop_case), ('save', _save_case),
                                                        ('norm', _norm_case))}
    torch.save(results, os.path.join(out, f'rank{rank}.pt'))
    dist.destroy_process_group()


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp('agreement')
    mp.spawn(_worker, args=(29611, str(out)), nprocs=2, join=True)
    return [torch.load(out / f'rank{r}.pt') for r in range(2)]


def test_a_signal_on_one_process_stops_both_after_the_next_step(two_processes):
    results = [r['stop'] for r in two_processes]
    # the vote sent after step 5 is read after step 6: both stop there, with SIGTERM, not at a --print_freq point
    assert [r['stopped_after'] for r in results] == [6, 6]
    assert [r['agreed'] for r in results] == [signal.SIGTERM, signal.SIGTERM]


def test_a_failed_save_on_the_writer_ends_every_process_with_its_line(two_processes):
    expected = ['could not write current.pth: No space left on device',
                'could not save a checkpoint in /runs/r: [Errno 13] Permission denied; make the folder writable (or '
                'give --model_path another one), then resume with --resume auto']
    assert [r['save'] for r in two_processes] == [expected] * 2


def test_batchnorm_statistics_become_rank_0s(two_processes):
    a, b = (r['norm'] for r in two_processes)
    assert not torch.equal(a['before']['1.running_mean'], b['before']['1.running_mean'])
    buffers = ['1.running_mean', '1.running_var', '1.num_batches_tracked']
    for key in a['after']:
        assert torch.equal(a['after'][key], a['before'][key]), key        # rank 0 keeps its own
        owner = a if key in buffers else b                                # statistics: rank 0's; parameters: DDP's
        assert torch.equal(b['after'][key], owner['before'][key]), key


def test_a_full_disk_under_torchrun_ends_both_processes_promptly_with_one_line(tmp_path, image_folder):
    """The reviewer's case: rank 0 cannot write its first checkpoint (a file-size limit below a checkpoint's size
    stands in for a full disk); before, rank 1 waited in the next collective until gloo's timeout and then printed a
    traceback."""
    args = ['train_CMC.py', '--dataset', 'folder', '--data_folder', image_folder, '--model', 'resnet18v1',
            '--image_size', '32', '--batch_size', '4', '--nce_k', '8', '--epochs', '2', '--num_workers', '0',
            '--device', 'cpu', '--knn_freq', '0', '--seed', '0', '--model_path', str(tmp_path / 'm'),
            '--tb_path', str(tmp_path / 'tb')]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *args]
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def limit_file_size():                                   # 1 MiB: TensorBoard's events fit, a checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=limit_file_size)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'could not write' in errors[0], proc.stderr[-3000:]
    assert 'Connection closed' not in proc.stderr and 'all_reduce' not in proc.stderr, proc.stderr[-3000:]
    left = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(('.pth', '.tmp'))]
    assert left == []                        # no checkpoint, no temporary (and the empty run folder is removed)


if __name__ == '__main__':
    pytest.main([__file__])
