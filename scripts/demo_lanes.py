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

    def stage(self, text):
        self.i += 1
        self.say(f'[{self.i}/{self.n}] {text}')

    def say(self, text):
        # One write per line: print writes the text and the newline apart, so two lanes' lines could share a row.
        sys.stdout.write(f'{(time.time() - self.t0) / 60:5.1f} min  {text}\n')
        sys.stdout.flush()


RUNNING = set()          # the scripts running now, so that a failing lane can stop the other


def run_script(args, log_path, progress, total_epochs, every=1, label='', threads=None):
    """Run one of the four scripts as a user would; show its epochs as progress, keep its output in a log."""
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        RUNNING.add(proc)
        pending = None                    # an epoch's progress line, waiting for the kNN top-1 that may follow it
        for line in proc.stdout:
            log.write(line)
            m = re.match(r'(?:train )?epoch (\d+), total time ([\d.]+)', line)
            knn = re.match(r'kNN .* top-1 on val: ([\d.]+)', line)
            if knn and pending:
                progress.say(f'{pending}, kNN top-1 {float(knn.group(1)):.1f}')
                pending = None
            elif m:
                if pending:                   # that epoch had no kNN
                    progress.say(pending)
                epoch = int(m.group(1))
                if epoch == min(2, total_epochs - 1):     # epoch 1 warms up: estimate from the one after it
                    left = float(m.group(2)) * (total_epochs - epoch)
                    left = f'{left:.0f} s' if left < 90 else f'{left / 60:.0f} min'
                    progress.say(f'      {label + " " if label else ""}about {left} left in this stage '
                                 f'({total_epochs - epoch} epochs at {float(m.group(2)):.0f} s)')
                due = epoch % every == 0 or epoch == total_epochs
                pending = (f'      {label + " " if label else ""}epoch {epoch}/{total_epochs} '
                           f'({float(m.group(2)):.0f} s)') if due else None
        if pending:
            progress.say(pending)
        proc.wait()
        RUNNING.discard(proc)
    if proc.returncode != 0:
        tail = open(log_path).read().strip().splitlines()[-3:]
        raise SystemExit(f'demo stage failed ({" ".join(args[:1])}); see {log_path}:\n' + '\n'.join(tail))
    return open(log_path).read()


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
