"""Errors a user can fix, early stops, and the scripts' entry point that turns both into one line."""
import os
import re
import signal
import sys

import torch
import torch.distributed as dist


class UserError(Exception):
    """A problem with the user's input (flags, data, checkpoint). Scripts print str(e) as one line and exit non-zero."""


class MissingSplit(UserError):
    """A data set has no such split (an ImageFolder without val/): optional for pretraining's kNN monitor."""


class TrainingStopped(Exception):
    """Raised when a run stops early on purpose (a signal, a non-finite loss); carries the exit code."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def run_main(main, argv=None):
    """Run a script's ``main`` so that user errors end as one clear line and a non-zero exit, never a traceback."""
    code = 0
    try:
        main(argv)
    except UserError as e:
        say_once(f'error: {one_line(e)}')
        code = 2
        release_frames(e)
    except TrainingStopped as e:
        if str(e):                                      # '' in the processes that leave the saying to another
            say_once(str(e))
        code = e.exit_code
    except KeyboardInterrupt as e:          # Ctrl-C outside the epochs (set-up, the probe's features), or twice in them
        say_once('stopped by Ctrl-C (SIGINT); nothing was saved since the last checkpoint')
        code = 130
        release_frames(e)
    except RuntimeError as e:
        if dead_worker(e) is not None:                  # outside the epochs (the probe's feature cache): no checkpoint
            say_once(f'error: {dead_worker(e)}, most likely by the kernel\'s out-of-memory killer: lower '
                     f'--num_workers or --batch_size')
        elif lost_peers(e):                             # another process failed first, and said why
            say_once(f'error: process {os.environ.get("RANK")} of this torchrun job lost the others: one of them '
                     f'ended first (its own output says why)')
        else:                                           # a bug: its traceback follows
            release_frames(e, only_under=TORCH_FOLDER)
            raise
        code = 1
        release_frames(e)
    except BaseException as e:  # a traceback follows: free the loader iterators torch's frames hold, keep the rest
        release_frames(e, only_under=TORCH_FOLDER)
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            if code:
                # Ending early under torchrun, the interpreter's teardown (DDP's reducer and gloo's threads freed
                # after their group) took ~40 s, past the agent's 30 s before SIGKILL: exit now, all said and saved.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
    if code:
        sys.exit(code)


TORCH_FOLDER = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def release_frames(error, only_under=None):
    """Clear the locals of the finished frames in an exception's traceback (and its causes'), so that what they hold is
    freed now rather than at exit. A DataLoader iterator whose worker raised sits in such frames, in a reference cycle
    (torch's re-raise frame holds the exception, which holds the frame): left to the end, multiprocessing's exit hook
    sends its workers one SIGTERM, which they ignore (`engine.data.ignore_stop_signals`), and waits for them forever.
    Freed here, the iterator shuts its workers down itself. only_under: clear only frames of code under that folder
    (`TORCH_FOLDER`: torch's own, where the iterator is held), so a debugger still shows the user's locals."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        trace = error.__traceback__
        while trace is not None:
            if only_under is None or trace.tb_frame.f_code.co_filename.startswith(only_under):
                try:
                    trace.tb_frame.clear()
                except RuntimeError:  # a frame still running (run_main's own)
                    pass
            trace = trace.tb_next
        error = error.__cause__ or error.__context__


def say_once(line):
    """Print a run-ending line once for the whole run. Under torchrun the first process to end says it: an error
    every process hits alike (a bad flag, a set-up failure shared from rank 0) is said once, and an error that only
    one process hits (a bad image read by rank 1) is said by that process. Before the process group exists (the
    flags), rank 0 says it."""
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        if not (dist.is_available() and dist.is_initialized()):
            if os.environ.get('RANK', '0') != '0':
                return
        else:
            try:                                        # torchrun's store: the first process to count 1 says it
                if dist.distributed_c10d._get_default_store().add('cmc/run_ending_lines', 1) != 1:
                    return
            except Exception:                           # no store to ask: each node's first process says it
                if os.environ.get('LOCAL_RANK', '0') != '0':
                    return
    print(line, file=sys.stderr, flush=True)


def lost_peers(error):
    """Whether ``error`` is a collective that failed because another process of a torchrun job is gone."""
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return False
    backend_error = getattr(dist, 'DistBackendError', ())
    return isinstance(error, backend_error) or bool(re.search(
        r'Connection (reset|closed) by peer|Broken pipe|gloo/transport', str(error)))


def dead_worker(error):
    """'a data-loading worker (pid 123) was killed by signal SIGKILL' for the RuntimeError torch raises in the main
    process when a DataLoader worker is killed (from its SIGCHLD handler, wherever the main process then is), or
    None for any other error."""
    found = re.match(r'DataLoader worker \(pids? ([\d, ]+)\) (?:is killed by signal: (.+?)\.|exited unexpectedly)',
                     str(error).strip())
    if found is None:
        return None
    pid, how = found.group(1), found.group(2)
    names = {signal.strsignal(s): s.name for s in signal.Signals}
    return (f'a data-loading worker (pid {pid}) was killed by signal {names.get(how, how)}' if how else
            f'a data-loading worker (pid {pid}) exited unexpectedly')


def one_line(error):
    """A UserError's message on one line. One raised in a DataLoader worker comes back re-raised in the parent with
    "Caught UserError in DataLoader worker process N" and the worker's traceback as its text: keep the original."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and 'DataLoader worker' in lines[0]:
        lines = [re.sub(r'^([\w.]+\.)?UserError: ', '', lines[-1])]
    return ' '.join(lines)
