"""Instance Discrimination (Wu, Xiong, Yu and Lin, 2018): one encoder, a memory bank of one feature per image."""
from NCE.NCEAverage import MemoryInsDis

from .base import ContrastMethod


class InsDis(ContrastMethod):
    """Instance Discrimination (Wu et al. 2018, eq. 2-4): each image is its own class; its feature f is scored
    against its own memory-bank row v_i (the positive) and K random rows, P(i|f) = exp(v_i . f / T) / Z, and the
    bank row is then moved towards f with momentum (Sec. 3.1). Buffers live in ``contrast`` (``MemoryInsDis``)."""

    def __init__(self, encoder, feat_dim, n_data, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None):
        super().__init__(encoder, MemoryInsDis(feat_dim, n_data, K, T, momentum, use_softmax, z_momentum=z_momentum))

    def forward(self, x, index):
        """x: B x 3 x H x W normalised RGB; index: B data-set indices. Returns B x (K+1) scores."""
        with self.autocast():
            feat = self.trained(x)                                          # B x D
        # The contrast runs in float32: exp(s / T) overflows float16.
        return self.contrast(feat.float(), index)                          # B x (K+1)
