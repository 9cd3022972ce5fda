"""Errors a user can fix, early stops, and the scripts' entry point that turns both into one line."""
import os
import re
import sys

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
    try:
        main(argv)
    except UserError as e:
        if os.environ.get('LOCAL_RANK', '0') == '0':     # under torchrun once per node: all processes raise it
            print(f'error: {one_line(e)}', file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        if str(e):
            print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def one_line(error):
    """A UserError's message on one line. One raised in a DataLoader worker comes back re-raised in the parent with
    "Caught UserError in DataLoader worker process N" and the worker's traceback as its text: keep the original."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and 'DataLoader worker' in lines[0]:
        lines = [re.sub(r'^([\w.]+\.)?UserError: ', '', lines[-1])]
    return ' '.join(lines)
