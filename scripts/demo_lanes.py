"""The demo's plumbing (``scripts/run_demo.py``): its progress lines, each stage run as ``python script.py`` would
run it (or, for ``--smoke``'s probes, in this process), and lanes of stages side by side that stop together at the
first failure."""
import os
import re
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Progress:
    """One line per event, prefixed with the stage and the elapsed time."""

    def __init__(self, n_stages):
        self.n, self.i, self.t0 = n_stages, 0, time.time()

    def stage(self, text, number=None):
        """'[i/n] text': i is ``number`` when given (lanes start in any order), else the next."""
        self.i = number or self.i + 1
        self.say(f'[{self.i}/{self.n}] {text}')

    def say(self, text):
        # One write per line: print writes the text and the newline apart, so two lanes' lines could share a row.
        sys.stdout.write(f'{(time.time() - self.t0) / 60:5.1f} min  {text}\n')
        sys.stdout.flush()


RUNNING = set()          # the scripts running now, so that a failing lane can stop the other


def run_script(args, log_path, progress, total_epochs, every=1, label='', threads=None, quiet=False):
    """Run one of the four scripts as a user would; keep its output in a log and show its epochs as progress: after
    the second epoch (the first warms up; of a 2-epoch stage, after the first) the stage's minutes left, then every
    ``every`` epochs one line with the epochs done, the minutes left (the mean epoch since the first, times the
    epochs to go; the kNN passes and saves are not counted) and the latest kNN.
    ``quiet``: no progress lines. Returns the script's output."""
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    name = f'{label} ' if label else ''
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        RUNNING.add(proc)
        times, knn, due = [], None, None         # due: an epoch whose line waits for the kNN that may follow it
        for line in proc.stdout:
            log.write(line)
            m = re.match(r'(?:train )?epoch (\d+), total time ([\d.]+)', line)
            found = re.match(r'kNN .* top-1 on val: ([\d.]+)', line)
            if found:
                knn = float(found.group(1))
            if due is not None and (found or m):
                progress.say(epoch_line(name, due, total_epochs, times, knn))
                due = None
            if m and not quiet:
                epoch = int(m.group(1))
                times.append(float(m.group(2)))
                if epoch == min(2, total_epochs - 1):
                    progress.say(f'      {name}about {minutes_left(times, total_epochs - epoch)} left in this stage '
                                 f'({total_epochs - epoch} epochs at {times[-1]:.0f} s)')
                if epoch % every == 0 or epoch == total_epochs:
                    due = epoch
        if due is not None:
            progress.say(epoch_line(name, due, total_epochs, times, knn))
        proc.wait()
        RUNNING.discard(proc)
    if proc.returncode != 0:
        tail = open(log_path).read().strip().splitlines()[-3:]
        raise SystemExit(f'demo stage failed ({" ".join(args[:1])}); see {log_path}:\n' + '\n'.join(tail))
    return open(log_path).read()


def minutes_left(epoch_seconds, epochs_to_go):
    """'N s' or 'N min': epochs_to_go times the mean epoch after the first (which warms up), or the first alone."""
    recent = epoch_seconds[1:] or epoch_seconds
    left = sum(recent) / len(recent) * epochs_to_go
    return f'{left:.0f} s' if left < 90 else f'{left / 60:.0f} min'


def epoch_line(name, epoch, total_epochs, epoch_seconds, knn):
    """'cmc epoch 20/150, 6 min left, kNN top-1 45.6' (the kNN: the latest so far, if any)."""
    left = f', {minutes_left(epoch_seconds, total_epochs - epoch)} left' if epoch < total_epochs else ', done'
    return f'      {name}epoch {epoch}/{total_epochs}{left}' + (f', kNN top-1 {knn:.1f}' if knn is not None else '')


def run_in_process(args, log_path):
    """--smoke's probes: the script's main() with the same arguments in this process, as ``python script.py`` runs it
    (errors.run_main), its output in log_path; fails as run_script does. A smoke probe's work takes a second, a Python
    and torch start per probe several."""
    import contextlib
    import importlib
    import traceback
    from engine import errors
    module = importlib.import_module(args[0][:-len('.py')])
    cwd = os.getcwd()
    with open(log_path, 'w') as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            os.chdir(ROOT)                       # as run_script's cwd=ROOT
            errors.run_main(module.main, list(args[1:]))
            code = 0
        except SystemExit as e:
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)   # as the interpreter prints sys.exit('message')
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            os.chdir(cwd)
    if code != 0:
        tail = open(log_path).read().strip().splitlines()[-3:]
        raise SystemExit(f'demo stage failed ({args[0]}); see {log_path}:\n' + '\n'.join(tail))
    return open(log_path).read()


def run_lanes(lanes):
    """Run each lane's calls in order, the lanes side by side; stop them all at the first failure and re-raise it."""
    failures = []

    def run(lane):
        try:
            for call in lane:
                if failures:
                    return
                call()
        except BaseException as exc:          # run_script fails with SystemExit
            failures.append(exc)
            for proc in list(RUNNING):
                proc.terminate()

    workers = [threading.Thread(target=run, args=(lane,)) for lane in lanes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]
