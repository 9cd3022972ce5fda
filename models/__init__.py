"""Encoders and linear heads of CMC (Tian, Krishnan & Isola, "Contrastive Multiview Coding", 2019),
InsDis (Wu et al., 2018) and MoCo (He et al., 2019).

Shared pieces live here, above the submodule imports (the submodules import them from this package):
  * checkpoint-key normalisation, so the released ``.pth`` files, whose keys read
    ``encoder.module.l_to_ab...`` because the reference wrapped ``encoder`` in nn.DataParallel,
    load into our unwrapped models, and so do the keys of the reference's misspelled modules;
  * the multi-view encoder of CMC (one network per view, Sections 3.1 and 3.3 of the paper), of which the
    reference's two-view encoder is the special case.
"""
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


from .alexnet import HalfAlexNet, MyAlexNetCMC  # noqa: E402
from .resnet import (BasicBlock, Bottleneck, InsResNet, InsResNet18, InsResNet50,  # noqa: E402
                     MyResNetsCMC, ResNet, RESNET_DEPTHS, CMC_RESNET_WIDTHS)
from .LinearModel import LinearClassifierAlexNet, LinearClassifierResNet  # noqa: E402
from .predictive import CrossViewPredictor, ViewDecoder  # noqa: E402

CMC_MODEL_NAMES = ('alexnet',) + tuple(f'resnet{d}{v}' for d in (18, 50, 101) for v in ('v1', 'v2', 'v3'))
INS_MODEL_NAMES = ('resnet50', 'resnet50x2', 'resnet50x4', 'resnet18')


def build_cmc_model(name: str, feat_dim: int = 128, view_channels: Optional[Sequence[int]] = None,
                    view_names: Optional[Sequence[str]] = None) -> nn.Module:
    """CMC encoder by its ``--model`` name: 'alexnet' or resnet{18,50,101}v{1,2,3}, one network of that
    architecture per view. ``view_channels`` (input channels per view) None: the reference's two views (1, 2);
    ``view_names`` None: 'l', 'ab', 'view2', ... (see ``MultiViewEncoder``). The defaults build exactly the
    reference's two-view model (same keys, same init draws in the same order)."""
    view_channels = TWO_VIEW_CHANNELS if view_channels is None else tuple(view_channels)
    if name == 'alexnet':
        return MyAlexNetCMC(feat_dim=feat_dim, view_channels=view_channels, view_names=view_names)
    if name in CMC_MODEL_NAMES:
        return MyResNetsCMC(name, feat_dim=feat_dim, view_channels=view_channels, view_names=view_names)
    raise ValueError(f'unknown CMC model "{name}"; choose from {", ".join(CMC_MODEL_NAMES)}')


def build_ins_model(name: str, feat_dim: int = 128) -> nn.Module:
    """InsDis / MoCo encoder by its ``--model`` name: resnet50, resnet50x2, resnet50x4 (and resnet18)."""
    if name not in INS_MODEL_NAMES:
        raise ValueError(f'unknown InsDis/MoCo model "{name}"; choose from {", ".join(INS_MODEL_NAMES)}')
    constructor = InsResNet18 if name == 'resnet18' else InsResNet50
    width = int(name.partition('x')[2] or 1)
    return constructor(width=width, feat_dim=feat_dim)


def linear_probe_multiplier(name: str) -> int:
    """The reference's channel multiplier of the ResNet linear head for a model name
    (v1 -> 1, v2 -> 2, v3 -> 4; resnet50 -> 1, x2 -> 2, x4 -> 4)."""
    if name.startswith('resnet') and name[-2:] in ('v1', 'v2', 'v3'):
        return {'v1': 1, 'v2': 2, 'v3': 4}[name[-2:]]
    if name in ('resnet50', 'resnet18'):
        return 1
    if name in ('resnet50x2', 'resnet50x4'):
        return int(name[-1])
    raise ValueError(f'no linear-probe multiplier for model "{name}"')


__all__ = [
    'normalise_state_dict_keys', 'strip_module_prefix', 'CheckpointCompatible', 'MultiViewEncoder', 'TwoViewEncoder',
    'build_view_encoder', 'default_view_names', 'view_module_name',
    'HalfAlexNet', 'MyAlexNetCMC', 'BasicBlock', 'Bottleneck', 'ResNet', 'RESNET_DEPTHS',
    'CMC_RESNET_WIDTHS', 'MyResNetsCMC', 'InsResNet', 'InsResNet50', 'InsResNet18',
    'LinearClassifierAlexNet', 'LinearClassifierResNet', 'CrossViewPredictor', 'ViewDecoder',
    'CMC_MODEL_NAMES', 'INS_MODEL_NAMES',
    'build_cmc_model', 'build_ins_model', 'linear_probe_multiplier',
]
