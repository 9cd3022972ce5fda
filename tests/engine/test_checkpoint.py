"""engine.checkpoint: atomic writes and links, safe loading (the reference's Namespace opt, no pickled code), the run
folder, and a full disk under a checkpoint or the TensorBoard log."""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
from conftest import ROOT, SAFETENSORS_NO_ROOM, TORCH_ZIP_FAILURE, no_room_left

from engine import checkpoint, errors


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
            checkpoint.save_checkpoint({{'w': torch.zeros(2 ** 20)}}, {str(path)!r}, '--save_path')
        except errors.UserError as e:
            print(e)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, '-c', child], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert re.fullmatch(rf'could not write {re.escape(str(path))}: File too large \(\d+ MiB free there\); free '
                        r'some space or point --save_path at a bigger disk, then resume with --resume auto \(the '
                        r'checkpoints already written are intact\)\n',
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


@pytest.mark.parametrize('zipped', [True, False])
def test_checkpoint_opt_reads_the_flags_of_new_and_legacy_files(tmp_path, zipped):
    """The reference's files are torch's legacy (non-zip) format, which cannot be memory-mapped: read, not mapped."""
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'opt': argparse.Namespace(views=['L', 'edges'], view_module='edges_view.py'),
                'model': {'w': torch.arange(4.0)}}, path, _use_new_zipfile_serialization=zipped)
    assert checkpoint.checkpoint_opt(path) == {'views': ['L', 'edges'], 'view_module': 'edges_view.py'}
    assert checkpoint.load_checkpoint(path, mmap=True)['model']['w'].tolist() == [0.0, 1.0, 2.0, 3.0]
    torch.save({'model': {}}, path)
    assert checkpoint.checkpoint_opt(path) == {}


def test_an_exported_safetensors_file_and_a_missing_entry_are_short_lines(tmp_path):
    """The probes given an export (a .safetensors file) say what to give instead, and a checkpoint without the entry
    asked for names a few of its entries, not all of a state dict's hundreds."""
    export = tmp_path / 'cmc.safetensors'
    export.write_bytes(b'{}')
    with pytest.raises(errors.UserError) as e:
        checkpoint.load_checkpoint(str(export))
    assert str(e.value) == (f'{export} is an exported encoder (scripts/export.py --to safetensors, for other '
                            f'libraries; pretrained.load_encoder reads it); give the pretraining checkpoint (.pth) it '
                            f'was exported from')
    state = {f'encoder.layer{i}.weight': torch.zeros(1) for i in range(250)}
    with pytest.raises(errors.UserError) as e:
        checkpoint.checkpoint_section(state, 'model', 'x.pth')
    assert str(e.value) == ("x.pth has no 'model' entry (it has encoder.layer0.weight, encoder.layer1.weight, "
                            "encoder.layer10.weight, encoder.layer100.weight, encoder.layer101.weight, ... (250 in "
                            "all)); is it the right kind of checkpoint?")


@pytest.mark.parametrize('failure', ['enforce', 'rust', 'other'])
def test_write_atomically_knows_a_full_disk_by_its_text_or_the_free_space_and_takes_the_advice(tmp_path,
                                                                                               monkeypatch, failure):
    """Writers that keep no OSError: safetensors says "(os error 28)"; torch.save to a path only "unexpected pos",
    on a disk with no room left (statvfs faked). Another failure on a disk with room stays what it is."""
    def write(f):
        f.write(b'partial')
        raise RuntimeError(SAFETENSORS_NO_ROOM if failure == 'rust' else TORCH_ZIP_FAILURE)

    if failure == 'enforce':
        no_room_left(monkeypatch, tmp_path)
    path = tmp_path / 'map.png'
    if failure == 'other':
        with pytest.raises(RuntimeError, match='unexpected pos'):
            checkpoint.write_atomically(str(path), write, '--plot')
    else:
        with pytest.raises(errors.UserError) as e:
            checkpoint.write_atomically(str(path), write, '--plot', advice=' (no existing file was changed)')
        assert re.fullmatch(rf'could not write {re.escape(str(path))}: No space left on device \(\d+ MiB free there\); '
                            r'free some space or point --plot at a bigger disk \(no existing file was changed\)',
                            str(e.value)), str(e.value)
    assert os.listdir(tmp_path) == []
