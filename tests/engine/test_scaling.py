"""Scaling: the parallel-mode decision, two processes against each other and against one (tests/ddp_worker.py under
torchrun, gloo), bad input and signals under torchrun, stopping with loader workers, float16 + GradScaler."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from engine import checkpoint
from engine.runtime import Runtime, choose_parallel, unwrap
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tests'))
import ddp_worker  # noqa: E402

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def test_choose_parallel():
    assert choose_parallel(4, 1) == 'dataparallel'                 # the reference's recipes: one process, 4 GPUs
    assert choose_parallel(4, 1, gpu_flag=2) == 'single'           # --gpu N pins one
    assert choose_parallel(4, 1, device_flag='cpu') == 'single'
    assert choose_parallel(1, 1) == 'single' and choose_parallel(0, 1) == 'single'
    assert choose_parallel(4, 4) == 'ddp' and choose_parallel(0, 2) == 'ddp'     # torchrun, GPUs or gloo


def test_unwrap_removes_dataparallel_and_single_runtime_wraps_nothing():
    model = nn.Linear(2, 2)
    assert unwrap(nn.DataParallel(model)) is model                 # checkpoints never get 'module.' keys
    assert set(unwrap(nn.DataParallel(model)).state_dict()) == {'weight', 'bias'}
    assert Runtime(device=torch.device('cpu')).wrap(model) is model


def test_dataparallel_runtime_wraps_encoders_and_moco_key_encoder():
    """On a machine without GPUs nn.DataParallel runs the module itself, so the wiring is testable here."""
    from methods import MoCo
    rt = Runtime(device=torch.device('cpu'), n_data_parallel=2)
    moco = MoCo(ddp_worker.Tiny(), ddp_worker.FEAT, 20, 4).set_runtime(rt)
    assert isinstance(moco.trained, nn.DataParallel) and isinstance(moco.key_encoder(), nn.DataParallel)
    assert unwrap(moco.trained) is moco.encoder and unwrap(moco.key_encoder()) is moco.encoder_k
    assert not any(k.startswith('module.') or '.module.' in k for k in moco.state_dict())
    assert moco.scores(torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)).shape == (4, 5)


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
    """Each process's results from one 2-process torchrun of tests/ddp_worker.py."""
    out = tmp_path_factory.mktemp('ddp')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'tests', 'ddp_worker.py'), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [torch.load(out / f'rank{r}.pt', weights_only=False) for r in range(2)]


@pytest.mark.parametrize('method', ['cmc', 'insdis', 'moco'])
def test_state_is_bit_identical_across_processes(two_processes, method):
    """Memory banks / queue, Z, parameters and MoCo's key-encoder BatchNorm statistics, after 3 steps. The trained
    encoder's own BatchNorm statistics are DDP's: it gives every process rank 0's at each forward (and rank 0
    saves), so after the last step they differ by that step's sub-batch and are left out."""
    a, b = (r[method]['state'] for r in two_processes)
    assert set(a) == set(b)
    ddp_synced = [k for k in a if k.startswith('encoder.') and ('running_' in k or 'num_batches' in k)]
    assert ddp_synced
    for key in set(a) - set(ddp_synced):
        assert torch.equal(a[key], b[key]), key
    if method == 'moco':
        assert any('encoder_k' in k and 'running_mean' in k for k in a)


def test_two_processes_with_half_batches_match_one_process(two_processes):
    """MoCo without BatchNorm (its negatives are the queue, so no random sampling differs): one step with 2 x B/2
    gives one process's gradient with B and the same queue. Tolerance: float32 sums taken in another order
    (DDP averages two half-batch means), a few ulps of values ~1."""
    one = ddp_worker.train('moco', Runtime(device=torch.device('cpu')), steps=1, bn=False)
    for r in two_processes:
        torch.testing.assert_close(r['moco_no_bn']['grad'], one['grad'], rtol=1e-5, atol=1e-6)
        for key, value in one['state'].items():
            torch.testing.assert_close(r['moco_no_bn']['state'][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_sharded_evaluation_sees_each_item_once_and_agrees_with_one_process(two_processes):
    shards = [r['shard'] for r in two_processes]
    assert sorted(torch.cat(shards).tolist()) == list(range(13))            # every item exactly once
    for r in two_processes:
        assert r['gathered'].tolist() == [10.0 * i for i in range(13)]     # put back in order
        assert r['knn'] == pytest.approx(ddp_worker.knn(Runtime(device=torch.device('cpu'))))
    one = ddp_worker.probe_validation(Runtime(device=torch.device('cpu')))
    for r in two_processes:                 # the probe's validation: all 13 val items, once, averaged as one process
        for key, (count, avg) in r['validation'].items():
            assert count == 13 and avg == pytest.approx(one[key][1], rel=1e-6), key


def test_loader_workers_draw_other_numbers_in_each_process(two_processes):
    """Rank-dependent augmentation with 2 workers; rank 0 keeps the single-process stream."""
    draws = [r['draws'] for r in two_processes]
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0], ddp_worker.loaders(Runtime(device=torch.device('cpu')))['draws'])


def cmc_args(tmp_path, data, *extra):
    return ['train_CMC.py', '--dataset', 'folder', '--data_folder', data, '--model_path', str(tmp_path / 'm'),
            '--tb_path', str(tmp_path / 't'), '--image_size', '64', '--batch_size', '4', '--nce_k', '8', '--seed',
            '0', '--device', 'cpu', '--knn_freq', '0', '--model', 'alexnet', '--print_freq', '1', *extra]


def test_bad_input_on_rank_0_ends_both_processes_with_one_line(tmp_path, image_folder):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           *cmc_args(tmp_path, image_folder, '--num_workers', '0', '--resume', str(tmp_path / 'missing.pth'))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'missing.pth' in errors[0], proc.stderr[-3000:]
    assert 'gloo' not in proc.stderr.lower() and 'broadcast_object_list' not in proc.stderr


def test_bad_input_on_rank_1_only_is_said_once_by_rank_1_and_both_end(tmp_path):
    """A bad image that only rank 1 reads (in its first batch): rank 1 says why, rank 0 (waiting for rank 1 in a
    collective) ends without a gloo traceback of its own, and the job ends promptly (issue 22)."""
    from conftest import make_image_folder
    from engine.data import ResumableSampler
    data = make_image_folder(tmp_path / 'data')
    paths = sorted(glob.glob(os.path.join(data, 'train', '*', '*.png')))
    sampler = ResumableSampler(len(paths), 4, seed=0, rank=1, world_size=2)
    sampler.set_epoch(1)
    bad = paths[list(sampler)[0]]
    ranks_0 = ResumableSampler(len(paths), 4, seed=0, rank=0, world_size=2)
    ranks_0.set_epoch(1)
    assert paths.index(bad) not in list(ranks_0)
    with open(bad, 'wb') as f:
        f.write(b'not an image')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           *cmc_args(tmp_path, data, '--num_workers', '0', '--epochs', '1')]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0 and time.time() - start < 60
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert errors == [f"error: cannot decode image {bad} (UnidentifiedImageError: cannot identify image file "
                      f"{bad!r}); delete or replace it, or pass --skip_bad_images to skip such files"], proc.stderr
    assert 'gloo' not in proc.stderr.lower() and '[rank0]' not in proc.stderr and '[rank1]' not in proc.stderr


def test_a_flag_error_under_torchrun_is_said_once(tmp_path, image_folder):
    """Every process parses the same flags and fails alike, before the process group exists: rank 0 says it."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           *cmc_args(tmp_path, image_folder, '--nce_t', '0')]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode != 0 and errors == ['error: --nce_t must be a positive number, got 0.0'], proc.stderr


def wait_for(proc, path_glob, limit=240):
    """Poll until a file matching ``path_glob`` exists (the run's first checkpoint)."""
    import glob
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if glob.glob(path_glob):
            return True
        time.sleep(0.2)
    return False


def sigterm_after_first_checkpoint(cmd, tmp_path, timeout):
    """Start ``cmd`` in its own process group, SIGTERM the group once current.pth exists; (returncode, out, err)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    try:
        assert wait_for(proc, str(tmp_path / 'm' / '*' / 'current.pth')), 'no checkpoint was written'
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


def test_sigterm_to_the_process_group_with_workers_saves_and_exits_143(tmp_path, image_folder):
    """Workers ignore the group's SIGTERM, so the main process finishes its step, saves and exits 143 (no 'worker
    killed')."""
    # resnet18v1: its checkpoints are a fifth of AlexNet's (two are written here); the model plays no part
    cmd = [sys.executable, *cmc_args(tmp_path, image_folder, '--num_workers', '2', '--epochs', '50', '--model',
                                     'resnet18v1')]
    returncode, out, err = sigterm_after_first_checkpoint(cmd, tmp_path, timeout=60)
    assert returncode == 143, err[-3000:]
    assert 'stopped by SIGTERM' in err and 'Resume with:' in err
    assert 'DataLoader worker' not in err and 'Traceback' not in err


def test_resume_and_sigterm_under_two_processes(tmp_path, image_folder):
    """torchrun with 2 processes: SIGTERM to the group after the first checkpoint stops both after the same step
    with the position saved (by rank 0 only: one file); --resume auto then finishes the run. Epoch 1's checkpoint
    (--save_freq 1) also shows CMC's memory banks synchronised across the processes (test_distributed.py's check)."""
    args = cmc_args(tmp_path, image_folder, '--num_workers', '0', '--epochs', '30', '--save_freq', '1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *args]
    _, out, err = sigterm_after_first_checkpoint(cmd, tmp_path, timeout=90)
    assert 'stopped by SIGTERM' in err and 'Resume with: torchrun --nproc_per_node 2' in err, err[-3000:]
    assert 'no shared file system' not in out + err              # one node: rank 0 alone writes
    (run,) = os.listdir(tmp_path / 'm')
    assert [f for f in os.listdir(tmp_path / 'm' / run) if f.startswith('.')] == []       # no probe, no temporary
    # 24 images, 2 processes x batch 4: in epoch 1 each process saw 12 of them, 3 steps. Rows written by the
    # momentum update are unit vectors; the random init's rows are not (norm ~1 +- 0.1). Rank 0 saved the
    # checkpoint: with synchronised banks it holds the updates of BOTH processes' samples.
    first = checkpoint.load_checkpoint(str(tmp_path / 'm' / run / 'ckpt_epoch_1.pth'))
    assert first['epoch'] == 1 and first['resume_step'] == 0
    for key in ('memory_l', 'memory_ab'):
        norms = first['contrast'][key].norm(dim=1)
        # F.normalize and norm again, both over feat_dim = 128 terms: <= (128 + 1) U = 7.7e-6
        torch.testing.assert_close(norms, torch.ones(24), atol=1e-5, rtol=0)
    assert first['contrast']['params'][2] > 0 and first['contrast']['params'][3] > 0     # Z set (NCE mode)
    stopped = checkpoint.load_checkpoint(str(tmp_path / 'm' / run / 'current.pth'))
    assert stopped['world_size'] == 2 and len(stopped['rng_per_process']) == 2
    epochs = int(stopped['epoch']) + 1 + (1 if stopped['resume_step'] else 0)
    resume = [a if a != '30' else str(epochs) for a in args]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *resume,
           '--resume', 'auto']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resumed from' in proc.stdout
    assert int(checkpoint.load_checkpoint(str(tmp_path / 'm' / run / 'current.pth'))['epoch']) == epochs


def test_float16_with_gradscaler_trains_on_the_cpu_and_saves_the_scale(tmp_path, image_folder, monkeypatch):
    import train_moco_ins
    monkeypatch.setenv('CMC_AMP_DTYPE', 'float16')
    train_moco_ins.main(['--dataset', 'folder', '--data_folder', image_folder, '--model_path', str(tmp_path / 'm'),
                         '--tb_path', str(tmp_path / 't'), '--image_size', '32', '--batch_size', '8', '--nce_k', '8',
                         '--epochs', '1', '--seed', '0', '--device', 'cpu', '--knn_freq', '0', '--num_workers', '0',
                         '--model', 'resnet18', '--softmax', '--moco', '--amp', '--shuffle_bn_splits', '2'])
    (run,) = os.listdir(tmp_path / 'm')
    ckpt = checkpoint.load_checkpoint(str(tmp_path / 'm' / run / 'current.pth'))
    assert ckpt['amp']['scale'] > 0                              # an enabled GradScaler's state


def test_shuffle_bn_splits_converts_the_key_encoder_and_refuses_bad_sizes(capsys):
    import train_moco_ins
    from engine.errors import UserError
    from models.split_bn import SplitBatchNorm2d
    base = ['--dataset', 'demo', '--tb_path', 't', '--model_path', 'm', '--model', 'resnet18', '--moco',
            '--batch_size', '8']
    with pytest.raises(UserError, match='divisor of --batch_size 8'):
        train_moco_ins.parse_option(base + ['--shuffle_bn_splits', '3'])
    opt = train_moco_ins.parse_option(base + ['--shuffle_bn_splits', '4'])
    method = train_moco_ins.build_method(opt, Runtime(device=torch.device('cpu')), n_data=20)
    kinds = {type(m) for m in method.encoder_k.modules() if isinstance(m, nn.BatchNorm2d)}
    assert kinds == {SplitBatchNorm2d} and {type(m) for m in method.encoder.modules()} & kinds == set()
    assert 'split BatchNorm over 4 sub-batches' in capsys.readouterr().out


def _worker_that_waits(ready):
    from engine.data import ignore_stop_signals
    ignore_stop_signals()
    ready.set()
    while True:
        time.sleep(0.05)


def test_a_loader_worker_outlives_the_groups_sigterm_but_not_the_loaders_terminate():
    """The first SIGTERM (the process group's) is ignored; the second (DataLoader's terminate() of a worker slow to
    stop) ends it, or the main process would wait for it forever at exit."""
    import multiprocessing
    ctx = multiprocessing.get_context('fork')
    ready = ctx.Event()
    worker = ctx.Process(target=_worker_that_waits, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(1.0)
        assert worker.is_alive()
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(10)
        assert not worker.is_alive() and worker.exitcode == -signal.SIGTERM
    finally:
        if worker.is_alive():
            worker.kill()
