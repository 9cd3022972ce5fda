"""Issue 5, reliability and security, through real processes: atomic checkpoints under SIGKILL, a clean stop on
SIGTERM / SIGINT with a bit-identical resume, the non-finite-loss stop, refusing malicious pickles, and one clear
line (with no file of an existing run touched) for every bad input.

Starting Python and importing torch costs seconds per process, more than this file's budget allows for ~40
processes. So most runs are forked from one pre-imported "fork server" child: each request forks a fresh process
that runs ``errors.run_main(script.main, argv)`` (exactly what ``python script.py`` does under ``__main__``), with its
own stdout / stderr files and its own exit status. The server itself never computes anything before forking (so
no OpenMP pool is copied into a child). MoCo's SIGTERM run and one malicious-pickle run are plain
``python script.py`` subprocesses, which also covers the ``__main__`` path; the other signalled runs are forked
(the hint they print names the script all the same: it comes from the script's own file name).
"""
import glob
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch

from engine import checkpoint
from conftest import make_image_folder
from conftest import ROOT

# One thread per process: with two OpenMP threads on a busy 2-core machine an epoch can take 100x longer (spinning
# barriers), and both runs of a bit-identity comparison must use the same thread count anyway.
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
TINY = ['--image_size', '64', '--num_workers', '0', '--batch_size', '8', '--device', 'cpu', '--seed', '0',
        '--print_freq', '1']

SERVER = r'''
import json, os, resource, sys, traceback
import torch, train_CMC, train_moco_ins, LinearProbing, eval_moco_ins
from engine import checkpoint, errors
SCRIPTS = {m.__name__: m for m in (train_CMC, train_moco_ins, LinearProbing, eval_moco_ins)}

def child(req):
    for fd, name in ((1, req['out']), (2, req['err'])):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    if req.get('max_file_bytes'):                  # as a full disk: writes past it fail (EFBIG; Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (req['max_file_bytes'],) * 2)
    code = 1
    try:
        if req['op'] == 'run':
            errors.run_main(SCRIPTS[req['script']].main, req['argv'])
            code = 0
        else:                                  # save_loop: overwrite one checkpoint until killed
            i = req['first']
            while True:
                checkpoint.save_checkpoint({'i': i, 'w': torch.full((req['numel'],), float(i))}, req['path'])
                i += 1
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (e.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

print('ready', flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req['op'] == 'wait':
        reply = {'rc': os.waitstatus_to_exitcode(os.waitpid(req['pid'], 0)[1])}
    else:
        pid = os.fork()
        if pid == 0:
            child(req)
        reply = {'pid': pid}
    print(json.dumps(reply), flush=True)
'''


@dataclass
class Result:
    rc: int
    out: str
    err: str


class ForkServer:
    def __init__(self, scratch):
        self.scratch, self.count = scratch, 0
        self.proc = subprocess.Popen([sys.executable, '-c', SERVER], cwd=ROOT, env=ENV, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout.readline().strip() == 'ready'

    def _ask(self, **req):
        self.proc.stdin.write(json.dumps(req) + '\n')
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, op, **req):
        self.count += 1
        out, err = (os.path.join(self.scratch, f'{self.count}.{s}') for s in ('out', 'err'))
        return self._ask(op=op, out=out, err=err, **req)['pid'], out, err

    def wait(self, pid):
        return self._ask(op='wait', pid=pid)['rc']

    def run(self, script, argv, max_file_bytes=None):
        pid, out, err = self.start('run', script=script, argv=[str(a) for a in argv], max_file_bytes=max_file_bytes)
        rc = self.wait(pid)
        with open(out) as f_out, open(err) as f_err:
            return Result(rc, f_out.read(), f_err.read())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    s = ForkServer(str(tmp_path_factory.mktemp('forked')))
    yield s
    s.close()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))   # 3 classes x 8 images, train and val


def ok(result):
    assert result.rc == 0, result.err[-3000:]
    return result


def tree_digest(*folders):
    """Relative path -> sha256 of every file (and every folder, as None) under ``folders``."""
    digest = {}
    for top in folders:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames:
                digest[os.path.join(dirpath, name)] = None
            for name in filenames:
                with open(os.path.join(dirpath, name), 'rb') as f:
                    digest[os.path.join(dirpath, name)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def assert_same_state(a, b, where='checkpoint'):
    """Every tensor bit-identical (torch.equal) and every other value equal, recursively."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in a:
            assert_same_state(a[k], b[k], f'{where}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f'{where}[{i}]')
    else:
        assert a == b, (where, a, b)


def run_folder(model_path):
    (name,) = os.listdir(model_path)
    return os.path.join(model_path, name)


# --------------------------------------------------------------------------- atomic checkpoints under SIGKILL

def test_sigkill_at_random_points_of_checkpoint_writes_always_leaves_a_loadable_checkpoint(server, tmp_path):
    """25 children each overwrite ``current.pth`` (4 MB) in a loop and are SIGKILLed after a random delay.

    After every kill: the file loads, is one whole checkpoint (its tensor is filled with its own counter), never goes
    back in time, and besides it there is at most one temporary file (the write the kill interrupted; the next save
    removes it). Some kills must land mid-write (a temporary left behind) and some saves must complete, or the
    test would not have exercised anything.
    """
    numel = 1 << 20
    path = str(tmp_path / 'current.pth')
    checkpoint.save_checkpoint({'i': -1, 'w': torch.full((numel,), -1.0)}, path)
    rng = random.Random(0)
    last, interrupted_writes, completed = -1, 0, 0
    for trial in range(25):
        pid, _, err = server.start('save_loop', path=path, numel=numel, first=trial * 100000)
        time.sleep(rng.uniform(0.0, 0.12))
        os.kill(pid, signal.SIGKILL)
        assert server.wait(pid) == -signal.SIGKILL, open(err).read()
        ckpt = checkpoint.load_checkpoint(path)
        i = ckpt['i']
        assert torch.equal(ckpt['w'], torch.full((numel,), float(i)))
        assert i >= last
        completed += i > last
        last = i
        others = sorted(set(os.listdir(tmp_path)) - {'current.pth'})
        assert len(others) <= 1 and all(re.fullmatch(r'\.current\.pth\..*\.tmp', f) for f in others), others
        interrupted_writes += len(others)
    assert interrupted_writes >= 3 and completed >= 3, (interrupted_writes, completed)


def test_checkpoints_keep_the_usual_file_permissions(tmp_path):
    """The temporary file of an atomic save is made private by mkstemp; the renamed checkpoint must not stay so."""
    path = tmp_path / 'c.pth'
    checkpoint.save_checkpoint({'w': torch.ones(1)}, str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- SIGTERM / SIGINT and exact resume

def cmc_argv(root, data_folder, *extra):
    return ['--dataset', 'folder', '--model', 'resnet18v1', '--nce_k', '8', '--epochs', '3', '--save_freq', '1',
            '--data_folder', data_folder, '--model_path', os.path.join(root, 'models'),
            '--tb_path', os.path.join(root, 'tb'), *TINY, *extra]


def moco_argv(root, data_folder, *extra):
    # NCE mode (Z constants) with --warm (a learning rate set per step); the kNN monitor runs after every epoch
    return ['--dataset', 'folder', '--model', 'resnet18', '--moco', '--warm', '--warm_epochs', '2', '--nce_k', '8',
            '--epochs', '3', '--save_freq', '2', '--data_folder', data_folder,
            '--model_path', os.path.join(root, 'models'), '--tb_path', os.path.join(root, 'tb'), *TINY, *extra]


def signal_when(script, argv, trigger, signum):
    """Run ``python script.py argv``, send ``signum`` as soon as a stdout line starts with ``trigger``."""
    proc = subprocess.Popen([sys.executable, f'{script}.py', *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sent = False
    for line in proc.stdout:
        if not sent and line.startswith(trigger):
            proc.send_signal(signum)
            sent = True
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert sent, err[-3000:]
    return proc.returncode, err


def signal_when_forked(server, script, argv, trigger, signum, limit=300):
    """As signal_when, for a run forked from the server: its stdout file is polled for the trigger line."""
    pid, out, err = server.start('run', script=script, argv=[str(a) for a in argv])
    sent, deadline = False, time.time() + limit
    while not sent and time.time() < deadline:
        if os.path.exists(out):                            # the child opens it once forked
            with open(out) as f:
                if any(line.startswith(trigger) for line in f):
                    os.kill(pid, signum)
                    sent = True
                    break
        with open(f'/proc/{pid}/stat') as f:              # ended (a zombie until the server waits for it)
            if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                break
        time.sleep(0.01)
    if not sent:                                           # no trigger in time: end it rather than wait on it
        os.kill(pid, signal.SIGKILL)
    rc = server.wait(pid)
    err = open(err).read()
    assert sent, err[-3000:]
    return rc, err


# Batches of 4: 6 steps per epoch, so a signal sent once step 1 has printed lands well inside the epoch.
STEPS = 6


class OneGo:
    """The uninterrupted run (forked, batches of 4) a stopped one is compared with: started now, so that it runs
    beside the signalled run, and waited for on first use."""

    def __init__(self, server, root, script, argv_for, data_folder):
        self.server, self.root, self.rc = server, root, None
        argv = argv_for(root, data_folder, '--batch_size', '4')
        self.pid, _, self.err = server.start('run', script=script, argv=argv)

    def folder(self):
        if self.rc is None:
            self.rc = self.server.wait(self.pid)
        assert self.rc == 0, open(self.err).read()[-3000:]
        return run_folder(os.path.join(self.root, 'models'))


@pytest.fixture(scope='module')
def cmc_one_go(server, data, tmp_path_factory):
    """One uninterrupted CMC run for both CMC signal tests (the same flags: the same checkpoints)."""
    return OneGo(server, str(tmp_path_factory.mktemp('cmc_one_go')), 'train_CMC', cmc_argv, data)


def check_stop_and_resume(server, tmp_path, script, argv_for, data_folder, trigger, signum, plain=False, one_go=None):
    """Run once uninterrupted (forked; or ``one_go``, that run started earlier) and once signalled when ``trigger``
    is printed (forked, or with ``plain`` as ``python script.py``), resume the latter with the command its last line
    prints, and compare every checkpoint. Returns the stop position."""
    split = str(tmp_path / 'split')
    one_go = one_go or OneGo(server, str(tmp_path / 'one_go'), script, argv_for, data_folder)
    split_argv = argv_for(split, data_folder, '--batch_size', '4')
    if plain:
        rc, err = signal_when(script, split_argv, trigger, signum)
    else:
        rc, err = signal_when_forked(server, script, split_argv, trigger, signum)
    a_folder = one_go.folder()

    # the run stops after the current step: exit 128 + signal number and one line saying how to resume
    assert rc == 128 + signum, err[-3000:]
    (hint,) = [line for line in err.splitlines() if 'Resume with: python ' in line]
    assert hint.startswith(f'stopped by {signal.Signals(signum).name} ')
    current = os.path.join(run_folder(os.path.join(split, 'models')), 'current.pth')
    position = checkpoint.load_checkpoint(current)
    assert f'saved in {current}' in hint
    if position['resume_step']:
        assert f"at epoch {position['epoch'] + 1}, step {position['resume_step']} of {STEPS}" in hint
    else:
        assert f"after epoch {position['epoch']}" in hint
    command = shlex.split(hint.split('Resume with: ', 1)[1])
    assert command[:2] == ['python', f'{script}.py'] and command[-2:] == ['--resume', current]

    # the printed command continues the run, and it ends bit-identical to the uninterrupted one
    ok(server.run(script, command[2:]))
    b_folder = run_folder(os.path.join(split, 'models'))
    assert sorted(os.listdir(a_folder)) == sorted(os.listdir(b_folder))
    for name in sorted(os.listdir(a_folder)):
        a = checkpoint.load_checkpoint(os.path.join(a_folder, name))
        b = checkpoint.load_checkpoint(os.path.join(b_folder, name))
        a.pop('opt'), b.pop('opt')                  # only --resume differs
        if b['epoch'] == position['epoch'] and 'knn_top1' not in b:
            a.pop('knn_top1')                       # the stop interrupted that epoch's kNN pass: no figure, same state
        assert_same_state(a, b, name)
    return position


def test_sigterm_mid_epoch_then_printed_resume_is_bit_identical_cmc(server, tmp_path, data, cmc_one_go):
    position = check_stop_and_resume(server, tmp_path, 'train_CMC', cmc_argv, data, f'Train: [2][1/{STEPS}]',
                                     signal.SIGTERM, one_go=cmc_one_go)
    assert position['epoch'] == 1 and 0 < position['resume_step'] < STEPS     # mid-epoch 2


def test_sigterm_mid_epoch_then_printed_resume_is_bit_identical_moco(server, tmp_path, data):
    position = check_stop_and_resume(server, tmp_path, 'train_moco_ins', moco_argv, data, f'Train: [2][1/{STEPS}]',
                                     signal.SIGTERM, plain=True)
    assert position['epoch'] == 1 and 0 < position['resume_step'] < STEPS
    assert {'model', 'model_ema', 'contrast', 'optimizer', 'rng'} <= set(position)
    assert 'queue_ptr' in position['contrast'] and position['contrast']['params'][0] > 0   # Z set


def test_sigint_during_epoch_end_work_saves_and_resumes_bit_identical(server, tmp_path, data, cmc_one_go):
    """Sent once the epoch's last step has printed, the signal arrives while the epoch-end work (console line,
    kNN monitor, checkpoints) runs: the kNN pass gives way to it (the epoch's checkpoint then holds no kNN figure),
    the checkpoint is written, and the run stops after epoch 1."""
    position = check_stop_and_resume(server, tmp_path, 'train_CMC', cmc_argv, data, f'Train: [1][{STEPS}/{STEPS}]',
                                     signal.SIGINT, one_go=cmc_one_go)
    assert position['epoch'] == 1 and position['resume_step'] == 0


# --------------------------------------------------------------------------- non-finite loss

def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(server, tmp_path, data):
    """An absurd learning rate given on resume (one that may change): the first step of epoch 2 still computes a
    finite loss, its update sends the weights to inf, and the second step's NCE loss is NaN. A checkpoint whose Z
    is NaN (what a run that diverged wrote before the state was checked) is refused by the resume itself."""
    argv = moco_argv(str(tmp_path), data, '--epochs', '1')
    ok(server.run('train_moco_ins', argv))
    (current,) = glob.glob(str(tmp_path / 'models' / '*' / 'current.pth'))
    before = tree_digest(str(tmp_path / 'models'), str(tmp_path / 'tb'))
    result = server.run('train_moco_ins', argv + ['--epochs', '2', '--resume', current, '--learning_rate', '1e30'])
    assert result.rc == 3
    (line,) = result.err.strip().splitlines()
    assert line.startswith('error: the loss is nan at epoch 2, step 2 of 3;'), line       # 24 images / 8
    assert 'learning rate' in line and '--nce_t' in line
    assert tree_digest(str(tmp_path / 'models'), str(tmp_path / 'tb')) == before
    state = checkpoint.load_checkpoint(current)
    state['contrast']['params'].fill_(float('nan'))
    checkpoint.save_checkpoint(state, current)
    before = tree_digest(str(tmp_path / 'models'), str(tmp_path / 'tb'))
    result = server.run('train_moco_ins', argv + ['--epochs', '2', '--resume', 'auto'])
    assert (result.rc, result.err) == (2, f'error: {current} holds non-finite values: contrast.params (1 NaN of 1 '
                                          f'values); the run that wrote it had diverged: use an earlier checkpoint of '
                                          f'it (ckpt_epoch_N.pth), or pretrain again with a lower --learning_rate\n')
    assert tree_digest(str(tmp_path / 'models'), str(tmp_path / 'tb')) == before


# --------------------------------------------------------------------------- malicious checkpoints

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):                    # unpickling would create the marker file
        return (open, (self.marker, 'w'))


@pytest.fixture
def evil(tmp_path):
    marker, path = tmp_path / 'pwned', tmp_path / 'evil.pth'
    torch.save({'opt': {}, 'epoch': 1, 'model': _Payload(str(marker))}, str(path))
    assert not marker.exists()
    return str(path), marker


def test_malicious_resume_is_refused_by_the_script(tmp_path, data, evil):
    path, marker = evil
    proc = subprocess.run([sys.executable, 'train_CMC.py', *cmc_argv(str(tmp_path), data, '--resume', path)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f'error: refusing to load {path}: ') and 'could run code' in line
    assert not marker.exists() and not os.path.exists(tmp_path / 'models')


def test_malicious_model_path_is_refused_by_linear_probing(server, tmp_path, data, evil):
    path, marker = evil
    result = server.run('LinearProbing', ['--dataset', 'folder', '--model', 'resnet18v1', '--model_path', path,
                                          '--data_folder', data, '--save_path', tmp_path / 'probe',
                                          '--tb_path', tmp_path / 'tb', *TINY])
    assert result.rc == 2
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f'error: refusing to load {path}: ')
    assert not marker.exists() and not os.path.exists(tmp_path / 'probe') and not os.path.exists(tmp_path / 'tb')


# --------------------------------------------------------------------------- bad input: one line, nothing touched

@pytest.fixture(scope='module')
def existing(server, data, tmp_path_factory):
    """A finished CMC run (resnet18v1, 1 epoch) and a finished linear probe of it, plus bad inputs to feed them."""
    root = tmp_path_factory.mktemp('existing')
    ok(server.run('train_CMC', cmc_argv(str(root), data, '--epochs', '1')))
    pretrained = os.path.join(run_folder(str(root / 'models')), 'current.pth')
    ok(server.run('LinearProbing', probe_argv(root, data, pretrained, '--epochs', '1')))
    bad = root / 'bad'
    (bad / 'empty').mkdir(parents=True)
    (bad / 'no_train' / 'val' / 'a').mkdir(parents=True)
    (bad / 'no_images' / 'train' / 'a').mkdir(parents=True)
    make_image_folder(bad / 'no_val', per_class=3, splits=('train',))
    corrupt = str(bad / 'corrupt')
    shutil.copytree(data, corrupt)                     # as many images as the run's memory bank, one undecodable
    bad_image = os.path.join(corrupt, 'train', 'class_1', '3.png')
    with open(bad_image, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n this is not an image')
    (bad / 'garbage.pth').write_bytes(b'not a checkpoint at all')
    blob = open(pretrained, 'rb').read()
    (bad / 'truncated.pth').write_bytes(blob[:len(blob) // 3])
    return {'root': root, 'data': data, 'pretrained': pretrained, 'bad': bad, 'bad_image': bad_image}


def probe_argv(root, data_folder, model_path, *extra, model='resnet18v1'):
    return ['--dataset', 'folder', '--model', model, '--layer', '6', '--model_path', model_path,
            '--data_folder', data_folder, '--save_path', os.path.join(root, 'probe'),
            '--tb_path', os.path.join(root, 'probe_tb'), '--epochs', '1', *TINY, *extra]


def bad_input_cases(e):
    """(script, argv, regex the single stderr line must match), for the ``existing`` run's folders."""
    root, data, bad, pretrained = str(e['root']), e['data'], e['bad'], e['pretrained']

    def cmc(*extra, data_folder=data):
        return ('train_CMC', cmc_argv(root, str(data_folder), '--epochs', '1', *extra))

    def probe(*extra, script='LinearProbing', data_folder=data, model_path=pretrained, model='resnet18v1'):
        return (script, probe_argv(root, str(data_folder), str(model_path), *extra, model=model))

    nowhere = str(bad / 'nowhere')
    return [
        (*cmc(data_folder=nowhere), f'data folder {nowhere} does not exist'),
        (*cmc(data_folder=bad / 'empty'), "has no 'train' sub-folder"),
        (*cmc(data_folder=bad / 'no_train'), "has no 'train' sub-folder"),
        (*cmc(data_folder=bad / 'no_images'), 'no images found under'),
        (*probe(data_folder=bad / 'no_val'), "has no 'val' sub-folder"),
        (*cmc('--epochs', '2', '--resume', 'auto', data_folder=bad / 'corrupt'),
         re.escape(f"cannot decode image {e['bad_image']}")),
        (*cmc('--epochs', '2', '--resume', 'auto', '--num_workers', '1', data_folder=bad / 'corrupt'),
         re.escape(f"cannot decode image {e['bad_image']}")),
        (*cmc('--nce_k', '24'), r'--nce_k 24 must be smaller than the training set \(24 images\)'),
        (*cmc('--batch_size', '32'), r'--batch_size 32 is larger than the training set \(24 images\)'),
        (*cmc('--batch_size', '0'), '--batch_size must be positive'),
        (*cmc('--epochs', '0'), '--epochs must be positive'),
        (*cmc('--nce_k', '0'), '--nce_k must be positive'),
        (*cmc('--feat_dim', '0'), '--feat_dim must be positive'),
        (*cmc('--learning_rate', '0'), '--learning_rate must be a positive number, got 0'),
        (*cmc('--learning_rate', '-0.1'), '--learning_rate must be a positive number'),
        (*cmc('--learning_rate', 'nan'), '--learning_rate must be a positive number, got nan'),
        (*cmc('--learning_rate', 'inf'), '--learning_rate must be a positive number, got inf'),
        (*cmc('--nce_t', '0'), '--nce_t must be a positive number'),
        (*cmc('--nce_m', '1.5'), r'--nce_m must be in \[0, 1\]'),
        (*cmc('--resume', nowhere + '.pth'), f'--resume {nowhere}.pth does not exist'),
        (*cmc(), 'already holds checkpoints .*--resume auto.*--overwrite'),
        (*cmc('--resume', bad / 'garbage.pth'), 'garbage.pth is not a readable checkpoint'),
        (*cmc('--resume', bad / 'truncated.pth'), r'truncated.pth is not a readable checkpoint .*: [^.]*; give '
                                                  r'another one \(an earlier ckpt_epoch_N.pth of the run\)$'),
        (*cmc('--resume', bad), rf'--resume {bad} is a folder: give the checkpoint file in it'),
        (*probe('--resume', pretrained), 'is a pretraining checkpoint: give it to --model_path'),
        ('train_moco_ins', moco_argv(root, str(data), '--resume', str(pretrained)),
         'was written by train_CMC.py: resume it with train_CMC.py'),
        (*probe(model_path=bad), rf'--model_path {bad} is a folder: give the pretrained checkpoint file in it'),
        (*cmc('--resume', pretrained, '--model', 'resnet50v1'),
         r'cannot resume .* with other values of flags that fix its state: --model resnet50v1 \(checkpoint: '
         r'resnet18v1\)'),
        (*probe('--layer', '5', model='alexnet'), 'does not fit --model alexnet .*trained with --model resnet18v1'),
        (*probe(script='eval_moco_ins', model='resnet18'),
         'holds a --model resnet18v1 encoder, which this script does not probe: probe it with LinearProbing.py'),
        (*probe('--layer', '7'), r'--layer 7 is out of range for --model resnet18v1 \(layers 1..6\)'),
        (*probe('--layer', '0', model='alexnet'), r'--layer 0 is out of range for --model alexnet'),
        (*probe('--layer', '9', script='eval_moco_ins', model='resnet18'), '--layer 9 is out of range'),
        (*probe(model_path=nowhere + '.pth'), f'--model_path {nowhere}.pth does not exist'),
        (*probe(model_path=bad / 'truncated.pth'), 'truncated.pth is not a readable checkpoint'),
        (*probe(), 'already holds checkpoints'),
        (*probe('--batch_size', '-8'), '--batch_size must be positive'),
        # an output folder that cannot be made: a file stands in its way
        (*cmc('--model_path', bad / 'garbage.pth' / 'models'),
         'garbage.pth is a file, not a folder; give --model_path another folder'),
        (*cmc('--tb_path', bad / 'garbage.pth'), 'garbage.pth is a file, not a folder; give --tb_path another folder'),
        (*probe('--save_path', bad / 'garbage.pth'),
         'garbage.pth is a file, not a folder; give --save_path another folder'),
        ('train_moco_ins', moco_argv(root, data, '--nce_k', '30'), '--nce_k 30 must be smaller'),
        ('train_moco_ins', moco_argv(root, data, '--alpha', '2'), r'--alpha must be in \[0, 1\]'),
        # argparse's own errors are one line too
        (*cmc('--model', 'alexnet2'), "argument --model: invalid choice: 'alexnet2'"),
        (*cmc('--batch_size', 'eight'), "argument --batch_size: invalid int value: 'eight'"),
        (*probe('--no_such_flag'), 'unrecognized arguments: --no_such_flag'),
    ]


def test_every_bad_input_is_one_clear_line_and_touches_no_existing_run(server, existing):
    root = str(existing['root'])
    before = tree_digest(root)
    failures = []
    for script, argv, expected in bad_input_cases(existing):
        result = server.run(script, argv)
        lines = result.err.strip().splitlines()
        if result.rc == 0 or len(lines) != 1 or not lines[0].startswith('error: ') or \
                not re.search(expected, lines[0]):
            failures.append((script, argv[-6:], result.rc, result.err[-2000:]))
        after = tree_digest(root)
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0))
            failures.append((script, argv[-6:], 'changed', changed))
            before = after
    assert not failures, '\n'.join(map(str, failures))


def test_a_full_disk_while_saving_is_one_clear_line_and_keeps_the_last_checkpoint(server, existing, tmp_path):
    """The disk fills up as epoch 2 is saved: one line naming the file and the fix, a non-zero exit, and epoch 1's
    checkpoints untouched, so that --resume auto carries on once there is room."""
    shutil.copytree(existing['root'] / 'models', tmp_path / 'models')
    folder = run_folder(str(tmp_path / 'models'))
    before = tree_digest(folder)
    argv = cmc_argv(str(tmp_path), existing['data'], '--epochs', '2', '--resume', 'auto')
    result = server.run('train_CMC', argv, max_file_bytes=2 ** 20)
    lines = result.err.strip().splitlines()
    assert result.rc != 0 and len(lines) == 1, result.err[-3000:]
    assert re.fullmatch(rf'error: could not write {re.escape(folder)}/ckpt_epoch_2.pth: File too large '
                        r'\(\d+ MiB free there\); free some space or point --model_path at a bigger disk, then '
                        r'resume with --resume auto \(the checkpoints already written are intact\)', lines[0])
    assert tree_digest(folder) == before
    ok(server.run('train_CMC', argv))                 # room again: the run goes on from epoch 1's checkpoint
    assert checkpoint.load_checkpoint(os.path.join(folder, 'current.pth'))['epoch'] == 2


def test_skip_bad_images_skips_and_counts_instead_of_stopping(server, existing, tmp_path):
    result = ok(server.run('train_CMC', cmc_argv(str(tmp_path), str(existing['bad'] / 'corrupt'), '--epochs', '1',
                                                 '--skip_bad_images')))
    assert f"skipping undecodable image {existing['bad_image']}" in result.err
    assert 'skipped 1 undecodable image' in result.out
    assert os.path.isfile(os.path.join(run_folder(str(tmp_path / 'models')), 'current.pth'))
