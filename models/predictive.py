"""Cross-view prediction baseline of CMC (Tian et al. 2019, "Contrastive Multiview Coding": Sec. 3.1 and
Fig. 2a, predictive learning, loss measured in the output space; the experiments' "contrastive vs.
predictive learning" comparison, in the spirit of split-brain autoencoders, Zhang et al. 2017): instead of
contrasting the views' embeddings, each view's encoder is trained to *predict* the other view's pixels with
an L2 loss, L -> ab and ab -> L.

The encoders are the CMC ones (``build_cmc_model(...)``), so once trained they are probed like any
CMC encoder (``CrossViewPredictor.encoder`` has the CMC model's state-dict keys).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Feature map each view's decoder reads: AlexNet conv5 (layer 5), ResNet layer3 (layer 4; stride 16, so
# a 32 px input still gives a 2 x 2 map, where layer4 would give 1 x 1).
PREDICTION_LAYERS = {'alexnet': 5, 'resnet': 4}
# Input size of the dry run that reads the feature maps' channel counts (AlexNet needs >= 64 px).
PROBE_SIZE = 64


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ViewDecoder(nn.Module):
    """Light decoder from one view's feature map to another view's pixels: 3x3 conv, upsample to half
    the target size, 3x3 conv, upsample to the target size, 3x3 conv to the target's channels.

    ``forward(features, size)``: B x C_f x h x w -> B x C_target x H x W (bilinear upsampling).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, squash: bool = False):
        super().__init__()
        self.squash = squash          # tanh on the output: targets normalised to [-1, 1] (colour views do), bounded
        self.reduce = conv_bn_relu(in_channels, hidden)
        self.refine = conv_bn_relu(hidden, hidden)
        self.predict = nn.Conv2d(hidden, out_channels, 3, padding=1)

    def forward(self, features, size: Tuple[int, int]):
        half = (max(size[0] // 2, 1), max(size[1] // 2, 1))
        x = F.interpolate(self.reduce(features), size=half, mode='bilinear')  # B x hidden x H/2 x W/2
        x = F.interpolate(self.refine(x), size=size, mode='bilinear')  # B x hidden x H x W
        x = self.predict(x)  # B x C_target x H x W
        return torch.tanh(x) if self.squash else x


class CrossViewPredictor(nn.Module):
    """Predictive-learning baseline of CMC (Tian et al. 2019, Sec. 3.1, cross-view prediction): for each
    direction s -> t (default: every ordered pair of views; for two views L -> ab and ab -> L) a ViewDecoder maps
    view s's encoder feature map (``layer``) to view t's H x W pixels, with the L2 loss
    L_{s->t} = || D_{s->t}(f_s(x_s)) - x_t ||^2 averaged over B x C_t x H x W (the target x_t is the input view as
    the data pipeline normalised it, detached). The training objective is the sum over directions,
    ``sum(predictor(x).values())``.

    ``encoder``: a CMC model, ``forward(x, layer) -> one feature per view`` (e.g. ``build_cmc_model``).
    ``forward(x)``: x B x sum(C_v) x H x W -> {'<s>_to_<t>': scalar MSE} per direction.
    ``predict(x)``: the same directions' predictions, B x C_t x H x W each.
    """

    def __init__(self, encoder: nn.Module, view_channels: Sequence[int] = (1, 2), layer: Optional[int] = None,
                 view_names: Sequence[str] = ('L', 'ab'), directions: Optional[Sequence[Tuple[int, int]]] = None,
                 hidden: int = 64, squash: bool = False):
        super().__init__()
        self.encoder = encoder
        self.view_channels = tuple(view_channels)
        self.view_names = tuple(view_names)
        self.layer = self.default_layer(encoder) if layer is None else layer
        self.directions = [tuple(d) for d in directions] if directions is not None else \
            [(s, t) for s in range(len(view_channels)) for t in range(len(view_channels)) if s != t]
        feature_channels = self.feature_channels()
        self.decoders = nn.ModuleDict({
            self.direction_name(s, t): ViewDecoder(feature_channels[s], self.view_channels[t], hidden, squash)
            for s, t in self.directions})

    @staticmethod
    def default_layer(encoder: nn.Module) -> int:
        """AlexNet conv5 (5) when the encoder's final layer is AlexNet's 8, else ResNet layer3 (4)."""
        final_layer = getattr(getattr(encoder, 'encoder', encoder), 'final_layer', None)
        return PREDICTION_LAYERS['alexnet' if final_layer == 8 else 'resnet']

    @torch.no_grad()
    def feature_channels(self) -> Sequence[int]:
        """Channels of each view's feature map at ``layer``, read with one eval-mode dry run."""
        was_training = self.encoder.training
        device = next(self.encoder.parameters()).device
        probe = torch.zeros(1, sum(self.view_channels), PROBE_SIZE, PROBE_SIZE, device=device)
        try:
            features = self.encoder.eval()(probe, self.layer)
        finally:
            self.encoder.train(was_training)
        return [feature.size(1) for feature in features]

    def direction_name(self, source: int, target: int) -> str:
        return f'{self.view_names[source]}_to_{self.view_names[target]}'

    def predict(self, x) -> Dict[str, torch.Tensor]:
        """x: B x sum(C_v) x H x W -> {direction: B x C_t x H x W prediction of view t}."""
        features = self.encoder(x, self.layer)  # per view: B x C_f x h x w
        size = tuple(x.shape[-2:])
        return {self.direction_name(s, t): self.decoders[self.direction_name(s, t)](features[s], size)
                for s, t in self.directions}

    def forward(self, x) -> Dict[str, torch.Tensor]:
        """x: B x sum(C_v) x H x W -> {direction: mean squared error against the target view}."""
        views = torch.split(x, list(self.view_channels), dim=1)  # B x C_v x H x W each
        predictions = self.predict(x)
        return {name: F.mse_loss(predictions[name], views[t].detach())
                for name, (_, t) in zip(predictions, self.directions)}
