"""Linear evaluation heads (Zhang et al. 2016 "Colorful Image Colorization" protocol, as used by CMC,
Tian et al. 2019, Sec. 4.1-4.2): a frozen encoder's features at one layer, both views concatenated on
the channel axis, pooled to a fixed grid, flattened, then one Linear layer."""
from typing import Optional

from torch import nn

from .base import CheckpointCompatible

POOLS = {'max': ('MaxPool', nn.AdaptiveMaxPool2d), 'avg': ('AvgPool', nn.AdaptiveAvgPool2d)}

# layer -> (two-view channels, pooled grid size); grid None: already flat (no pooling).
ALEXNET_PROBE_LAYERS = {1: (96, 10), 2: (256, 6), 3: (384, 5), 4: (384, 5), 5: (256, 6),
                        6: (4096, None), 7: (4096, None)}
# layer -> (channels at multiplier 1, grid size). Layer 5 is 7 x 7 at 224 px (pooled to 7 so other
# sizes work), layer 6 is the globally pooled vector.
RESNET_PROBE_LAYERS = {1: (128, 8), 2: (256, 6), 3: (512, 4), 4: (1024, 3), 5: (2048, 7), 6: (2048, None)}


class LinearProbe(CheckpointCompatible):
    """Adaptive (max|avg) pool to ``grid`` x ``grid`` (skipped when ``grid`` is None), flatten, Linear
    to ``n_label`` (weight normal(0, 0.01), bias 0), all under ``self.classifier``.

    The reference named the Linear ``LiniearClassifier`` (sic); its checkpoints load into ours.
    """
    legacy_key_renames = {'LiniearClassifier': 'LinearClassifier'}

    def __init__(self, in_channels: int, grid: Optional[int], n_label: int, pool_type: str):
        super().__init__()
        if pool_type not in POOLS:
            raise ValueError(f'pool_type must be one of {sorted(POOLS)}, got "{pool_type}"')
        self.classifier = nn.Sequential()
        if grid is not None:
            pool_name, pool_class = POOLS[pool_type]
            self.classifier.add_module(pool_name, pool_class(grid))
        self.classifier.add_module('Flatten', nn.Flatten())
        self.classifier.add_module('LinearClassifier', nn.Linear(in_channels * (grid or 1) ** 2, n_label))
        nn.init.normal_(self.classifier.LinearClassifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.LinearClassifier.bias)

    def forward(self, x):
        return self.classifier(x)  # B x n_label


def _probe_entry(table, layer, model_kind):
    if layer not in table:
        raise ValueError(f'{model_kind} linear probe supports layers {sorted(table)}, got {layer}')
    return table[layer]


class LinearClassifierAlexNet(LinearProbe):
    """Linear probe on CMC AlexNet features: layers 1..4 pooled to 10/6/5/5 (96/256/384/384 channels),
    layer 5 256 x 6 x 6, layers 6/7 the 4096-d fc6/fc7 of both views."""

    def __init__(self, layer: int = 5, n_label: int = 1000, pool_type: str = 'max'):
        channels, grid = _probe_entry(ALEXNET_PROBE_LAYERS, layer, 'AlexNet')
        super().__init__(channels, grid, n_label, pool_type)


class LinearClassifierResNet(LinearProbe):
    """Linear probe on ResNet features: layers 1..4 pooled to 8/6/4/3, layer 5 7 x 7, layer 6 flat;
    channels 128/256/512/1024/2048/2048 x ``width`` (v1 -> 1, v2 -> 2, v3 -> 4, resnet50xN -> N), or
    ``in_channels`` where that table does not hold (ResNet-18; layer 1 of a single-view ResNet-50)."""

    def __init__(self, layer: int = 6, n_label: int = 1000, pool_type: str = 'avg', width: int = 1,
                 in_channels: Optional[int] = None):
        channels, grid = _probe_entry(RESNET_PROBE_LAYERS, layer, 'ResNet')
        super().__init__(in_channels if in_channels is not None else channels * width, grid, n_label,
                         pool_type)
