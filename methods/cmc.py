"""Contrastive Multiview Coding (Tian, Krishnan and Isola, 2019): one encoder per view, a memory bank per view; and
the paper's predictive baseline on the same encoders."""
import torch
import torch.nn.functional as F

from engine.loop import StepResult
from models.predictive import CrossViewPredictor
from NCE.NCEAverage import MultiviewContrast, contrast_view_pairs
from NCE.NCECriterion import contrast_criterion

from .base import ContrastMethod, eager

# The reference's console line of its two views: loss, l_p, ab_p, l_loss, ab_loss.
REFERENCE_FIELDS = [('loss', 'loss'), ('l_prob', 'l_p'), ('ab_prob', 'ab_p'), ('l_loss', 'l_loss'),
                    ('ab_loss', 'ab_loss')]


def metric_names(pair_names):
    """{pair: (loss key, prob key)}: the reference's l_loss / ab_loss / l_prob / ab_prob for its two views,
    else loss_<pair> / prob_<pair> (pair '<anchor view>_<memory view>')."""
    if tuple(pair_names) == ('L_ab', 'ab_L'):
        return {'L_ab': ('l_loss', 'l_prob'), 'ab_L': ('ab_loss', 'ab_prob')}
    return {pair: (f'loss_{pair}', f'prob_{pair}') for pair in pair_names}


def tags_of(fields):
    """CMC's TensorBoard tags: every console field but the total loss, under its own name (the reference's)."""
    return [(key, key) for key, _ in fields if key != 'loss']


class CMC(ContrastMethod):
    """CMC with a memory bank (Tian et al. 2019, Sec. 3.2-3.4, eq. 3-5): each view's feature is scored against the
    *other* views' memories (the positive is the same image's row, K random rows the negatives), and each view's
    memory is moved towards its feature. ``encoder`` maps the stacked views to one feature per view (``views``
    order). More than two views (Sec. 3.3): ``paradigm`` 'core' contrasts the first view with each other (eq. 6),
    'full' every pair (eq. 7). Views ('l', 'ab') give the reference's two-view memory (memory_l, memory_ab).
    The loss is the sum over the scored ordered pairs of NCE (eq. 4 of Wu et al.) or, with ``use_softmax``, the
    softmax cross-entropy (eq. 2); metrics: each pair's loss and its positive's mean score (``metric_names``)."""

    def __init__(self, encoder, feat_dim, n_data, K, T=0.07, momentum=0.5, use_softmax=False, z_momentum=None,
                 views=('l', 'ab'), paradigm='core'):
        super().__init__(encoder, MultiviewContrast(feat_dim, n_data, K, T, momentum, use_softmax,
                                                    z_momentum=z_momentum, views=views, paradigm=paradigm))
        self.criterion = contrast_criterion(use_softmax, n_data)
        self.names = metric_names(self.contrast.pair_names())                 # pair -> (loss key, prob key)
        self.console_fields = REFERENCE_FIELDS if tuple(self.names) == ('L_ab', 'ab_L') else \
            [('loss', 'loss')] + [(key, key) for pair in self.names for key in self.names[pair]]
        self.tb_tags = tags_of(self.console_fields)

    def forward(self, x, index):
        """x: B x C x H x W, the views stacked on channels (L|ab: 1 + 2); index: B data-set indices. Returns the
        StepResult: the summed loss, and each ordered pair's loss and positive score."""
        scores = self.scores(x, index)                                      # pair -> B x (K+1) x 1
        losses = {pair: self.criterion(out).squeeze() for pair, out in scores.items()}
        total = sum(losses.values())
        return StepResult(loss=total, metrics={'loss': total, **{self.names[p][0]: loss for p, loss in losses.items()},
                                               **{self.names[p][1]: out[:, 0].mean() for p, out in scores.items()}})

    def scores(self, x, index):
        """{pair name: B x (K+1) x 1}, e.g. 'l_ab' (view l against view ab's memory) and 'ab_l' (moves the banks)."""
        with self.autocast():
            feats = self.trained(x)                                         # one B x D per view
        # The contrast runs in float32: exp(s / T) overflows float16.
        return self.contrast([f.float() for f in feats], index)             # B x (K+1) x 1 each

    def features(self, x):
        """Unit-norm features of every view, concatenated (B x MD): what the kNN monitor compares (run eagerly)."""
        with eager():
            return torch.cat([F.normalize(f, dim=1) for f in self.encoder(x)], dim=1)


class CrossViewPrediction(ContrastMethod):
    """CMC's predictive baseline (Tian et al. 2019, Sec. 3.1 / Fig. 2a): the same view encoders, trained to predict
    the other views' pixels with an L2 loss through light decoders (``models.predictive.CrossViewPredictor``), for
    the ordered pairs of ``paradigm`` (two views: L -> ab and ab -> L). The decoders read each encoder's last
    convolutional map (``layer``), so every layer a probe reads below the head is trained. Predictions go through
    tanh (the views are normalised to [-1, 1]): an unbounded output layer diverged at the contrastive learning rate
    (0.03; its L2 loss has curvature ~ the 576 inputs of its 3x3x64 conv).
    The loss is the sum of the directions' L2 losses. Checkpoint: ``model`` the encoder (probed like any CMC
    encoder), ``decoders`` the decoders."""

    def __init__(self, encoder, view_channels, view_names, paradigm='core', layer=5):
        pairs = contrast_view_pairs(len(view_names), paradigm)
        predictor = CrossViewPredictor(encoder, view_channels, layer=layer, view_names=view_names,
                                       directions=[d for i, j in pairs for d in ((i, j), (j, i))], squash=True)
        super().__init__(encoder, None)
        self.predictor = predictor
        self.console_fields = [('loss', 'loss')] + [(f'loss_{name}', f'loss_{name}') for name in predictor.decoders]
        self.tb_tags = tags_of(self.console_fields)

    def forward(self, x, index=None):
        """x: B x sum(C_v) x H x W (index unused) -> the StepResult: the summed loss and each direction's."""
        losses = self.losses(x)
        total = sum(losses.values())
        return StepResult(loss=total, metrics={'loss': total, **{f'loss_{n}': loss for n, loss in losses.items()}})

    def losses(self, x):
        """x: B x sum(C_v) x H x W -> {'<s>_to_<t>': mean squared error} per direction."""
        with self.autocast():
            losses = self.trained_predictor(x)
        return {name: loss.float() for name, loss in losses.items()}

    @property
    def trained_predictor(self):
        return self._runtime[1] if self._runtime else self.predictor

    def set_runtime(self, rt):
        object.__setattr__(self, '_runtime', (rt, rt.wrap(self.predictor, unused_parameters=True)))  # heads unused
        return self

    def features(self, x):
        with eager():
            return torch.cat([F.normalize(f, dim=1) for f in self.encoder(x)], dim=1)

    def checkpoint_modules(self):
        return {'model': self.encoder, 'decoders': self.predictor.decoders}
