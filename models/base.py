"""What the encoders share: checkpoint-key normalisation (the released ``.pth`` files' ``encoder.module.`` keys and
the reference's misspelled names load into our modules) and the multi-view encoder of CMC (one network per view,
Tian et al. 2019, Sec. 3.1)."""
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

# nn.DataParallel / DistributedDataParallel insert this path component into every key.
WRAPPER_KEY_COMPONENT = 'module'


def normalise_state_dict_keys(state_dict: Mapping[str, torch.Tensor],
                              renames: Optional[Dict[str, str]] = None) -> 'OrderedDict[str, torch.Tensor]':
    """Return a copy of ``state_dict`` whose keys have every ``module`` path component removed and
    every component found in ``renames`` (old name -> new name) replaced."""
    renamed = OrderedDict()
    for key, value in state_dict.items():
        new_key = _normalise_key(key, renames or {})
        if new_key in renamed:
            raise KeyError(f'state_dict keys collide after normalisation: "{key}" -> "{new_key}"')
        renamed[new_key] = value
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        renamed._metadata = OrderedDict((_normalise_key(k, renames or {}), v) for k, v in metadata.items())
    return renamed


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Remove the ``module.`` components that nn.DataParallel adds, wherever they sit in a key
    (``encoder.module.conv1.weight`` -> ``encoder.conv1.weight``)."""
    return normalise_state_dict_keys(state_dict)


def _normalise_key(key: str, renames: Dict[str, str]) -> str:
    parts = [renames.get(part, part) for part in key.split('.') if part != WRAPPER_KEY_COMPONENT]
    return '.'.join(parts)


class CheckpointCompatible(nn.Module):
    """Base for our top-level modules: ``load_state_dict`` accepts keys with ``module.`` anywhere and
    the reference's old component names (``legacy_key_renames``), at any nesting depth.

    Works inside torch's loader: the root module's ``_load_from_state_dict`` runs before its children
    are given their slice of the dict, so renaming the keys under our prefix here, in place in the
    loader's private copy, is what every descendant then sees. Mismatches still raise torch's usual
    error naming the missing / unexpected keys.
    """

    # old path component -> our name; subclasses extend it.
    legacy_key_renames: Dict[str, str] = {}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for key in [k for k in state_dict.keys() if k.startswith(prefix)]:
            new_key = prefix + _normalise_key(key[len(prefix):], self.legacy_key_renames)
            if new_key == key:
                continue
            if new_key in state_dict:
                error_msgs.append(f'state_dict has both "{key}" and "{new_key}" (the same parameter '
                                  f'with and without "{WRAPPER_KEY_COMPONENT}." or under its old name)')
                continue
            state_dict[new_key] = state_dict.pop(key)
        # Version metadata (e.g. BatchNorm's) is looked up by module path: rename it the same way.
        metadata = getattr(state_dict, '_metadata', None)
        if metadata is not None:
            for path in [p for p in metadata.keys() if p.startswith(prefix)]:
                new_path = prefix + _normalise_key(path[len(prefix):], self.legacy_key_renames)
                metadata.setdefault(new_path, metadata[path])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


# The reference's names of the L and ab networks ("L -> ab", "ab -> L"); kept for those views in any view set, so the
# released two-view checkpoints load by key. Any other view v is held under its name lowercased.
LEGACY_VIEW_MODULE_NAMES = {'l': 'l_to_ab', 'ab': 'ab_to_l'}
TWO_VIEW_NAMES = ('l', 'ab')
TWO_VIEW_CHANNELS = (1, 2)


def default_view_names(num_views: int) -> Tuple[str, ...]:
    """('l', 'ab') for the reference's two views, then 'view2', 'view3', ... for any further view."""
    return (TWO_VIEW_NAMES + tuple(f'view{i}' for i in range(2, num_views)))[:num_views]


def view_module_name(view: str) -> str:
    """Submodule name of a view's network: 'l' -> 'l_to_ab', 'ab' -> 'ab_to_l', else the name lowercased."""
    return LEGACY_VIEW_MODULE_NAMES.get(view.lower(), view.lower())


def reserved_view_name(view: str) -> bool:
    """Whether a view cannot have this name: its network becomes an attribute of the encoder (``view_module_name``),
    which must not be one the encoder already has (nn.Module's 'training', 'forward', ..., the encoder's 'split',
    'view_names', ...) nor the L and ab networks' names."""
    name = view_module_name(view)
    return view.lower() not in LEGACY_VIEW_MODULE_NAMES and (
        name in LEGACY_VIEW_MODULE_NAMES.values() or name in _ENCODER_ATTRIBUTES or name.startswith('_'))


class MultiViewEncoder(CheckpointCompatible):
    """CMC's encoder for M views (Tian et al. 2019, Sec. 3.1 and 3.3): one network f_theta_i per view, each with
    its view's input channels. The input's channels are split in view order, ``view_channels[i]`` for view i
    (B x sum(C_i) x H x W -> B x C_i x H x W each); ``forward(x, layer)`` returns the list of the views' features
    at ``layer`` of each network (``final_layer`` by default).

    Networks are submodules named by ``view_module_name`` (the L / ab ones keep the reference's ``l_to_ab`` /
    ``ab_to_l``), registered in view order.
    """

    def __init__(self, networks: Sequence[nn.Module], view_channels: Sequence[int], final_layer: int,
                 view_names: Optional[Sequence[str]] = None):
        super().__init__()
        view_names = tuple(view_names) if view_names is not None else default_view_names(len(networks))
        module_names = [view_module_name(view) for view in view_names]
        if not len(networks) == len(view_channels) == len(view_names):
            raise ValueError(f'{len(networks)} networks, {len(view_channels)} channel counts and '
                             f'{len(view_names)} view names: expected one of each per view')
        if len(set(module_names)) != len(module_names) or not all(n.isidentifier() for n in module_names):
            raise ValueError(f'view names must be distinct identifiers (case-insensitively), got {view_names}')
        taken = [view for view in view_names if reserved_view_name(view)]
        if taken:
            raise ValueError(f'view names {taken} are names the encoder already uses; rename those views')
        for module_name, network in zip(module_names, networks):
            self.add_module(module_name, network)
        self.view_names = view_names
        self.module_names = tuple(module_names)
        self.view_channels = tuple(view_channels)
        self.final_layer = final_layer

    @property
    def split(self):
        """The views' channel counts (the two-view encoder's historical attribute name)."""
        return self.view_channels

    def view_networks(self) -> List[nn.Module]:
        return [getattr(self, name) for name in self.module_names]

    def forward(self, x, layer: Optional[int] = None):
        layer = self.final_layer if layer is None else layer
        views = torch.split(x, list(self.view_channels), dim=1)  # B x C_i x H x W per view
        return [network(view, layer) for network, view in zip(self.view_networks(), views)]


class TwoViewEncoder(MultiViewEncoder):
    """CMC's two-view encoder (Tian et al. 2019, Sec. 3.1, "L -> ab" and "ab -> L" networks): the
    input's channels are split into the first view (L or Y, ``split[0]`` channels) and the second
    (ab or CbCr, ``split[1]``); each view goes through its own network. ``forward`` returns
    ``(feat_l, feat_ab)`` taken at ``layer`` of each network (``final_layer`` by default).
    """

    def __init__(self, l_to_ab: nn.Module, ab_to_l: nn.Module, final_layer: int, split=(1, 2)):
        super().__init__([l_to_ab, ab_to_l], split, final_layer, view_names=TWO_VIEW_NAMES)

    def forward(self, x, layer: Optional[int] = None):
        return tuple(super().forward(x, layer))


def build_view_encoder(networks: Sequence[nn.Module], view_channels: Sequence[int], final_layer: int,
                       view_names: Optional[Sequence[str]] = None) -> MultiViewEncoder:
    """The reference's TwoViewEncoder for views ('l', 'ab') (the default for two networks), else a
    MultiViewEncoder."""
    view_names = tuple(view_names) if view_names is not None else default_view_names(len(networks))
    if tuple(name.lower() for name in view_names) == TWO_VIEW_NAMES:
        return TwoViewEncoder(networks[0], networks[1], final_layer, split=view_channels)
    return MultiViewEncoder(networks, view_channels, final_layer, view_names)


# What an encoder instance already answers to, besides its view networks (see ``reserved_view_name``).
_ENCODER_ATTRIBUTES = frozenset(dir(nn.Module())) | frozenset(dir(TwoViewEncoder)) | frozenset(
    ('view_names', 'module_names', 'view_channels', 'final_layer'))
