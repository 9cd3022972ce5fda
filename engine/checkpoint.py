"""Checkpoints: atomic writes and links, safe loading, loading weights with one-line errors, the run folder."""
import argparse
import errno
import os
import pickle
import shutil
import tempfile
import zipfile

import torch

from engine.errors import UserError
from engine.lock import lock_folder, unlock
from engine.runtime import unwrap

# A write that fails for want of room (disk full, quota, a file-size limit) is the user's to fix, not a bug.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def no_room_error(error):
    """The disk-full OSError behind ``error``, or None. torch.save reports a failed write as a RuntimeError from its
    zip writer, with the OSError only in the exception's context."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            return error
        error = error.__cause__ or error.__context__
    return None


# The messages by which writers that keep no OSError report a full disk: the C library's texts, and Rust's io::Error
# (safetensors: "... No space left on device (os error 28)").
_NO_ROOM_TEXTS = {text: n for n in _NO_ROOM for text in (os.strerror(n), f'os error {n}')}
NEARLY_FULL_BYTES = 2 ** 20


def no_room_reason(error, folder):
    """Why a write into ``folder`` that raised ``error`` failed for want of room ('No space left on device', ...), or
    None for any other failure (and for Ctrl-C). Writers report a full disk in three ways, so three signs count:

    1. an OSError ENOSPC / EDQUOT / EFBIG in the exception chain (``no_room_error``): Python's own writes, and
       torch.save to a file object (a RuntimeError with the OSError as its context);
    2. that errno's text in the message of an exception of the chain: writers in other languages that flatten the
       OSError into their own exception (safetensors' SafetensorError "... (os error 28)");
    3. under NEARLY_FULL_BYTES left on ``folder``'s file system for this user: the one sign left by a writer that
       keeps no errno at all (torch.save to a path: its C++ zip writer says only "[enforce fail at
       inline_container.cc:...] . unexpected pos N vs M"). A write that filled the disk leaves it full until its
       partial file is removed, so call this before removing it.

    Sign 3 alone could blame the disk for another failure that happens on a full disk; the disk then is full
    anyway, and its free space is in the message."""
    if not isinstance(error, Exception):
        return None
    no_room = no_room_error(error)
    if no_room is not None:
        return no_room.strerror or os.strerror(no_room.errno)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for text, number in _NO_ROOM_TEXTS.items():
            if text in str(error):
                return os.strerror(number)
        error = error.__cause__ or error.__context__
    try:
        stat = os.statvfs(folder)
    except (OSError, TypeError):
        return None
    return os.strerror(errno.ENOSPC) if stat.f_bavail * stat.f_frsize < NEARLY_FULL_BYTES else None


def _temporary_prefix(path):
    return '.' + os.path.basename(path) + '.'


def _remove_stale_temporaries(folder, path):
    """Temporary files that a killed write to ``path`` left behind (one writer per path, as in a run)."""
    prefix = _temporary_prefix(path)
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith('.tmp'):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass


def save_checkpoint(state, path, folder_flag='--model_path'):
    """Write ``state`` atomically: a temporary file in the same folder, flushed, fsynced, then renamed into place.

    A kill at any moment leaves either the old file or the new one, never a truncated one; the temporary file a
    killed write left behind is removed by the next save to the same path (one writer per path, as in a run).
    A full disk ends as a UserError naming the file and the flag that chose its folder (``folder_flag``), with the
    temporary removed and the old file untouched.
    """
    write_atomically(path, lambda f: torch.save(state, f), folder_flag)


RESUME_ADVICE = ', then resume with --resume auto (the checkpoints already written are intact)'


def write_atomically(path, write, folder_flag, advice=RESUME_ADVICE):
    """``write(f)`` into a temporary file beside ``path``, flushed and fsynced, then renamed onto ``path`` (see
    ``save_checkpoint``); a full disk (``no_room_reason``) is a UserError naming ``folder_flag``, with the old file
    untouched, and ending with ``advice`` (a run's: resume once there is room)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temporaries(folder, path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(path), suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)         # mkstemp makes the file private; a checkpoint is not
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        no_room = no_room_reason(e, folder)             # before the partial file goes: it may be what filled the disk
        if os.path.exists(tmp):
            os.remove(tmp)
        if no_room is None:
            raise
        raise UserError(f'could not write {path}: {no_room} ({free_mib(folder)} MiB free there); free some space or '
                        f'point {folder_flag} at a bigger disk{advice}') from None
    _fsync_dir(folder)


def free_mib(folder):
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize // 2 ** 20


def link_checkpoint(src, dst, folder_flag='--model_path'):
    """Make ``dst`` the same file as ``src`` (a hard link, put in place atomically), else a copy.

    A run's current.pth and its ckpt_epoch_N.pth of the same epoch hold the same bytes: linking them halves the
    disk a run takes. Safe because checkpoints are never written in place: the next save of either name makes a
    new file and leaves the other one as it was.
    """
    folder = os.path.dirname(os.path.abspath(dst))
    _remove_stale_temporaries(folder, dst)
    tmp = os.path.join(folder, f'{_temporary_prefix(dst)}{os.getpid()}.link.tmp')
    try:
        os.link(src, tmp)
    except OSError:                     # no hard links here (FAT, some network mounts): copy the bytes
        with open(src, 'rb') as source:
            write_atomically(dst, lambda f: shutil.copyfileobj(source, f, 2 ** 22), folder_flag)
        return
    os.replace(tmp, dst)
    _fsync_dir(folder)


def _read_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SAFETENSORS_SUFFIX, DETECTRON2_SUFFIX = '.safetensors', '.pkl'      # exports (pretrained/), no checkpoints
# The only non-tensor class the reference's files need: it pickled ``opt`` as an argparse.Namespace.
SAFE_GLOBALS = [argparse.Namespace]


def load_checkpoint(path, map_location='cpu', mmap=False):
    """Load a checkpoint without ever running pickled code (``weights_only=True``); ``opt`` comes back as a dict.
    ``mmap``: map the tensors' storage instead of reading it (files of torch >= 1.6; older ones are read)."""
    if not path or not os.path.isfile(path):
        raise UserError(f'checkpoint {path!r} does not exist; check the path')
    if str(path).endswith(DETECTRON2_SUFFIX):
        raise UserError(f'{path} is a detectron2 export (scripts/export.py --to detectron2, for detectron2 only); give '
                        f'the pretraining checkpoint (.pth) it was exported from')
    if str(path).endswith(SAFETENSORS_SUFFIX):
        raise UserError(f'{path} is an exported encoder (scripts/export.py --to safetensors, for other libraries; '
                        f'pretrained.load_encoder reads it); give the pretraining checkpoint (.pth) it was exported '
                        f'from')
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            mmap = mmap and zipfile.is_zipfile(path)            # the reference's legacy files cannot be mapped
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        code = next((line for line in lines if 'GLOBAL' in line), None)   # a class or function the pickle would call
        if code is None:                 # e.g. "Unsupported operand": bytes that are no torch.save pickle at all
            detail = next((line for line in lines if 'Unsupported' in line), lines[0] if lines else '')
            raise UserError(f'{path} is not a readable checkpoint (truncated, or not a .pth file): {detail}; give '
                            f'another one (an earlier ckpt_epoch_N.pth of the run)')
        raise UserError(f'refusing to load {path}: it holds pickled objects that could run code ({code}); '
                        f'only tensors, plain containers and argparse.Namespace are accepted')
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, ImportError) as e:
        first = str(e).strip().splitlines()[0].split('. ')[0].rstrip('.') if str(e).strip() else type(e).__name__
        raise UserError(f'{path} is not a readable checkpoint (truncated, or not a .pth file): {first}; give another '
                        f'one (an earlier ckpt_epoch_N.pth of the run)')
    if not isinstance(ckpt, dict):
        raise UserError(f'{path} is not a checkpoint of this project or the reference (a {type(ckpt).__name__}, '
                        f'not a dict)')
    if isinstance(ckpt.get('opt'), argparse.Namespace):
        ckpt['opt'] = vars(ckpt['opt'])
    return ckpt


def checkpoint_opt(path):
    """A checkpoint's flags (``opt``, a dict; {} when it has none), its tensors mapped, not read: a pretraining
    checkpoint with ImageNet memory banks is over a GB."""
    opt = load_checkpoint(path, mmap=True).get('opt')
    return opt if isinstance(opt, dict) else {}


SHOWN_KEYS = 5


def checkpoint_section(ckpt, key, path):
    """``ckpt[key]``, or a one-line UserError naming a few of the entries it has (a state dict has hundreds)."""
    if key not in ckpt:
        keys = sorted(map(str, ckpt))
        shown = ', '.join(keys[:SHOWN_KEYS]) + (f', ... ({len(keys)} in all)' if len(keys) > SHOWN_KEYS else '')
        raise UserError(f'{path} has no {key!r} entry (it has {shown or "none"}); is it the right kind of checkpoint?')
    return ckpt[key]


def trained_model(ckpt):
    """The ``--model`` a checkpoint was trained with, from its ``opt`` (ours or the reference's), or None."""
    opt = ckpt.get('opt')
    return opt.get('model') if isinstance(opt, dict) else None


def load_weights(module, state_dict, what, path, trained_with=None):
    """``module.load_state_dict`` with a one-line error naming the model, the checkpoint's model and the keys."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        own, theirs = set(unwrap(module).state_dict()), set(state_dict)
        strip = lambda k: k.replace('module.', '')                       # noqa: E731
        missing = sorted(own - {strip(k) for k in theirs})[:3]
        unexpected = sorted({strip(k) for k in theirs} - own)[:3]
        lines = [line for line in str(e).splitlines() if 'size mismatch' in line][:1]
        origin = (f'it was trained with --model {trained_with}' if trained_with else
                  'was it trained with another --model?')
        raise UserError(f'{path} does not fit {what} ({origin}): missing keys {missing}, unexpected keys {unexpected}'
                        f'{"; " + lines[0].strip() if lines else ""}')


def check_folder_writable(path, flag='the path'):
    """Refuse, before any work, a folder that cannot be created or written (a file in its way, no permission);
    ``flag``: the flag that chose it, for the message."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f'cannot write to {path}: {existing} is a file, not a folder; give {flag} another folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f'cannot write to {path}: no write permission on {existing}; give {flag} another folder')


def make_folders(path):
    """Create ``path``; returns the folders this made, deepest first (the run's, and parents such as --model_path)."""
    made, folder = [], os.path.abspath(path)
    while not os.path.isdir(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(path, exist_ok=True)
    return made


def remove_if_empty(made):
    """Remove the folders ``make_folders`` made, deepest first, while they hold nothing (a file, a checkpoint above
    all, keeps its folder and every folder above it)."""
    for folder in made:
        try:
            os.rmdir(folder)               # fails, leaving everything, unless the folder is empty
        except OSError:
            return


class RunFolder:
    """A run's checkpoint folder: one run at a time (``open`` locks it), refuses to clobber an existing run, resolves
    ``--resume auto``. ``flag``: the flag that chose its parent folder (--model_path for pretraining, --save_path for
    the probes), for the messages."""

    def __init__(self, path, flag='--model_path'):
        self.path, self.flag = path, flag
        self.made, self.locks = [], []          # the folders open() made (one chain per folder), the locks it holds

    def open(self, opt, also=(), quiet=False):
        """Make the run folder (and the folders ``also``: TensorBoard's) and lock each for this process, then return
        the checkpoint to resume from (or None, ``prepare``). Another run holding one of them, or any other refusal,
        is a UserError; the folders this made are then removed again and the locks released. Opened again (the
        probes open it before computing their features, then ``Fit``), it only resolves the resume."""
        if self.locks:
            return self.prepare(opt, also, quiet)
        try:
            for folder, flag in self._folders(also):
                check_folder_writable(folder, flag)
                self.made.append(make_folders(folder))
                what = 'run folder' if flag == self.flag else 'TensorBoard folder'
                self.locks.append(lock_folder(folder, what, flag))
            return self.prepare(opt, also, quiet)
        except BaseException:
            self.close(remove_empty=True)
            raise

    def _folders(self, also):
        """(folder, the flag that chose it) for the run folder and ``also`` (TensorBoard's: --tb_path), once each."""
        folders = {os.path.abspath(self.path): self.flag}
        for folder in also:
            folders.setdefault(os.path.abspath(folder), '--tb_path')
        return folders.items()

    def close(self, remove_empty=False):
        """Release the locks; with ``remove_empty`` (a run that failed before its first save) also remove the folders
        ``open`` made while they hold nothing."""
        for fd in self.locks:
            unlock(fd)
        self.locks = []
        if remove_empty:
            for chain in self.made:
                remove_if_empty(chain)
        self.made = []

    def checkpoints(self):
        if not os.path.isdir(self.path):
            return []
        return sorted(f for f in os.listdir(self.path) if f.endswith('.pth'))

    def resume_file(self, resume):
        """The file ``--resume`` names: ``auto`` -> this folder's current.pth; '' -> None (not checked to exist)."""
        return os.path.join(self.path, 'current.pth') if resume == 'auto' else (resume or None)

    def prepare(self, opt, also=(), quiet=False):
        """Return the checkpoint to resume from (or None), after checking the folder (and ``also``) can be written.

        Writes nothing: a run refused later (a checkpoint that does not fit) must leave no trace. ``quiet``: say
        nothing.
        """
        for folder, flag in self._folders(also):
            check_folder_writable(folder, flag)
        resume = self.resume_file(opt.resume) or ''
        if opt.resume == 'auto':
            resume = resume if os.path.isfile(resume) else ''
            if not resume and not quiet:       # the run name holds flags (lr, batch size...): a changed one is new
                print(f'--resume auto: no current.pth in {self.path}; starting a new run', flush=True)
        if resume:
            if os.path.isdir(resume):
                raise UserError(f'--resume {resume} is a folder: give the checkpoint file in it (current.pth or '
                                f'ckpt_epoch_N.pth), or --resume auto')
            if not os.path.isfile(resume):
                raise UserError(f'--resume {resume} does not exist (refusing to start from scratch; '
                                f"drop --resume to start a new run, or use --resume auto)")
        elif self.checkpoints() and not opt.overwrite:
            raise UserError(f'{self.path} already holds checkpoints ({", ".join(self.checkpoints()[:3])}); '
                            f'pass --resume auto to continue that run, or --overwrite to start over')
        return resume or None

    def save(self, state, epoch, save_freq):
        """current.pth every epoch, and ckpt_epoch_N.pth every save_freq epochs (then current.pth is a link to it)."""
        current = os.path.join(self.path, 'current.pth')
        if epoch % save_freq == 0 and state.get('resume_step', 0) == 0:
            kept = os.path.join(self.path, f'ckpt_epoch_{epoch}.pth')
            save_checkpoint(state, kept, self.flag)
            link_checkpoint(kept, current, self.flag)
        else:
            save_checkpoint(state, current, self.flag)
