"""A stop signal sent to the process group while an epoch's loader workers start must not kill them
(engine.data.Loader blocks SIGTERM / SIGINT until ignore_stop_signals has installed its handlers).

The race made deterministic: worker 0's worker_init_fn first sends SIGTERM to the whole process group, while every
worker is still under torch's own worker handler, then installs ours. Each run is a child in its own session, so the
signal stays inside it."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path.insert(0, {root!r})
    from engine.data import Loader, ignore_stop_signals

    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))   # the main process's StopSignal

    def init(worker_id):
        if worker_id == 0:
            os.killpg(os.getpgid(0), signal.SIGTERM)      # a scheduler's SIGTERM, just as the workers start
        ignore_stop_signals(worker_id)

    loader_class = torch.utils.data.DataLoader if sys.argv[1] == 'plain' else Loader
    loader = loader_class(list(range(32)), batch_size=4, num_workers=2, worker_init_fn=init)
    items = sorted(int(x) for batch in loader for x in batch)
    print('items', len(items), items == list(range(32)), 'main got SIGTERM', len(received))
""")


@pytest.mark.skipif(not hasattr(os, 'killpg') or sys.platform != 'linux', reason='fork and process groups (Linux)')
@pytest.mark.parametrize('kind', ['Loader', 'plain'])
def test_sigterm_while_workers_start(tmp_path, kind):
    script = tmp_path / 'child.py'
    script.write_text(CHILD.format(root=ROOT))
    command = [sys.executable, str(script), kind]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    if kind == 'Loader':
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, start_new_session=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == 'items 32 True main got SIGTERM 1', result.stdout
        return
    # The race this guards against, shown on torch's own DataLoader: the signalled worker dies under torch's handler,
    # and the run either fails ("DataLoader worker ... killed by signal") or hangs (seen here): never the clean line.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as child:
        try:
            out, err = child.communicate(timeout=12)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)
            out, err = child.communicate()
            assert child.returncode == -9
            return
    assert child.returncode != 0 and 'killed by signal' in err, (child.returncode, out, err[-2000:])


ERROR_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from engine.data import Loader, ignore_stop_signals
    from engine.errors import UserError, run_main

    class Items:
        def __len__(self):
            return 32

        def __getitem__(self, index):
            if index == 5:
                raise (UserError if sys.argv[1] == 'user' else RuntimeError)(f'item {{index}} is bad')
            return index

    def main(argv):
        for batch in Loader(Items(), batch_size=4, num_workers=2, worker_init_fn=ignore_stop_signals):
            pass

    run_main(main)
""")


@pytest.mark.skipif(sys.platform != 'linux', reason='forked loader workers (Linux)')
@pytest.mark.parametrize('kind', ['user', 'bug'])
def test_a_worker_error_ends_the_run(tmp_path, kind):
    # A worker's exception comes back to the main process inside a reference cycle that holds the loader's iterator.
    # Left to the interpreter's exit, multiprocessing sent its workers one SIGTERM, which ignore_stop_signals ignores,
    # then joined them forever (the error line printed, the process never ended). run_main frees the failed frames,
    # so the iterator shuts its workers down at once: the real interpreter exit is what this checks, so a subprocess.
    script = tmp_path / 'child.py'
    script.write_text(ERROR_CHILD.format(root=ROOT))
    result = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True, timeout=60,
                            start_new_session=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    if kind == 'user':
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == 'error: item 5 is bad', result
    else:  # a bug keeps its traceback (from the worker) and exit status 1
        assert result.returncode == 1 and 'RuntimeError: item 5 is bad' in result.stderr, result


@pytest.mark.skipif(sys.platform != 'linux', reason='forked loader workers (Linux)')
def test_a_worker_killed_by_a_signal_is_one_line_with_the_resume_command(tmp_path, image_folder):
    """The kernel's out-of-memory killer sends SIGKILL to a loader worker: torch raises, from its SIGCHLD handler,
    wherever the main process then is; the run ends with one line, the last checkpoint as it was."""
    import hashlib
    import signal
    import time
    argv = ['train_CMC.py', '--dataset', 'folder', '--data_folder', image_folder, '--model_path',
            str(tmp_path / 'm'), '--tb_path', str(tmp_path / 'tb'), '--image_size', '64', '--num_workers', '2',
            '--batch_size', '2', '--device', 'cpu', '--print_freq', '1', '--model', 'alexnet', '--nce_k', '8',
            '--epochs', '200', '--seed', '0', '--knn_freq', '0']
    # 12 batches an epoch: when the kill comes (after epoch 3's first step) its workers still have batches to make,
    # even on a loaded machine (with 3, two workers prefetching 2 each had made them all, and the death went unseen)
    run = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        for line in run.stdout:                              # epochs 1 and 2 saved; epoch 3's workers are running
            if line.startswith('Train: [3]'):
                break
        (current,) = [os.path.join(root, 'current.pth') for root, _, files in os.walk(tmp_path / 'm')
                      if 'current.pth' in files]
        before = hashlib.sha256(open(current, 'rb').read()).hexdigest()
        worker = int(subprocess.run(['pgrep', '-P', str(run.pid)], capture_output=True, text=True).stdout.split()[0])
        os.kill(worker, signal.SIGKILL)
        start = time.time()
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 1 and time.time() - start < 30
    resume = ' '.join(['python', *argv, '--resume', current])
    assert err == (f'error: a data-loading worker (pid {worker}) was killed by signal SIGKILL, most likely by the '
                   f"kernel's out-of-memory killer: lower --num_workers (2 now) or --batch_size (2 now); the "
                   f'checkpoints written are intact; resume with: {resume}\n')
    assert hashlib.sha256(open(current, 'rb').read()).hexdigest() == before
