"""Instance Discrimination (Wu, Xiong, Yu and Lin, 2018): one encoder, a memory bank of one feature per image."""
from engine.loop import StepResult
from NCE.NCEAverage import MemoryInsDis
from NCE.NCECriterion import contrast_criterion

from .base import ContrastMethod

# The reference's console fields and TensorBoard tags of InsDis and MoCo.
INSTANCE_FIELDS = [('loss', 'loss'), ('prob', 'prob')]
INSTANCE_TAGS = [('loss', 'ins_loss'), ('prob', 'ins_prob'), ('learning_rate', 'learning_rate')]


def instance_result(criterion, scores):
    """The loss of B x (K+1) scores (column 0 the positive) and its metrics: the loss, and the positive's mean score
    (``prob``: a probability in NCE mode, a logit / T with --softmax)."""
    loss = criterion(scores).squeeze()
    return StepResult(loss=loss, metrics={'loss': loss, 'prob': scores[:, 0].mean()})


class InsDis(ContrastMethod):
    """Instance Discrimination (Wu et al. 2018, eq. 2-4): each image is its own class; its feature f is scored
    against its own memory-bank row v_i (the positive) and K random rows, P(i|f) = exp(v_i . f / T) / Z, and the
    bank row is then moved towards f with momentum (Sec. 3.1). Buffers live in ``contrast`` (``MemoryInsDis``); the
    loss is NCE (eq. 4) or, with ``use_softmax``, the softmax cross-entropy over the K+1 scores."""

    console_fields, tb_tags = INSTANCE_FIELDS, INSTANCE_TAGS

    def __init__(self, encoder, feat_dim, n_data, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None):
        super().__init__(encoder, MemoryInsDis(feat_dim, n_data, K, T, momentum, use_softmax, z_momentum=z_momentum))
        self.criterion = contrast_criterion(use_softmax, n_data)

    def forward(self, x, index):
        """x: B x 3 x H x W normalised RGB; index: B data-set indices. Returns the StepResult (loss, prob)."""
        return instance_result(self.criterion, self.scores(x, index))

    def scores(self, x, index):
        """B x (K+1) scores, column 0 the positive (moves the memory bank)."""
        with self.autocast():
            feat = self.trained(x)                                          # B x D
        # The contrast runs in float32: exp(s / T) overflows float16.
        return self.contrast(feat.float(), index)                          # B x (K+1)
