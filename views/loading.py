"""``--view_module``: import the user's module of views (which calls ``views.register_view`` at its top level), and
find it again for a checkpoint that was trained with it (``LinearProbing.py``, ``--resume``)."""
import importlib.util
import os
import sys
import traceback

from engine.errors import UserError, one_line
from views.registry import view_names

_LOADED = {}                    # absolute path -> module: each file is imported once per process


class ViewModuleNotFound(UserError):
    """--view_module names no file or importable module."""


def load_view_module(value):
    """Import the module ``value`` names: a ``.py`` path, or a module name importable from the working directory.
    Returns its absolute path. A missing module, one that fails to import, or one that registers no view is a
    UserError; importing the same file again does nothing."""
    path = _module_file(value)
    if path in _LOADED:
        return path
    before = set(view_names('computed'))
    name = 'view_module_' + ''.join(c if c.isalnum() else '_' for c in os.path.splitext(path)[0].lstrip(os.sep))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if os.path.dirname(path) not in sys.path:        # as for a script: the modules beside it import
        sys.path.append(os.path.dirname(path))
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as e:                          # the user's code: any error it raises is theirs to see, in one line
        frames = [frame for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        where = f' (line {frames[-1].lineno})' if frames else ''
        raise UserError(f'--view_module {value}: importing {path} failed{where}: {type(e).__name__}: '
                        f'{one_line(e)}') from None
    _LOADED[path] = module
    if not set(view_names('computed')) - before:
        raise UserError(f'--view_module {value}: {path} registers no view; call views.register_view(name, channels, '
                        f'fn) at its top level')
    return path


def _module_file(value):
    """The absolute path of the file ``value`` names (a .py path, or a module name found from the working
    directory), or a UserError saying what to pass."""
    value = os.fspath(value)
    if value.endswith('.py') or os.sep in value or os.path.isfile(value):
        if not os.path.isfile(value):
            raise ViewModuleNotFound(f'--view_module {value}: no such file (give the .py file that registers your '
                                     f'views, or a module name importable from {os.getcwd()})')
        return os.path.abspath(value)
    sys.path.insert(0, os.getcwd())
    try:
        spec = importlib.util.find_spec(value)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path.pop(0)
    if spec is not None and not (spec.origin and os.path.isfile(spec.origin)):
        raise UserError(f'--view_module {value}: {value} is a built-in module, not a file that registers views; give '
                        f'the .py file of yours')
    if spec is None:
        raise ViewModuleNotFound(f'--view_module {value}: no module of that name is importable from {os.getcwd()}; '
                                 f'give the .py file that registers your views')
    return os.path.abspath(spec.origin)


def restore_view_module(saved, override, where):
    """Import the view module a checkpoint was trained with: ``override`` (--view_module) when given, else the
    checkpoint's absolute path (``saved['view_module_path']``) if that file exists, else its value as given
    (``saved['view_module']``) from the working directory. Returns (value, absolute path), or (None, None) when the
    run had no view module; a module found nowhere is a UserError saying what to pass."""
    if override:
        return override, load_view_module(override)
    given, absolute = saved.get('view_module'), saved.get('view_module_path')
    if not given and not absolute:
        return None, None
    if absolute and os.path.isfile(absolute):
        return given or absolute, load_view_module(absolute)
    if given:
        try:
            return given, load_view_module(given)
        except ViewModuleNotFound:        # a module that is found but fails to import is reported as it is
            pass
    raise UserError(f'{where} was trained with --view_module {given or absolute}'
                    f'{f" ({absolute})" if given and absolute else ""}, which is not found now; pass --view_module '
                    f'PATH (the file that registers its views)')
