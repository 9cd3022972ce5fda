"""Losses on the contrast modules' scores (column 0 the positive, columns 1..K the negatives)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['NCECriterion', 'NCESoftmaxLoss']

eps = 1e-7


def _as_batch_by_candidates(x):
    """B x (K+1) [x 1] -> B x (K+1); only the trailing singleton goes (the reference's squeeze() lost B == 1)."""
    return x.squeeze(-1) if x.dim() == 3 else x


class NCECriterion(nn.Module):
    """NCE loss (Wu et al. 2018, Sec. 3.2; Gutmann & Hyvarinen 2010) with uniform noise Pn = 1 / n_data and
    m = K noise samples per positive:
        loss = -(sum_b log(P0 / (P0 + m Pn + eps)) + sum_{b, i>0} log(m Pn / (Pi + m Pn + eps))) / B,
    returned as a 1-element tensor like the reference.
    """

    def __init__(self, n_data):
        super().__init__()
        self.n_data = n_data

    def forward(self, x):
        x = _as_batch_by_candidates(x)  # B x (K+1)
        batch_size, num_negatives = x.size(0), x.size(1) - 1
        noise_mass = num_negatives / self.n_data  # m Pn
        positive = x[:, 0]  # B
        negatives = x[:, 1:]  # B x K
        log_d1 = torch.log(positive / (positive + noise_mass + eps))  # B: log P(data | positive)
        log_d0 = torch.log(noise_mass / (negatives + noise_mass + eps))  # B x K: log P(noise | negative)
        return (-(log_d1.sum() + log_d0.sum()) / batch_size).reshape(1)  # 1


class NCESoftmaxLoss(nn.Module):
    """Softmax cross-entropy with the positive at index 0 (InfoNCE: CMC Sec. 3.2; He et al. 2019, Eq. 1)."""

    def forward(self, x):
        x = _as_batch_by_candidates(x)  # B x (K+1)
        label = torch.zeros(x.size(0), dtype=torch.long, device=x.device)  # B
        return F.cross_entropy(x, label)


def contrast_criterion(use_softmax, n_data):
    """The loss the scripts pair with a contrast module: softmax cross-entropy, or NCE against n_data noise items."""
    return NCESoftmaxLoss() if use_softmax else NCECriterion(n_data)
