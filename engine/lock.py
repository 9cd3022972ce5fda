"""One writer per run folder: a run holds an OS lock (``flock``) on its folders while it runs, so the same flags
started twice do not overwrite each other's checkpoints and TensorBoard events. The kernel drops the lock with the
process, however it ends (SIGKILL included): there is no stale lock to clean up."""
import fcntl
import os

from engine.errors import UserError


def lock_folder(path, what, flag='the run'):
    """Lock the folder ``path`` for this process; returns the open descriptor that holds the lock (close it to
    release). Another process's lock is a UserError naming it (``what``: 'run folder', 'TensorBoard folder';
    ``flag``: the flag that chose the folder)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f'{what} {path} is in use by {holder(path)}: two runs in one folder would overwrite each '
                        f'other\'s checkpoints; wait for that run to end (or stop it), or give this one another '
                        f'{flag}') from None
    return fd


def check_unlocked(path, what, flag='the run'):
    """Refuse, writing nothing, a folder another process holds (``lock_folder``'s error); a folder that does not
    exist yet is free."""
    if os.path.isdir(path):
        os.close(lock_folder(path, what, flag))


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
