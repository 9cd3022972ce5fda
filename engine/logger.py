"""Logging: TensorBoard scalars (with a full disk as one line) and progress bars."""
import os
import sys
import threading

from engine.checkpoint import free_mib, no_room_error
from engine.errors import UserError


class TBLogger:
    """TensorBoard scalars through torch.utils.tensorboard, with the old tensorboard_logger's ``log_value``.

    The event file is created with the first value, so a run refused or failing before it logs anything leaves
    no file behind (an existing run's TensorBoard folder stays as it was).
    """

    def __init__(self, log_dir, enabled=True):
        self.log_dir, self.enabled, self.writer = log_dir, enabled, None
        self.before = None                      # the folder's files before this run's event file

    def log_value(self, tag, value, step):
        if self.enabled and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            os.makedirs(self.log_dir, exist_ok=True)
            self.before = set(os.listdir(self.log_dir))
            _quiet_no_room_in_threads()
            self.writer = SummaryWriter(log_dir=self.log_dir)
        if self.writer is not None:
            self._guard(lambda: self.writer.add_scalar(tag, float(value), step))

    def flush(self):
        if self.writer is not None:
            self._guard(self.writer.flush)

    def close(self):
        if self.writer is not None:
            self._guard(self.writer.close)
        self.enabled, self.writer = False, None

    def discard(self):
        """Close and remove the event file this logger wrote: a run that fails before its first checkpoint leaves
        no events a rerun would add to (the rerun's would follow them in the same folder)."""
        writer, before = self.writer, self.before
        self.close()
        if writer is not None and before is not None and os.path.isdir(self.log_dir):
            for name in set(os.listdir(self.log_dir)) - before:
                os.remove(os.path.join(self.log_dir, name))

    def _guard(self, action):
        """A full disk under the event file ends as one UserError (and the logger stops trying)."""
        try:
            action()
        except Exception as e:
            no_room = no_room_error(e)
            if no_room is None:
                raise
            self.enabled, self.writer = False, None
            raise UserError(f'could not write the TensorBoard log in {self.log_dir}: {no_room.strerror} '
                            f'({free_mib(self.log_dir)} MiB free there); free some space or point --tb_path at a '
                            f'bigger disk, then resume with --resume auto') from None


def _quiet_no_room_in_threads():
    """TensorBoard writes from a thread, which prints a traceback when the disk is full before the main thread is
    told: keep only the main thread's one line. Other errors in threads are printed as before."""
    if getattr(threading.excepthook, 'quiet_no_room', False):
        return
    previous = threading.excepthook

    def hook(args):
        if no_room_error(args.exc_value) is None:
            previous(args)
    hook.quiet_no_room = True
    threading.excepthook = hook


def progress(iterable, total, desc, enabled):
    """A tqdm bar when the output is a terminal; the plain iterable otherwise (logs stay clean)."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable
