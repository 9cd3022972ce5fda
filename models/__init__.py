"""Encoders and linear heads of CMC (Tian, Krishnan & Isola, "Contrastive Multiview Coding", 2019),
InsDis (Wu et al., 2018) and MoCo (He et al., 2019).

Shared pieces live in ``models.base`` (re-exported here):
  * checkpoint-key normalisation, so the released ``.pth`` files, whose keys read
    ``encoder.module.l_to_ab...`` because the reference wrapped ``encoder`` in nn.DataParallel,
    load into our unwrapped models, and so do the keys of the reference's misspelled modules;
  * the multi-view encoder of CMC (one network per view, Sections 3.1 and 3.3 of the paper), of which the
    reference's two-view encoder is the special case.
"""
from typing import Optional, Sequence

from torch import nn

from .base import (CheckpointCompatible, LEGACY_VIEW_MODULE_NAMES, MultiViewEncoder, TWO_VIEW_CHANNELS,  # noqa: F401
                   TWO_VIEW_NAMES, TwoViewEncoder, WRAPPER_KEY_COMPONENT, build_view_encoder, default_view_names,
                   normalise_state_dict_keys, strip_module_prefix, view_module_name)
from .alexnet import HalfAlexNet, MyAlexNetCMC
from .resnet import (BasicBlock, Bottleneck, InsResNet, InsResNet18, InsResNet50,
                     MyResNetsCMC, ResNet, RESNET_DEPTHS, CMC_RESNET_WIDTHS)
from .LinearModel import LinearClassifierAlexNet, LinearClassifierResNet
from .predictive import CrossViewPredictor, ViewDecoder

CMC_MODEL_NAMES = ('alexnet',) + tuple(f'resnet{d}{v}' for d in (18, 50, 101) for v in ('v1', 'v2', 'v3'))
# resnet18 and resnet18x0.5 are ours (the reference had ResNet-50s only): the demo's small RGB encoders; x0.5 is the
# width of one CMC resnet18v1 view, about a third of resnet18's multiply-adds at 32 px (the stem stays 64 wide).
INS_MODEL_NAMES = ('resnet50', 'resnet50x2', 'resnet50x4', 'resnet18', 'resnet18x0.5')


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
    """InsDis / MoCo encoder by its ``--model`` name: resnet50, resnet50x2, resnet50x4 (and resnet18, resnet18x0.5)."""
    if name not in INS_MODEL_NAMES:
        raise ValueError(f'unknown InsDis/MoCo model "{name}"; choose from {", ".join(INS_MODEL_NAMES)}')
    constructor = InsResNet18 if name.startswith('resnet18') else InsResNet50
    return constructor(width=model_width(name), feat_dim=feat_dim)


def model_width(name: str) -> float:
    """The width multiplier a --model name says: CMC resnet v1 0.5, v2 1, v3 2; InsDis / MoCo xN N (resnet18x0.5:
    0.5), none 1; AlexNet 0.5 (the half-width AlexNet of each view)."""
    if name == 'alexnet':
        return 0.5
    if name in CMC_MODEL_NAMES:
        return CMC_RESNET_WIDTHS[name[-2:]]
    return float(name.partition('x')[2] or 1)


def linear_probe_multiplier(name: str) -> int:
    """The reference's channel multiplier of the ResNet linear head for a model name
    (v1 -> 1, v2 -> 2, v3 -> 4; resnet50 -> 1, x2 -> 2, x4 -> 4)."""
    if name.startswith('resnet') and name[-2:] in ('v1', 'v2', 'v3'):
        return {'v1': 1, 'v2': 2, 'v3': 4}[name[-2:]]
    if name in ('resnet50', 'resnet18', 'resnet18x0.5'):  # ResNet-18s: the probe is given its channels
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
    'CMC_MODEL_NAMES', 'INS_MODEL_NAMES', 'model_width',
    'build_cmc_model', 'build_ins_model', 'linear_probe_multiplier',
]
