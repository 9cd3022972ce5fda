"""The files that export.py and extract_features.py write: refused before any work when they cannot be written, or
exist (without --overwrite); written all or nothing."""
import os

from engine.checkpoint import check_folder_writable, free_mib, make_folders, no_room_error, remove_if_empty
from engine.errors import UserError

_UMASK = os.umask(0o022)        # read it (safetensors writes its files private; an export is for others to read)
os.umask(_UMASK)


def refuse_outputs(paths, overwrite, keep=()):
    """A UserError, before anything is written, for an output path (``paths``: {path: its flag}) that is a folder,
    exists (without ``overwrite``), is one of the inputs ``keep`` (the checkpoint being read), or cannot be written."""
    for path, flag in paths.items():
        if os.path.isdir(path):
            raise UserError(f'{flag} {path} is a folder; give the file to write')
        if os.path.exists(path) and any(os.path.exists(k) and os.path.samefile(path, k) for k in keep):
            raise UserError(f'{flag} {path} is the checkpoint being read (--model_path); give another {flag}')
        if os.path.exists(path) and not overwrite:
            raise UserError(f'{path} already exists; pass --overwrite to replace it, or give another {flag}')
        check_folder_writable(os.path.dirname(os.path.abspath(path)), flag)


def write_outputs(writes, flag='--out'):
    """Call each ``write(path)`` ({path: write}) on a temporary file beside its path, then, all written and synced,
    rename each into place: a failed write (a full disk, Ctrl-C) leaves the files that were there, never a partial
    one, and no temporary. A full disk is a UserError naming ``flag``."""
    staged, made, path, folder = {}, [], None, None
    try:
        for path, write in writes.items():
            folder = os.path.dirname(os.path.abspath(path))
            made.append(make_folders(folder))
            staged[path] = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.tmp')
            write(staged[path])
            os.chmod(staged[path], 0o666 & ~_UMASK)
            with open(staged[path], 'rb') as f:
                os.fsync(f.fileno())
        for path, temporary in staged.items():
            os.replace(temporary, path)
    except BaseException as e:
        for temporary in staged.values():
            if os.path.exists(temporary):
                os.remove(temporary)
        for chain in made:
            remove_if_empty(chain)
        no_room = no_room_error(e)
        if no_room is None:
            raise
        raise UserError(f'could not write {path}: {no_room.strerror} ({free_mib(folder)} MiB free there); free some '
                        f'space or give {flag} on another disk (no existing file was changed)') from None
