"""An encoder as torchvision ResNet state dicts (``scripts/export.py --to torchvision``), which timm's ResNets load too.

Our ``models.ResNet`` has torchvision's module names (conv1, bn1, layer1..4 of BasicBlock / Bottleneck with conv1..3,
bn1..3, downsample.0/.1) and its stride on the 3x3 conv (torchvision's "ResNet v1.5"), so at width 1 its state dict
is torchvision's, key for key, but for the head: ours is the projection ``fc`` (Linear C -> feat_dim, then L2
normalisation), dropped here; torchvision's ``fc`` (Linear C -> 1000 ImageNet classes) is written as zeros, UNTRAINED,
only so that ``load_state_dict(strict=True)`` works. Replace it (``m.fc = torch.nn.Identity()``: C-d features, C =
2048 for ResNet-50, ``PretrainedEncoder.features`` at layer 6) or train it.

Which encoders: ResNets at width 1 of a depth torchvision has: InsDis / MoCo resnet18 and resnet50, CMC resnet18v2,
resnet50v2 and resnet101v2 (one state dict per view; ``conv1`` takes the view's channels, 1 for L, 2 for ab).
The others (CMC v1 and v3, widths 0.5 and 2; resnet50x2 / x4; resnet18x0.5; AlexNet) are a UserError: use
``--to safetensors``.
"""
import re
from collections.abc import Sequence

import torch
from torch import nn

from engine.errors import UserError

IMAGENET_CLASSES = 1000
VIEW_PLACEHOLDER = '{view}'
HEAD_PREFIX = 'fc.'          # our projection head's keys in a view's ResNet: fc.weight (feat_dim x C), fc.bias
TORCHVISION_HOLDS = ('ResNet-18, -50 and -101 at width 1 (CMC resnet18v2, resnet50v2, resnet101v2; InsDis / MoCo '
                     'resnet18, resnet50)')


def resnet_architecture(info, target, depths=(18, 50, 101), holds=TORCHVISION_HOLDS):
    """torchvision's name of the encoder's ResNet ('resnet50'), or, when it is no width-1 ResNet of one of ``depths``,
    a UserError naming ``target`` (the --to value) and what it ``holds``, pointing to --to safetensors."""
    model, width = info['model'], info['width']
    found = re.fullmatch(r'resnet(\d+)(v\d|x[\d.]+)?', model)
    if found is None or width != 1 or int(found.group(1)) not in depths:
        what = 'AlexNet' if found is None else f'ResNet-{found.group(1)} at width {width:g}'
        article = 'an' if info['method'][0] in 'aeiou' else 'a'
        raise UserError(f'--to {target} cannot hold --model {model} ({article} {info["method"]} {what}): it holds '
                        f'{holds} only; export it with --to safetensors, which holds every architecture')
    return f'resnet{found.group(1)}'


def torchvision_state_dict(network: nn.Module, classes: int = IMAGENET_CLASSES) -> dict[str, torch.Tensor]:
    """A view's ``models.ResNet`` (width 1) -> torchvision's ResNet state dict: its tensors on the CPU, the projection
    head dropped, ``fc`` zeros (classes x C weight, classes bias: untrained)."""
    state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()
             if not key.startswith(HEAD_PREFIX)}
    return {**state, **zero_classifier(network.fc.in_features, classes)}


def zero_classifier(features: int, classes: int = IMAGENET_CLASSES) -> dict[str, torch.Tensor]:
    """torchvision's ``fc`` as zeros: {'fc.weight': classes x features, 'fc.bias': classes}, float32."""
    return {'fc.weight': torch.zeros(classes, features), 'fc.bias': torch.zeros(classes)}


def torchvision_state_dicts(encoder) -> dict[str, dict[str, torch.Tensor]]:
    """{view: torchvision state dict} of a ``PretrainedEncoder`` (one view, 'RGB', for InsDis / MoCo); a UserError
    for an architecture torchvision lacks."""
    resnet_architecture(encoder.info, 'torchvision')
    return {view: torchvision_state_dict(network) for view, network in encoder.view_networks()}


def head_note(encoder) -> str:
    """The line that says which keys the ResNet exports drop: the projection head."""
    fc = encoder.view_networks()[0][1].fc
    return (f'dropped: {HEAD_PREFIX}weight, {HEAD_PREFIX}bias (the projection head: Linear {fc.in_features} -> '
            f'{fc.out_features}, then L2 normalisation)')


def torchvision_notes(encoder) -> tuple[dict[str, str], list[str]]:
    """({view: what its file holds}, the lines to print after: what was dropped, fc zeros and untrained)."""
    info, features = encoder.info, encoder.view_networks()[0][1].fc.in_features
    holds = {view: f'torchvision {resnet_architecture(info, "torchvision")} state dict ({info["method"]} '
                   f'{info["model"]}, view {view}: conv1 on {channels} channel(s))'
             for view, channels in zip(info['views'], info['view_channels'])}
    untrained = (f'{HEAD_PREFIX}weight, {HEAD_PREFIX}bias are zeros: torchvision\'s {IMAGENET_CLASSES}-class '
                 f'classifier, UNTRAINED (there so that load_state_dict(strict=True) works); m.fc = '
                 f'torch.nn.Identity() gives the {features}-d features (layer 6)')
    return holds, [head_note(encoder), untrained]


def output_paths(out: str, views: Sequence[str]) -> dict[str, str]:
    """{view: file} of ``--out``: a path, with ``{view}`` replaced by each view's name. One view (InsDis / MoCo:
    'RGB') needs no ``{view}``; several (CMC) do, else a UserError."""
    if len(views) > 1 and VIEW_PLACEHOLDER not in out:
        example = re.sub(r'(\.\w+)?$', r'_{view}\g<1>', out, count=1)
        raise UserError(f'--out {out}: this encoder has {len(views)} views ({", ".join(views)}), one file each; put '
                        f'{VIEW_PLACEHOLDER} in --out (e.g. --out {example})')
    return {view: out.replace(VIEW_PLACEHOLDER, view) for view in views}
