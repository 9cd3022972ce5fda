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
    def features(self, images: torch.Tensor, layer: int = DEFAULT_LAYER) -> torch.Tensor:
        """Features at ``layer`` (``models``' numbering: 6 the pooled features for the ResNets, fc6 for AlexNet) of
        uint8 RGB images (preprocessed here), or of a float views tensor B x sum(view_channels) x H x W already
        normalised (any float dtype; cast to float32). CMC: the views' features concatenated on channels in checkpoint
        order, as LinearProbing.py does. Returns B x D (x h x w below the pooled layers), float32."""
        floating = isinstance(images, torch.Tensor) and images.is_floating_point()
        x = images.to(self.device, torch.float32) if floating else self.preprocess(images)
        if x.dim() != 4 or x.shape[1] != sum(self.info['view_channels']):
            raise UserError(f'features expects uint8 RGB images B x 3 x H x W or the views tensor B x '
                            f'{sum(self.info["view_channels"])} x H x W, got {x.dtype} {tuple(x.shape)}')
        out = self.network(x, layer)
        return (torch.cat(list(out), dim=1) if self.is_cmc else out).float()

    def forward(self, x: torch.Tensor, layer: Optional[int] = None):
        """The network itself on normalised views (gradients flow): CMC -> list of views' features, else a tensor."""
        return self.network(x) if layer is None else self.network(x, layer)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def extra_repr(self) -> str:
        return f"method={self.info['method']!r}, model={self.info['model']!r}, views={self.views}"
