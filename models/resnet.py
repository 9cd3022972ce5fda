"""ResNets (He et al. 2016, "Deep Residual Learning") as used by CMC (Tian et al. 2019: one network per
view at width 0.5 / 1 / 2) and by InsDis / MoCo (one RGB ResNet-50 at width 1 / 2 / 4; ours: ResNet-18 at width 1
or 0.5)."""
import math

import torch.nn.functional as F
from torch import nn

from .base import TWO_VIEW_CHANNELS, CheckpointCompatible, build_view_encoder

STEM_CHANNELS = 64  # the stem is 64 wide whatever the width multiplier


class BasicBlock(nn.Module):
    """Two 3x3 convs with identity shortcut (He et al. 2016, Fig. 2 / Table 1, ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carrying the stride) -> 1x1 (x4 channels) with shortcut (He et al. 2016, Fig. 5,
    ResNet-50/101; the stride on the 3x3 conv, as in the reference)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# depth -> (block, blocks per stage), He et al. 2016, Table 1.
RESNET_DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
# CMC's model-name suffix -> per-view width (Tian et al. 2019, Sec. 4.2).
CMC_RESNET_WIDTHS = {'v1': 0.5, 'v2': 1.0, 'v3': 2.0}


class ResNet(CheckpointCompatible):
    """ResNet of ``depth`` with stage widths int(64 * width) x (1, 2, 4, 8) (x block expansion), a 64-wide
    7x7/2 stem on ``in_channel`` inputs, global average pooling, ``fc`` to ``low_dim`` and L2
    normalisation (the embedding of CMC / InsDis). Conv init normal(0, sqrt(2 / (k*k*out))) (He et al.
    2015), BatchNorm weight 1, bias 0.

    ``forward(x, layer=7)``: layer <= 0 the input; 1 after the stem's max-pool; 2..5 after
    layer1..layer4; 6 the pooled, flattened features; 7 the unit-norm embedding.
    """

    projection_head = 'fc'      # --online_probe reads its input: the pooled features, forward(x, 6)

    def __init__(self, depth: int = 50, width: float = 1.0, in_channel: int = 3, low_dim: int = 128):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f'unsupported ResNet depth {depth}; choose from {sorted(RESNET_DEPTHS)}')
        block, blocks_per_stage = RESNET_DEPTHS[depth]
        self.conv1 = nn.Conv2d(in_channel, STEM_CHANNELS, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        base = int(STEM_CHANNELS * width)
        inplanes = STEM_CHANNELS
        for stage, num_blocks in enumerate(blocks_per_stage):
            planes = base * 2 ** stage
            stage_layer, inplanes = self._make_stage(block, inplanes, planes, num_blocks,
                                                     stride=1 if stage == 0 else 2)
            self.add_module(f'layer{stage + 1}', stage_layer)
        # The reference's AvgPool2d(7) equals this at 224 px; adaptive makes other sizes work.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, low_dim)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _make_stage(block, inplanes: int, planes: int, num_blocks: int, stride: int):
        """One stage; the first block gets a projection shortcut when its shape changes."""
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != out_channels:
            downsample = nn.Sequential(nn.Conv2d(inplanes, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        blocks = [block(inplanes, planes, stride, downsample)]
        blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks), out_channels

    def forward(self, x, layer: int = 7):
        if layer <= 0:
            return x
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B x 64 x H/4 x W/4
        if layer == 1:
            return x
        for index, stage in enumerate([self.layer1, self.layer2, self.layer3, self.layer4], 2):
            x = stage(x)
            if layer == index:
                return x
        x = self.avgpool(x).flatten(1)  # B x C
        if layer == 6:
            return x
        return F.normalize(self.fc(x), dim=1)  # B x low_dim, unit L2 norm


def parse_cmc_resnet_name(name: str):
    """'resnet50v2' -> (50, 1.0)."""
    suffix = name[-2:]
    depth = name[len('resnet'):-2]
    if not name.startswith('resnet') or suffix not in CMC_RESNET_WIDTHS or not depth.isdigit() \
            or int(depth) not in RESNET_DEPTHS:
        raise ValueError(f'unknown CMC ResNet "{name}": expected resnet{{18,50,101}}v{{1,2,3}}')
    return int(depth), CMC_RESNET_WIDTHS[suffix]


class MyResNetsCMC(CheckpointCompatible):
    """CMC ResNet model (Tian et al. 2019): ``encoder`` holds ``l_to_ab`` (1 input channel) and
    ``ab_to_l`` (2 input channels), each a ResNet of the named depth at width 0.5 (v1), 1 (v2) or 2 (v3).
    ``forward(x, layer=7)`` -> (feat_l, feat_ab).

    With ``view_channels`` / ``view_names`` (Sec. 3.3, more than two views): one such ResNet per view
    (a ``MultiViewEncoder``), ``forward`` -> the list of the views' features."""

    def __init__(self, name: str = 'resnet50v1', feat_dim: int = 128, view_channels=TWO_VIEW_CHANNELS,
                 view_names=None):
        super().__init__()
        depth, width = parse_cmc_resnet_name(name)
        networks = [ResNet(depth, width, in_channel=channels, low_dim=feat_dim) for channels in view_channels]
        self.encoder = build_view_encoder(networks, view_channels, final_layer=7, view_names=view_names)

    def forward(self, x, layer: int = 7):
        return self.encoder(x, layer)


class InsResNet(CheckpointCompatible):
    """InsDis / MoCo encoder (Wu et al. 2018; He et al. 2019): ``encoder`` is one RGB ResNet of ``depth``
    at ``width``. ``forward(x, layer=7)`` -> one tensor."""

    def __init__(self, depth: int = 50, width: float = 1, feat_dim: int = 128):
        super().__init__()
        self.encoder = ResNet(depth, width, in_channel=3, low_dim=feat_dim)

    def forward(self, x, layer: int = 7):
        return self.encoder(x, layer)


class InsResNet50(InsResNet):
    """The reference's InsDis / MoCo ResNet-50 (widths 1, 2, 4)."""

    def __init__(self, width: int = 1, feat_dim: int = 128):
        super().__init__(depth=50, width=width, feat_dim=feat_dim)


class InsResNet18(InsResNet):
    """ResNet-18 variant of InsResNet50, small enough for CPU demos (not in the reference)."""

    def __init__(self, width: float = 1, feat_dim: int = 128):
        super().__init__(depth=18, width=width, feat_dim=feat_dim)
