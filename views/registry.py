"""The registry of views: every view CMC can contrast, by name (Tian et al. 2019: "what is a view" is the user's).

A view (``View``) is a name, its channel count, its kind, whether it carries colour, and a function that maps the uint8
RGB batch on the device (B x 3 x H x W) to the view's normalised float tensor (B x C x H x W). Kinds:

- ``colour``: built in, a channel group of a colour space (L, ab, a, b of Lab; Y, CbCr, Cb, Cr of YCbCr; H, S, V of
  HSV), converted as ``views.device.DeviceView`` does;
- ``computed``: registered by the user's module (``--view_module``, ``views.load_view_module``) with
  ``register_view(name, channels, fn, chroma=False)``;
- ``file``: read from a view folder of ``--dataset multiview_folder`` (depth, normals...), registered by the data
  set; it has no function (the loader reads its pixels).

Names are compared case-insensitively (a view's memory bank and encoder are stored under its name lowercased).
"""
from dataclasses import dataclass
from typing import Callable, Optional

from engine.errors import UserError
from models.base import reserved_view_name
from views.device import DeviceView

KINDS = ('colour', 'computed', 'file')
RGB_FOLDER = 'rgb'              # the view folder that holds the RGB images the colour and computed views are made of


@dataclass(frozen=True)
class View:
    """One named view. ``fn(rgb)``: uint8 B x 3 x H x W on the device -> float B x ``channels`` x H x W, normalised
    (None for a file view). ``chroma``: the view is constant on a grayscale image (such data is refused for it).
    ``space`` / ``picked``: a colour view's colour space and the channels of it that it keeps. ``source``: who
    registered it (a module's file, a data set's folder)."""
    name: str
    channels: int
    kind: str
    chroma: bool = False
    fn: Optional[Callable] = None
    space: Optional[str] = None
    picked: tuple = ()
    source: str = 'built in'

    @property
    def from_rgb(self):
        """Made from the RGB image (colour and computed views), not read from a file of its own."""
        return self.kind != 'file'


_VIEWS = {}                     # name -> View, in registration order


def _colour_view_fn(space, picked):
    """A colour view as a function of the RGB batch (for use on its own: ``ViewStack`` converts each colour space once
    per batch for all the views that share it)."""
    def colour_view(rgb):
        return DeviceView(space).to(rgb.device)(rgb)[:, list(picked)]      # B x len(picked) x H x W
    colour_view.__qualname__ = f'colour_view[{space}{list(picked)}]'
    return colour_view


def _add(view):
    _VIEWS[view.name] = view
    return view


def _clash(name):
    """The registered view whose name equals ``name`` case-insensitively, or None."""
    return next((v for n, v in _VIEWS.items() if n.lower() == name.lower()), None)


def check_view_name(name, what):
    """A UserError unless ``name`` can name a view: an identifier, not "rgb" (the RGB images' folder), and not a name
    the encoder already answers to ('training', 'forward', 'split', ...: the view's network becomes its attribute)."""
    if not isinstance(name, str) or not name.isidentifier() or name.lower() == RGB_FOLDER:
        raise UserError(f'{what} {name!r} cannot name a view: use letters, digits and _ (not starting with a digit; '
                        f'"{RGB_FOLDER}" is the folder of the RGB images)')
    if reserved_view_name(name):
        raise UserError(f'{what} {name!r} cannot name a view: the encoder already has an attribute {name.lower()!r} '
                        f'(the view\'s network would be stored under it); choose another name')


def register_view(name, channels, fn, chroma=False):
    """Register a computed view: ``fn(rgb)`` maps uint8 B x 3 x H x W RGB on the device to B x ``channels`` x H x W
    float, normalised (roughly zero-mean, unit-scale, as the colour views are). ``chroma``: the view is constant on
    grayscale images (a grayscale data set is then refused for it). Call it at the top level of a module given to
    ``--view_module``. Returns the View.

    A name that clashes with another registered view (case-insensitively) is a UserError; registering the same
    function again (the module imported twice) replaces the entry."""
    check_view_name(name, 'register_view:')
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise UserError(f'register_view({name!r}, ...): channels must be a positive int, got {channels!r}')
    if not callable(fn):
        raise UserError(f'register_view({name!r}, ...): fn must be a function of the uint8 RGB batch, got {fn!r}')
    code = getattr(fn, '__code__', None)
    source = code.co_filename if code is not None else (getattr(fn, '__module__', None) or '?')     # the user's file
    old = _clash(name)
    same_fn = old is not None and old.fn is not None and (getattr(old.fn, '__qualname__', None), old.source) == \
        (getattr(fn, '__qualname__', None), source)
    if old is not None and not same_fn:
        raise UserError(f'register_view({name!r}, ...): the name is taken by the {old.kind} view {old.name!r} '
                        f'({old.source}); choose another name')
    if old is not None:
        del _VIEWS[old.name]
    return _add(View(name, channels, 'computed', bool(chroma), fn, source=source))


def register_file_view(name, channels, where):
    """Register a view read from the view folder ``name`` of a multiview data set at ``where`` (its images have
    ``channels`` channels). A registered colour or computed view of that name is a UserError: which would it be?"""
    check_view_name(name, 'view folder')
    old = _clash(name)
    if old is not None and old.kind != 'file':
        raise UserError(f'{where} has a view folder {name!r}, but {old.name!r} is also a registered {old.kind} view '
                        f'({old.source}); rename the folder or the view')
    if old is not None:
        del _VIEWS[old.name]
    return _add(View(name, int(channels), 'file', source=where))


def find_view(name):
    """The registered View of that exact name, or None."""
    return _VIEWS.get(name)


def made_from_rgb(name):
    """Whether ``name`` is a registered view made from the RGB image (a colour or computed view); otherwise it is read
    from files (a view folder), or unknown."""
    view = find_view(name)
    return view is not None and view.from_rgb


def find_view_ignoring_case(name):
    """The registered View whose name equals ``name`` case-insensitively, or None."""
    return _clash(name)


def get_view(name):
    """The registered View of that name; an unknown name is a UserError listing what there is."""
    view = find_view(name)
    if view is None:
        raise UserError(f'unknown view {name!r}: the registered views are {" ".join(view_names())}; give your own '
                        f'with --view_module, or views read from files with --dataset multiview_folder')
    return view


def view_names(*kinds):
    """The registered views' names (of the given kinds; all by default), in registration order."""
    return [name for name, view in _VIEWS.items() if not kinds or view.kind in kinds]


# Built in: CMC's views (Sec. 4: L | ab, Y | CbCr) and any channel group of Lab, YCbCr or HSV.
for _name, _space, _picked, _chroma in (('L', 'Lab', (0,), False), ('ab', 'Lab', (1, 2), True),
                                        ('a', 'Lab', (1,), True), ('b', 'Lab', (2,), True),
                                        ('Y', 'YCbCr', (0,), False), ('CbCr', 'YCbCr', (1, 2), True),
                                        ('Cb', 'YCbCr', (1,), True), ('Cr', 'YCbCr', (2,), True),
                                        ('H', 'HSV', (0,), True), ('S', 'HSV', (1,), True), ('V', 'HSV', (2,), False)):
    _add(View(_name, len(_picked), 'colour', _chroma, _colour_view_fn(_space, _picked), _space, _picked))

COLOUR_VIEWS = {name: (view.space, view.picked) for name, view in _VIEWS.items()}   # name -> (space, channels)
CHROMA_VIEWS = tuple(name for name, view in _VIEWS.items() if view.chroma)
