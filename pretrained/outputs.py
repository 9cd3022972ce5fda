"""The files that export.py and extract_features.py write: refused before any work when they cannot be written, or
exist (without --overwrite); written all or nothing."""
import os

from engine.checkpoint import check_folder_writable, free_mib, make_folders, no_room_reason, remove_if_empty
from engine.errors import UserError

_UMASK = os.umask(0o022)        # read it (safetensors writes its files private; an export is for others to read)
os.umask(_UMASK)


def refuse_empty(path, flag):
    """A UserError for an output flag given as '' (argparse takes it; nothing could be written there)."""
    if not path:
        raise UserError(f'{flag} is empty; give the file to write')


def same_file(a, b):
    """Whether two output paths name one file: the same path, through symlinks too (a link whose target does not
    exist yet included), or hard links of one existing file."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def refuse_outputs(paths, overwrite, keep=()):
    """A UserError, before anything is written, for an output path (``paths``: {path: its flag}, or (path, flag)
    pairs, so that two flags may give one path) that is empty, the same file as another output, a folder, exists
    (without ``overwrite``), is one of the inputs ``keep`` (the checkpoint being read), or cannot be written."""
    pairs = list(paths.items()) if isinstance(paths, dict) else list(paths)
    for i, (path, flag) in enumerate(pairs):
        refuse_empty(path, flag)
        for other, other_flag in pairs[:i]:
            if same_file(path, other):
                raise UserError(f'{flag} {path} is the same file as {other_flag} {other}: one would overwrite the '
                                f'other; give each its own file')
        if os.path.isdir(path):
            raise UserError(f'{flag} {path} is a folder; give the file to write')
        if os.path.exists(path) and any(os.path.exists(k) and os.path.samefile(path, k) for k in keep):
            raise UserError(f'{flag} {path} is the checkpoint being read (--model_path); give another {flag}')
        if os.path.exists(path) and not overwrite:
            raise UserError(f'{path} already exists; pass --overwrite to replace it, or give another {flag}')
        check_folder_writable(os.path.dirname(os.path.abspath(path)), flag)


def file_writer(write):
    """``write(f)`` (to an open binary file) as the ``write(path)`` that ``write_outputs`` calls. Writers that add
    a suffix to a path (np.savez adds .npz) must write to a file object: the temporary has its own name."""
    def write_path(path):
        with open(path, 'wb') as f:
            write(f)
    return write_path


def write_outputs(writes, flag='--out'):
    """Call each ``write(path)`` ({path: write}) on a temporary file beside its path, then, all written and synced,
    rename each into place: a failed write (a full disk, Ctrl-C) leaves the files that were there, never a partial
    one, and no temporary. A full disk (``engine.checkpoint.no_room_reason``: an errno in the exception chain or in
    its text, or no room left in the folder) is a UserError naming the flag of the file (``flag``: one for all, or
    {path: flag})."""
    staged, made, path, folder = {}, [], None, None
    try:
        for path, write in writes.items():
            target = os.path.realpath(path)     # a symlinked output is written through, not replaced by a file
            folder = os.path.dirname(target)
            made.append(make_folders(folder))
            staged[path] = os.path.join(folder, f'.{os.path.basename(target)}.{os.getpid()}.tmp')
            write(staged[path])
            os.chmod(staged[path], 0o666 & ~_UMASK)
            with open(staged[path], 'rb') as f:
                os.fsync(f.fileno())
        for path, temporary in staged.items():
            os.replace(temporary, os.path.realpath(path))
    except BaseException as e:
        # before the temporaries go: a partial one may be what filled the disk (the free-space sign)
        no_room = no_room_reason(e, folder) if folder is not None and os.path.isdir(folder) else None
        for temporary in staged.values():
            if os.path.exists(temporary):
                os.remove(temporary)
        free = free_mib(folder) if no_room is not None else None           # before the folders this made go
        for chain in made:
            remove_if_empty(chain)
        if no_room is None:
            raise
        given = flag.get(path, '--out') if isinstance(flag, dict) else flag
        raise UserError(f'could not write {path}: {no_room} ({free} MiB free there); free some space or '
                        f'give {given} on another disk (no existing file was changed)') from None
