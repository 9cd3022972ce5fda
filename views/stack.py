"""``ViewStack``: the loader's uint8 batch -> the named views, normalised and stacked on channels, on the device."""
import traceback

import torch
from torch import nn

from engine.errors import UserError, one_line
from views.device import DeviceView
from views.registry import View, get_view


def resolve_views(views, file_channels=None):
    """The View of each name: registered ones from the registry, a name in ``file_channels`` ({view: channels}, a
    checkpoint's) as a view read from files; anything else is a UserError."""
    file_channels = dict(file_channels or {})
    resolved = []
    for name in views:
        if name in file_channels:
            resolved.append(View(name, int(file_channels[name]), 'file', source='the checkpoint'))
        else:
            resolved.append(get_view(name))
    return resolved


class ViewStack(nn.Module):
    """uint8 batch -> the named views, normalised and concatenated on channels in ``views`` order, on the device.

    Input layout (what the data sets serve): RGB in channels 0..2 when any view is made from RGB (colour and computed
    views), then each view read from files (``file_channels``: {view: channels}) in ``views`` order. Each colour
    space is converted once per batch by a ``DeviceView`` (so its channels are normalised exactly as ``DeviceView``
    does) and each colour view keeps its channels of it; a computed view is its function of the RGB batch (checked
    on the first batch: shape, floating dtype, device and finite values; then cast to float32); a file view's uint8
    values map onto [-1, 1] ((x / 255 - 0.5) / 0.5). ``ViewStack(('L', 'ab'))`` gives exactly ``DeviceView('Lab')``'s
    tensor.
    """

    def __init__(self, views, file_channels=None):
        super().__init__()
        self.views = tuple(views)
        self.entries = resolve_views(self.views, file_channels)
        self.channels = [view.channels for view in self.entries]
        spaces = sorted({view.space for view in self.entries if view.kind == 'colour'})
        self.converters = nn.ModuleDict({space: DeviceView(space) for space in spaces})
        start, self.file_slices = (3 if any(view.from_rgb for view in self.entries) else 0), {}
        for view in self.entries:
            if view.kind == 'file':
                self.file_slices[view.name] = (start, start + view.channels)
                start += view.channels
        self.in_channels = start
        self._unchecked = {view.name for view in self.entries if view.kind == 'computed'}

    def forward(self, images):
        """images: B x in_channels x H x W uint8 -> B x sum(channels) x H x W float32."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.in_channels:
            raise UserError(f"views {' '.join(self.views)} expect B x {self.in_channels} x H x W uint8 images, got "
                            f"{images.dtype} {tuple(images.shape)}")
        rgb = images[:, :3]
        converted = {space: converter(rgb) for space, converter in self.converters.items()}
        parts = []
        for view in self.entries:
            if view.kind == 'colour':
                parts.append(converted[view.space][:, list(view.picked)])          # B x C_v x H x W
            elif view.kind == 'computed':
                parts.append(self._computed(view, rgb))
            else:
                start, stop = self.file_slices[view.name]
                parts.append(images[:, start:stop].float().div(255).sub(0.5).div(0.5))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _computed(self, view, rgb):
        """A computed view of the batch, in float32 also under autocast (as the colour views are). What the user's
        function returns is checked on every batch (its type, shape and device: no host sync), and its values on its
        first batch only (finite: one host sync, once); an exception in it is one line naming the view."""
        with torch.autocast(rgb.device.type, enabled=False):
            try:
                out = view.fn(rgb)
            except Exception as error:              # the user's code: one line with where in it, not a traceback
                raise UserError(f'view {view.name!r} ({view.source}) raised {type(error).__name__}: '
                                f'{one_line(error)}{place_in(error, view.source)}') from None
        check_computed(view, rgb, out, values=view.name in self._unchecked)
        self._unchecked.discard(view.name)
        return out.float()

    @property
    def non_finite_hint(self):
        """What a non-finite loss may come from besides training (the loop's stop line says it): these views' own
        functions, whose values are checked on their first batch only."""
        computed = [view for view in self.entries if view.kind == 'computed']
        return (f' Or a view of yours returned NaN or inf after its first batch: '
                f'{", ".join(f"{view.name} ({view.source})" for view in computed)}.' if computed else '')

    def extra_repr(self):
        return f"views={self.views}, channels={self.channels}"


def place_in(error, source):
    """' at FILE:LINE' of the innermost frame of ``error``'s traceback in the file ``source`` (else the innermost)."""
    frames = traceback.extract_tb(error.__traceback__)[1:]          # [0]: the call in _computed
    inside = [frame for frame in frames if frame.filename == source] or frames
    return f' at {inside[-1].filename}:{inside[-1].lineno}' if inside else ''


def check_computed(view, rgb, out, values=True):
    """A UserError naming the view unless ``out`` is a floating-point B x channels x H x W tensor on rgb's device
    (what ``fn(rgb)`` must return) and, with ``values``, finite."""
    batch, _, height, width = rgb.shape
    expected = (batch, view.channels, height, width)
    where = f'view {view.name!r} ({view.source}) returned'
    if not isinstance(out, torch.Tensor):
        raise UserError(f'{where} a {type(out).__name__}; its function must return a float tensor '
                        f'B x {view.channels} x H x W')
    if tuple(out.shape) != expected or not out.is_floating_point() or out.device != rgb.device:
        raise UserError(f'{where} {out.dtype} {tuple(out.shape)} on {out.device} for a uint8 {tuple(rgb.shape)} '
                        f'batch on {rgb.device}; expected a float tensor {expected} on {rgb.device} (register_view\'s '
                        f'channels is {view.channels})')
    bad = (~torch.isfinite(out)).sum().item() if values else 0
    if bad:
        raise UserError(f'{where} {bad} non-finite values (NaN or inf) of {out.numel()} on its first batch; its '
                        f'function must return finite values')
