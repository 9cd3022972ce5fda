"""CMC's AlexNet encoder (Tian et al. 2019, "Contrastive Multiview Coding", Sec. 4.1 / Appendix):
two half-width AlexNets (Krizhevsky et al. 2012), one per view, L -> ab and ab -> L."""
import torch.nn.functional as F
from torch import nn

from .base import TWO_VIEW_CHANNELS, CheckpointCompatible, build_view_encoder

# (out_channels, kernel, stride, padding, max-pool after) of the five conv blocks: AlexNet at half width.
HALF_ALEXNET_CONV_BLOCKS = (
    (48, 11, 4, 2, True),
    (128, 5, 1, 2, True),
    (192, 3, 1, 1, False),
    (192, 3, 1, 1, False),
    (128, 3, 1, 1, True),
)
HALF_ALEXNET_FC_WIDTH = 2048
# fc6 reads a 6 x 6 map (what conv_block_5 gives at 224 px); other input sizes are pooled to it.
HALF_ALEXNET_POOL_SIZE = 6


class HalfAlexNet(CheckpointCompatible):
    """Half-width AlexNet for one view (CMC paper, Appendix "AlexNet"): conv blocks of 48/128/192/192/128
    channels (conv without bias, BatchNorm, ReLU, max-pool after blocks 1, 2, 5), fc6 and fc7 of 2048
    (Linear, BatchNorm1d, ReLU), fc8 to ``feat_dim`` and L2 normalisation.

    ``forward(x, layer)``: layer <= 0 returns x; 1..5 the conv blocks' outputs (block 5 after the
    adaptive pool to 6 x 6); 6 fc6; 7 fc7; 8 the unit-norm embedding.
    """

    projection_head = 'fc8'     # --online_probe reads its input: fc7's output, forward(x, 7)

    def __init__(self, in_channel: int = 1, feat_dim: int = 128):
        super().__init__()
        channels = in_channel
        for index, (out_channels, kernel, stride, padding, pooled) in enumerate(HALF_ALEXNET_CONV_BLOCKS, 1):
            block = [nn.Conv2d(channels, out_channels, kernel, stride, padding, bias=False),
                     nn.BatchNorm2d(out_channels),
                     nn.ReLU(inplace=True)]
            if pooled:
                block.append(nn.MaxPool2d(kernel_size=3, stride=2))
            self.add_module(f'conv_block_{index}', nn.Sequential(*block))
            channels = out_channels
        # Parameter-free, so it adds no state-dict key; identity at 224 px, lets any size >= 64 px work.
        self.pool_to_fc = nn.AdaptiveMaxPool2d(HALF_ALEXNET_POOL_SIZE)
        fc_in = channels * HALF_ALEXNET_POOL_SIZE * HALF_ALEXNET_POOL_SIZE
        self.fc6 = nn.Sequential(nn.Linear(fc_in, HALF_ALEXNET_FC_WIDTH),
                                 nn.BatchNorm1d(HALF_ALEXNET_FC_WIDTH), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Linear(HALF_ALEXNET_FC_WIDTH, HALF_ALEXNET_FC_WIDTH),
                                 nn.BatchNorm1d(HALF_ALEXNET_FC_WIDTH), nn.ReLU(inplace=True))
        self.fc8 = nn.Sequential(nn.Linear(HALF_ALEXNET_FC_WIDTH, feat_dim))

    def forward(self, x, layer: int = 8):
        if layer <= 0:
            return x
        conv_blocks = [self.conv_block_1, self.conv_block_2, self.conv_block_3,
                       self.conv_block_4, self.conv_block_5]
        for index, block in enumerate(conv_blocks, 1):
            x = block(x)
            if index == len(conv_blocks):
                x = self.pool_to_fc(x)  # B x 128 x 6 x 6
            if layer == index:
                return x
        x = self.fc6(x.flatten(1))  # B x 2048
        if layer == 6:
            return x
        x = self.fc7(x)  # B x 2048
        if layer == 7:
            return x
        return F.normalize(self.fc8(x), dim=1)  # B x feat_dim, unit L2 norm


class MyAlexNetCMC(CheckpointCompatible):
    """CMC AlexNet model (Tian et al. 2019): ``encoder`` holds ``l_to_ab`` (1 input channel) and
    ``ab_to_l`` (2 input channels). ``forward(x, layer=8)`` -> (feat_l, feat_ab).

    With ``view_channels`` / ``view_names`` (Sec. 3.3, more than two views): one HalfAlexNet per view
    (a ``MultiViewEncoder``), ``forward`` -> the list of the views' features."""

    def __init__(self, feat_dim: int = 128, view_channels=TWO_VIEW_CHANNELS, view_names=None):
        super().__init__()
        networks = [HalfAlexNet(in_channel=channels, feat_dim=feat_dim) for channels in view_channels]
        self.encoder = build_view_encoder(networks, view_channels, final_layer=8, view_names=view_names)

    def forward(self, x, layer: int = 8):
        return self.encoder(x, layer)
