"""``PretrainedEncoder``: a trained encoder (CMC, InsDis or MoCo) with what a downstream user needs to run it: how
to turn uint8 RGB images into its views (``preprocess``), its features at a layer (``features``), and a description
of itself (``info``: method, model, width, views, each view's preprocessing, the source checkpoint's sha256)."""
from typing import List, Optional, Tuple

import torch
from torch import nn

from engine.errors import UserError

# The layer ``features`` reads by default: the pooled features under the projection head for the ResNets (2048-d
# for ResNet-50 at width 1; the 'layer 6' of LinearProbing.py and of the papers' linear evaluation), fc6 for AlexNet.
DEFAULT_LAYER = 6
CMC_METHODS = ('cmc', 'cmc-predictive')
ALEXNET_MIN_SIZE = 64          # as train_CMC.py refuses --model alexnet below it (engine.flags)


class PretrainedEncoder(nn.Module):
    """A pretrained encoder, frozen in eval mode by the loaders (``pretrained.load_encoder``).

    ``network``: our model (``models.MyResNetsCMC`` / ``MyAlexNetCMC`` for CMC, ``models.InsResNet`` for InsDis and
    MoCo), its state dict keyed as the ``model`` entry of our checkpoints. ``view``: uint8 B x 3 x H x W -> the
    normalised views, B x sum(C_v) x H x W float32 (``views.ViewStack`` / ``DeviceView('RGB')``), or None when a view
    cannot be made from RGB; ``unavailable`` then says why. ``info``: a JSON-able dict (see ``pretrained.load``).
    """

    def __init__(self, network: nn.Module, info: dict, view: Optional[nn.Module], unavailable: str = ''):
        super().__init__()
        self.network, self.info, self.view, self.unavailable = network, dict(info), view, unavailable

    @property
    def is_cmc(self) -> bool:
        return self.info['method'] in CMC_METHODS

    @property
    def views(self) -> Tuple[str, ...]:
        return tuple(self.info['views'])

    def view_networks(self) -> List[Tuple[str, nn.Module]]:
        """(view, its network) in checkpoint order: one per view for CMC, ('RGB', the ResNet) for InsDis / MoCo."""
        if self.is_cmc:
            return list(zip(self.views, self.network.encoder.view_networks()))
        return [('RGB', self.network.encoder)]

    @torch.no_grad()
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB images, B x 3 x H x W (any H, W; the encoder was trained at ``info['image_size']``) -> the views
        it expects, normalised as in training: B x sum(view_channels) x H x W float32 on the encoder's device.
        A view that cannot be computed from RGB (read from files, or from a view module not found) is a UserError:
        give ``features`` the views tensor itself."""
        if self.view is None:
            raise UserError(self.unavailable)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
                or images.shape[1] != 3:
            got = f'{images.dtype} {tuple(images.shape)}' if isinstance(images, torch.Tensor) else type(images).__name__
            raise UserError(f'preprocess expects uint8 RGB images B x 3 x H x W (torchvision.io.read_image, or '
                            f'PILToTensor, stacked), got {got}')
        return self.view(images.to(self.device))

    @torch.no_grad()
    def features(self, images: Optional[torch.Tensor] = None, layer: int = DEFAULT_LAYER, *,
                 views: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features at ``layer`` (``models``' numbering: 6 the pooled features for the ResNets, fc6 for AlexNet; 1..5
        feature maps; the last, 7 or 8, the unit-norm embedding) of uint8 RGB ``images`` (preprocessed here), or of
        ``views``: a float tensor B x sum(view_channels) x H x W already normalised as in training (``preprocess``'s
        output; a view read from files as ``info['preprocessing']`` says). CMC: the views' features concatenated on
        channels in checkpoint order, as LinearProbing.py does. Returns B x D (x h x w below the pooled layers),
        float32. Float images (0..1 or 0..255) are refused, not taken for views: their numbers would be wrong."""
        if (images is None) == (views is None):
            raise UserError('features takes uint8 RGB images, or views=<the normalised views tensor>: one of them')
        if not isinstance(layer, int) or isinstance(layer, bool) or not 1 <= layer <= self.last_layer:
            raise UserError(f'layer={layer!r}: --model {self.info["model"]} has layers 1..{self.last_layer} (6: the '
                            f'pooled features; {self.last_layer}: the embedding)')
        if images is not None:
            if isinstance(images, torch.Tensor) and images.is_floating_point():
                raise UserError(f'features takes uint8 RGB images (0..255), got {images.dtype}: for float RGB in 0..1 '
                                f'pass (images * 255).round().to(torch.uint8); a tensor of views already normalised '
                                f'as in training goes in views=')
            x = self.preprocess(images)
        else:
            x = self._checked_views(views)
        if self.info['model'] == 'alexnet' and min(x.shape[-2:]) < ALEXNET_MIN_SIZE:
            raise UserError(f'AlexNet needs images of {ALEXNET_MIN_SIZE} px or more (its pooling runs out of pixels), '
                            f'got {tuple(x.shape[-2:])}; resize them')
        out = self.network(x, layer)
        return (torch.cat(list(out), dim=1) if self.is_cmc else out).float()

    def _checked_views(self, views):
        """The views tensor as float32 on the encoder's device, or a UserError for another shape or dtype."""
        channels = sum(self.info['view_channels'])
        if not isinstance(views, torch.Tensor) or not views.is_floating_point() or views.dim() != 4 \
                or views.shape[1] != channels:
            got = f'{views.dtype} {tuple(views.shape)}' if isinstance(views, torch.Tensor) else type(views).__name__
            raise UserError(f'views= takes the float views tensor B x {channels} x H x W ({" ".join(self.views)}, '
                            f'normalised as in training), got {got}')
        return views.to(self.device, torch.float32)

    @property
    def last_layer(self) -> int:
        """The embedding's layer: 8 for AlexNet, 7 for the ResNets."""
        return 8 if self.info['model'] == 'alexnet' else 7

    def forward(self, x: torch.Tensor, layer: Optional[int] = None):
        """The network itself on normalised views (gradients flow): CMC -> list of views' features, else a tensor."""
        return self.network(x) if layer is None else self.network(x, layer)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def extra_repr(self) -> str:
        return f"method={self.info['method']!r}, model={self.info['model']!r}, views={self.views}"
