"""Encoders and linear heads of CMC (Tian, Krishnan & Isola, "Contrastive Multiview Coding", 2019),
InsDis (Wu et al., 2018) and MoCo (He et al., 2019).

Shared pieces live here, above the submodule imports (the submodules import them from this package):
  * checkpoint-key normalisation, so the released ``.pth`` files, whose keys read
    ``encoder.module.l_to_ab...`` because the reference wrapped ``encoder`` in nn.DataParallel,
    load into our unwrapped models, and so do the keys of the reference's misspelled modules;
  * the two-view encoder of CMC (one network per view, Section 3.1 of the paper).
"""
from collections import OrderedDict
from typing import Dict, Mapping, Optional

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


class TwoViewEncoder(CheckpointCompatible):
    """CMC's two-view encoder (Tian et al. 2019, Sec. 3.1, "L -> ab" and "ab -> L" networks): the
    input's channels are split into the first view (L or Y, ``split[0]`` channels) and the second
    (ab or CbCr, ``split[1]``); each view goes through its own network. ``forward`` returns
    ``(feat_l, feat_ab)`` taken at ``layer`` of each network (``final_layer`` by default).
    """

    def __init__(self, l_to_ab: nn.Module, ab_to_l: nn.Module, final_layer: int, split=(1, 2)):
        super().__init__()
        self.l_to_ab = l_to_ab
        self.ab_to_l = ab_to_l
        self.final_layer = final_layer
        self.split = tuple(split)

    def forward(self, x, layer: Optional[int] = None):
        layer = self.final_layer if layer is None else layer
        l, ab = torch.split(x, list(self.split), dim=1)  # B x 1 x H x W, B x 2 x H x W
        return self.l_to_ab(l, layer), self.ab_to_l(ab, layer)


from .alexnet import HalfAlexNet, MyAlexNetCMC  # noqa: E402
from .resnet import (BasicBlock, Bottleneck, InsResNet, InsResNet18, InsResNet50,  # noqa: E402
                     MyResNetsCMC, ResNet, RESNET_DEPTHS, CMC_RESNET_WIDTHS)
from .LinearModel import LinearClassifierAlexNet, LinearClassifierResNet  # noqa: E402

CMC_MODEL_NAMES = ('alexnet',) + tuple(f'resnet{d}{v}' for d in (18, 50, 101) for v in ('v1', 'v2', 'v3'))
INS_MODEL_NAMES = ('resnet50', 'resnet50x2', 'resnet50x4', 'resnet18')


def build_cmc_model(name: str, feat_dim: int = 128) -> nn.Module:
    """CMC encoder by its ``--model`` name: 'alexnet' or resnet{18,50,101}v{1,2,3}."""
    if name == 'alexnet':
        return MyAlexNetCMC(feat_dim=feat_dim)
    if name in CMC_MODEL_NAMES:
        return MyResNetsCMC(name, feat_dim=feat_dim)
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
    'normalise_state_dict_keys', 'strip_module_prefix', 'CheckpointCompatible', 'TwoViewEncoder',
    'HalfAlexNet', 'MyAlexNetCMC', 'BasicBlock', 'Bottleneck', 'ResNet', 'RESNET_DEPTHS',
    'CMC_RESNET_WIDTHS', 'MyResNetsCMC', 'InsResNet', 'InsResNet50', 'InsResNet18',
    'LinearClassifierAlexNet', 'LinearClassifierResNet', 'CMC_MODEL_NAMES', 'INS_MODEL_NAMES',
    'build_cmc_model', 'build_ins_model', 'linear_probe_multiplier',
]
