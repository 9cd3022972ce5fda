"""util.py: the reference utilities, the kNN monitor, checkpoints (atomic, safe loading) and the resumable sampler."""
import argparse
import math
import os
import pickle
import re
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch

import util
from engine import checkpoint, data, errors, knn, logger, runtime, schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_adjust_learning_rate_counts_decay_epochs_strictly_below():
    opt = argparse.Namespace(learning_rate=0.03, lr_decay_rate=0.1, lr_decay_epochs=[120, 160, 200])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    expected = {1: 0.03, 120: 0.03, 121: 0.003, 160: 0.003, 161: 0.0003, 201: 0.00003}
    for epoch, lr in expected.items():
        util.adjust_learning_rate(epoch, opt, optimizer)
        # float64 learning_rate x rate ** k vs the decimal literal: a few roundings of 1.1e-16 each
        assert optimizer.param_groups[0]['lr'] == pytest.approx(lr, rel=1e-15, abs=0)


def test_cosine_and_warmup_closed_forms():
    opt = argparse.Namespace(learning_rate=10.0, lr_decay_rate=0.2, epochs=60)
    eta_min = 10.0 * 0.2 ** 3 * 0.1
    # what torch's CosineAnnealingLR gives after `epoch` steps (the reference stepped it at each epoch's start)
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([p], lr=10.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(o, 60, eta_min)
    for epoch in range(1, 61):
        o.step()
        sched.step()
        # torch's scheduler updates lr recursively over 60 float64 steps, dividing by (1 + cos) terms near 0 at
        # the end: its rounding grows far past 1e-16, still many orders below 1e-9
        assert schedule.cosine_learning_rate(epoch, opt) == pytest.approx(o.param_groups[0]['lr'], rel=1e-9, abs=0)
    assert schedule.warmup_factor(1, 0, 10, 5) == 1 / 50  # the same float64 division: exact
    assert schedule.warmup_factor(5, 9, 10, 5) == 1.0  # 50 / 50: exact
    assert schedule.warmup_factor(6, 0, 10, 5) == 1.0


def test_average_meter_and_accuracy():
    m = util.AverageMeter()
    m.update(2.0, n=3)
    m.update(4.0, n=1)
    assert (m.val, m.sum, m.count, m.avg) == (4.0, 10.0, 4, 2.5)
    output = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    target = torch.tensor([2, 0, 0, 1])
    top1, top2 = util.accuracy(output, target, topk=(1, 2))
    # sample 0: top1 wrong, top2 right; 1: right; 2: top1 wrong (2), top2 = {2, 1} wrong; 3: right
    assert top1.tolist() == [50.0] and top2.tolist() == [75.0]


def test_knn_predict_matches_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0]])                       # normalised to (1, 0)
    scores = knn.knn_predict(train, labels, query, n_classes=3, k=2, t=0.5)
    # similarities: 1, 0, 0.6, -1 -> top-2: train 0 (class 0, s=1) and train 2 (class 1, s=0.6)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(0.6 / 0.5), 0.0]])
    # float32 cosine (normalising (0.6, 0.8): ~3 U), / t = 0.5 (exact), exp (~2 U) vs float64: <= ~8 U = 5e-7 relative;
    # the empty class is exactly 0
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=0)
    # with k=3 the third neighbour (class 1, s=0) adds exp(0) = 1 to class 1, which then wins
    scores3 = knn.knn_predict(train, labels, query, n_classes=3, k=3, t=0.5)
    assert scores3[0, 1].item() == pytest.approx(math.exp(1.2) + 1.0, rel=1e-6, abs=0)  # as above; exp(0) = 1 exactly
    assert scores3.argmax(1).item() == 0                      # exp(2) = 7.39 > exp(1.2) + 1 = 4.32


def test_save_checkpoint_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / 'current.pth'
    checkpoint.save_checkpoint({'epoch': 1, 'w': torch.ones(3)}, str(path))
    checkpoint.save_checkpoint({'epoch': 2, 'w': torch.zeros(3)}, str(path))
    assert os.listdir(tmp_path) == ['current.pth']
    ckpt = checkpoint.load_checkpoint(str(path))
    assert ckpt['epoch'] == 2 and ckpt['w'].tolist() == [0, 0, 0]


def test_reference_checkpoint_with_namespace_opt_loads(tmp_path):
    path = tmp_path / 'ckpt_epoch_240.pth'
    opt = argparse.Namespace(model='alexnet', learning_rate=0.03, nce_k=16384)
    torch.save({'opt': opt, 'model': {'encoder.module.x': torch.ones(2)}, 'epoch': 240}, str(path))
    ckpt = checkpoint.load_checkpoint(str(path))
    assert ckpt['opt'] == {'model': 'alexnet', 'learning_rate': 0.03, 'nce_k': 16384}
    assert ckpt['epoch'] == 240


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'model': _Payload(str(marker))}, str(path))
    assert not marker.exists()
    with pytest.raises(errors.UserError, match='refusing to load'):
        checkpoint.load_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize('content', [b'', b'not a checkpoint at all', None])
def test_garbage_and_truncated_files_give_one_clear_error(tmp_path, content):
    path = tmp_path / 'bad.pth'
    if content is None:                                       # a real checkpoint cut in half
        checkpoint.save_checkpoint({'w': torch.randn(1000)}, str(path))
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(errors.UserError) as e:
        checkpoint.load_checkpoint(str(path))
    assert '\n' not in str(e.value) and 'bad.pth' in str(e.value)
    with pytest.raises(errors.UserError, match='does not exist'):
        checkpoint.load_checkpoint(str(tmp_path / 'missing.pth'))


def test_resumable_sampler_order_depends_only_on_seed_and_epoch():
    s = data.ResumableSampler(10, batch_size=3, seed=7)
    s.set_epoch(2)
    full = list(iter(s))
    assert len(full) == 9 and len(set(full)) == 9           # drop_last: 3 whole batches
    torch.manual_seed(123)                                   # the global RNG plays no part
    s.set_epoch(2, start_batch=1)
    assert list(iter(s)) == full[3:]
    s.set_epoch(3)
    assert list(iter(s)) != full
    # two processes split one epoch into disjoint halves
    a = data.ResumableSampler(10, 2, seed=7, rank=0, world_size=2)
    b = data.ResumableSampler(10, 2, seed=7, rank=1, world_size=2)
    assert set(a).isdisjoint(set(b)) and len(list(a)) == len(list(b)) == 4


def test_run_folder_refuses_to_clobber_and_resolves_auto(tmp_path):
    run = checkpoint.RunFolder(str(tmp_path / 'run'))
    opt = argparse.Namespace(resume='', overwrite=False)
    assert run.prepare(opt) is None
    checkpoint.save_checkpoint({'epoch': 1}, str(tmp_path / 'run' / 'current.pth'))
    with pytest.raises(errors.UserError, match='already holds checkpoints'):
        run.prepare(opt)
    opt.resume = 'auto'
    assert run.prepare(opt) == str(tmp_path / 'run' / 'current.pth')
    opt.resume = str(tmp_path / 'nope.pth')
    with pytest.raises(errors.UserError, match='does not exist'):
        run.prepare(opt)
    opt.resume, opt.overwrite = '', True
    assert run.prepare(opt) is None


def test_an_epoch_kept_by_save_freq_shares_its_bytes_with_current(tmp_path):
    """current.pth is a hard link to ckpt_epoch_N.pth when both are written, so a run takes half the disk; the next
    epoch's current.pth is a new file and leaves the kept epoch as it was."""
    run = checkpoint.RunFolder(str(tmp_path))
    run.save({'epoch': 2, 'w': torch.full((1000,), 2.0)}, epoch=2, save_freq=2)
    current, kept = tmp_path / 'current.pth', tmp_path / 'ckpt_epoch_2.pth'
    assert os.path.samefile(current, kept) and os.stat(kept).st_nlink == 2
    assert sorted(os.listdir(tmp_path)) == ['ckpt_epoch_2.pth', 'current.pth']
    run.save({'epoch': 3, 'w': torch.full((1000,), 3.0)}, epoch=3, save_freq=2)
    assert not os.path.samefile(current, kept) and os.stat(kept).st_nlink == 1
    assert checkpoint.load_checkpoint(str(kept))['w'][0].item() == 2.0
    assert checkpoint.load_checkpoint(str(current))['w'][0].item() == 3.0
    run.save({'epoch': 4, 'w': torch.full((1000,), 4.0), 'resume_step': 5}, epoch=4, save_freq=2)
    assert sorted(os.listdir(tmp_path)) == ['ckpt_epoch_2.pth', 'current.pth']   # mid-epoch: current only


@pytest.mark.skipif(not os.path.isdir('/dev/shm') or not os.access('/dev/shm', os.W_OK), reason='needs /dev/shm')
def test_link_checkpoint_copies_across_file_systems(tmp_path):
    """Where a hard link is impossible (here: another file system, EXDEV) the checkpoint is copied instead."""
    with tempfile.TemporaryDirectory(dir='/dev/shm') as other:
        if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip('/dev/shm is on the same file system as the test folder')
        src = os.path.join(other, 'ckpt_epoch_1.pth')
        checkpoint.save_checkpoint({'epoch': 1, 'w': torch.arange(10.0)}, src)
        checkpoint.link_checkpoint(src, str(tmp_path / 'current.pth'))
        assert os.listdir(tmp_path) == ['current.pth']
        assert open(src, 'rb').read() == (tmp_path / 'current.pth').read_bytes()
        assert checkpoint.load_checkpoint(str(tmp_path / 'current.pth'))['w'].tolist() == list(range(10))


def test_a_full_disk_is_one_clear_error_and_the_old_checkpoint_survives(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes the write fail as a full disk does, in a child process: EFBIG from
    inside torch.save must come out as a UserError naming the file, with no temporary left and the old file whole."""
    path = tmp_path / 'current.pth'
    checkpoint.save_checkpoint({'w': torch.zeros(10)}, str(path))
    before = path.read_bytes()
    child = textwrap.dedent(f"""
        import resource, sys, torch
        from engine import checkpoint, errors
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 ** 20, 2 ** 20))
        try:
            checkpoint.save_checkpoint({{'w': torch.zeros(2 ** 20)}}, {str(path)!r})
        except errors.UserError as e:
            print(e)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, '-c', child], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert re.fullmatch(rf'could not write {re.escape(str(path))}: File too large \(\d+ MiB free there\); free '
                        r'some space .* --resume auto \(the checkpoints already written are intact\)\n',
                        result.stdout), result.stdout
    assert os.listdir(tmp_path) == ['current.pth'] and path.read_bytes() == before


def test_a_full_disk_under_the_tensorboard_log_is_one_clear_error_without_thread_tracebacks(tmp_path):
    """TensorBoard's writer thread hits the limit first: the main thread must end with one UserError naming the
    folder, and the thread's own traceback must not reach stderr."""
    child = textwrap.dedent(f"""
        import resource, sys
        from engine import errors, logger
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
        tb = logger.TBLogger({str(tmp_path / 'tb')!r})
        try:
            for step in range(100):
                tb.log_value('loss', 1.0, step)
            tb.flush()
        except errors.UserError as e:
            print(e)
            tb.close()
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, '-c', child], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and result.stderr == '', result.stderr
    assert re.fullmatch(rf'could not write the TensorBoard log in {re.escape(str(tmp_path / "tb"))}: File too large '
                        r'\(\d+ MiB free there\); free some space or point --tb_path at a bigger disk, then resume '
                        r'with --resume auto\n', result.stdout), result.stdout


@pytest.mark.skipif(not os.path.exists('/proc/cpuinfo'), reason='reads the CPU flags from /proc/cpuinfo')
def test_native_bf16_on_the_cpu_agrees_with_the_kernel_cpu_flags():
    flags = set()
    for line in open('/proc/cpuinfo'):
        if line.startswith('flags'):
            flags |= set(line.split(':', 1)[1].split())
    expected = 'avx512_bf16' in flags or 'amx_tile' in flags
    assert runtime.native_bf16(torch.device('cpu')) is expected


def test_place_makes_conv_weights_channels_last_and_keeps_outputs_and_checkpoints():
    from models import build_cmc_model
    torch.manual_seed(0)
    reference = build_cmc_model('resnet18v1').eval()
    placed = build_cmc_model('resnet18v1').eval()
    placed.load_state_dict(reference.state_dict())
    runtime.Runtime(device=torch.device('cpu')).place(placed)
    conv = placed.encoder.ab_to_l.layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(3, 3, 64, 64)
    for layer in (2, 5, 7):
        for a, b in zip(reference(x, layer), placed(x, layer)):
            # channels-last kernels sum the conv products in another order, through 18 layers: the tolerances of
            # test_models' functional-path checks (~sqrt(n) U per layer in practice, n <= 4608)
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # a checkpoint of the placed model loads into a plain one, value for value
    fresh = build_cmc_model('resnet18v1')
    fresh.load_state_dict(placed.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(fresh.state_dict().values(), reference.state_dict().values()))
