"""``DeviceView``: uint8 RGB crops -> a normalised colour space, batched on the crops' device; and
``PrenormalisedViews``, for views the loader workers already converted (``--color_on_cpu``)."""
import torch
from torch import nn

from engine.errors import UserError
from views.kernels import CPU_KERNEL_SPACES, normalised_view
from views.colour import VIEW_STATS, canonical_space, rgb_to


class DeviceView(nn.Module):
    """uint8 RGB crops -> normalised colour view, batched on the crops' device.

    CMC (Tian et al., 2019, Sec. 4) feeds L and ab (or Y and CbCr) as two views; this is the
    conversion step, moved from per-sample CPU float64 into one float32 batch op:
    x / 255 -> rgb_to(space) -> (x - mean) / std, for every 3-channel group (k = 2 for MoCo's
    query and key crops concatenated on channels). On CPU tensors, Lab, YCbCr and RGB take the uint8 kernels above
    (`FastView`: the same values within 1e-5, 3-4x faster per core) unless ``cpu_kernel=False``; every other device
    and space runs the generic formula.
    """

    CPU_CHUNK_PIXELS = 1 << 17  # pixels per chunk of the generic formula on CPU (about two 224 x 224 crops)

    def __init__(self, space='Lab', cpu_kernel=True):
        super().__init__()
        self.space = canonical_space(space)
        self.cpu_kernel = bool(cpu_kernel) and self.space in CPU_KERNEL_SPACES
        mean, std = VIEW_STATS[self.space]
        # Constants, not learned state: non-persistent so checkpoints do not depend on them.
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def forward(self, images):
        """images: B x 3k x H x W uint8 -> B x 3k x H x W float32."""
        if images.dtype != torch.uint8:
            raise UserError(f"DeviceView expects uint8 images (PILToTensor output), got {images.dtype}")
        if images.dim() != 4 or images.shape[1] % 3 != 0:
            raise UserError(f"DeviceView expects B x 3k x H x W images, got shape {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        on_cpu = images.device.type == 'cpu'
        if on_cpu and self.cpu_kernel and self.mean.dtype == torch.float32:  # float32 constants: float32 output
            return normalised_view(self.space, images)
        groups = images.reshape(batch, channels // 3, 3, height, width)  # B x k x 3 x H x W
        if not on_cpu:
            return self._convert(groups).reshape(batch, channels, height, width)
        # On CPU, a few images at a time keep the dozen float temporaries in cache instead of
        # allocating (and page-faulting) full-batch buffers: 2-5x faster (bench/bench_colour.py).
        out = torch.empty(groups.shape, dtype=torch.float32)
        step = max(1, self.CPU_CHUNK_PIXELS // (channels // 3 * height * width))
        for start in range(0, batch, step):
            out[start:start + step] = self._convert(groups[start:start + step])
        return out.reshape(batch, channels, height, width)

    def _convert(self, groups):
        """... x 3 x H x W uint8 -> normalised float32 view (the generic formula)."""
        return (rgb_to(self.space, groups.float().div(255)) - self.mean) / self.std

    def extra_repr(self):
        return f"space={self.space!r}, cpu_kernel={self.cpu_kernel}"


# Named views: a colour space and the channels of it that the view keeps (CMC Sec. 4: L | ab, Y | CbCr; any channel
# group of Lab, YCbCr or HSV may be a view of its own).


class PrenormalisedViews(nn.Module):
    """Views the loader workers already converted and normalised (``--color_on_cpu``: the reference's per-image
    scikit-image path, ``dataset.reference_views_transform``): only cast to float32, as the reference's
    ``inputs.float()`` did, so nothing is converted twice. ``channels``: sum of the views' channels (3 for L|ab).
    """

    def __init__(self, channels):
        super().__init__()
        self.channels = int(channels)

    def forward(self, views):
        """views: B x channels x H x W float (float64 from the workers) -> float32, same shape; else UserError."""
        if not torch.is_floating_point(views) or views.dim() != 4 or views.shape[1] != self.channels:
            raise UserError(f"--color_on_cpu expects B x {self.channels} x H x W float views from the loader, got "
                            f"{views.dtype} {tuple(views.shape)} (uint8 crops go through ViewStack instead)")
        return views.float()

    def extra_repr(self):
        return f"channels={self.channels}"


__all__ = ['DeviceView', 'PrenormalisedViews']
