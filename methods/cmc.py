"""Contrastive Multiview Coding (Tian, Krishnan and Isola, 2019): one encoder per view, a memory bank per view."""
import torch
import torch.nn.functional as F

from NCE.NCEAverage import NCEAverage

from .base import ContrastMethod


class CMC(ContrastMethod):
    """CMC with a memory bank (Tian et al. 2019, Sec. 3.2-3.4, eq. 3-5): each view's feature is scored against the
    *other* view's memory (the positive is the same image's row, K random rows the negatives), and each view's
    memory is moved towards its feature. ``encoder`` maps the stacked views to one feature per view."""

    def __init__(self, encoder, feat_dim, n_data, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None):
        super().__init__(encoder, NCEAverage(feat_dim, n_data, K, T, momentum, use_softmax, z_momentum=z_momentum))

    def forward(self, x, index):
        """x: B x C x H x W, the views stacked on channels (L|ab: 1 + 2); index: B data-set indices.

        Returns (out_l, out_ab), each B x (K+1) x 1: view 1 against view 2's memory and view 2 against view 1's.
        """
        with self.autocast():
            feat_l, feat_ab = self.trained(x)                               # B x D each
        # The contrast runs in float32: exp(s / T) overflows float16.
        return self.contrast(feat_l.float(), feat_ab.float(), index)        # B x (K+1) x 1 each

    def features(self, x):
        """Unit-norm features of both views, concatenated (B x 2D): what the kNN monitor compares."""
        feat_l, feat_ab = self.encoder(x)
        return torch.cat([F.normalize(feat_l, dim=1), F.normalize(feat_ab, dim=1)], dim=1)
