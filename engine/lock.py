"""One writer per run folder: a run holds an OS lock (``flock``) on its folders while it runs, so the same flags
started twice do not overwrite each other's checkpoints and TensorBoard events. The kernel drops the lock with the
process, however it ends (SIGKILL included): there is no stale lock to clean up. A flock belongs to the open file,
which a fork shares: forked children (the loader workers) close their copies at once, or a SIGKILLed run's orphaned
workers would hold its folder until they notice (seconds later)."""
import fcntl
import os

from engine.errors import UserError

_HELD = set()                   # the descriptors that hold this process's locks


def _close_in_child():
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_close_in_child)


def lock_folder(path, what, flag='the run'):
    """Lock the folder ``path`` for this process; returns the open descriptor that holds the lock (close it to
    release). Another process's lock is a UserError naming it (``what``: 'run folder', 'TensorBoard folder';
    ``flag``: the flag that chose the folder)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        clash = 'mix their events' if what.startswith('TensorBoard') else 'overwrite each other\'s checkpoints'
        raise UserError(f'{what} {path} is in use by {holder(path)}: two runs in one folder would {clash}; wait for '
                        f'that run to end (or stop it), or give this one another {flag}') from None
    _HELD.add(fd)
    return fd


def unlock(fd):
    """Release a lock ``lock_folder`` took."""
    _HELD.discard(fd)
    os.close(fd)


def holder(path):
    """'process 1234 (python train_CMC.py --dataset ...)': who holds the flock on ``path``, read from /proc/locks
    (Linux), or 'another process' where that cannot be read."""
    stat = os.stat(path)
    device = f'{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}'
    try:
        with open('/proc/locks') as locks:
            pids = [line.split()[4] for line in locks if 'FLOCK' in line and line.split()[5] == device]
    except (OSError, IndexError):
        pids = []
    if not pids:
        return 'another process'
    try:
        with open(f'/proc/{pids[0]}/cmdline', 'rb') as cmdline:
            command = cmdline.read().replace(b'\0', b' ').decode(errors='replace').strip()
    except OSError:
        return f'process {pids[0]}'
    command = os.path.basename(command.split(' ', 1)[0]) + (' ' + command.split(' ', 1)[1] if ' ' in command else '')
    return f'process {pids[0]} ({command[:120] + ("..." if len(command) > 120 else "")})'
