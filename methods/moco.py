"""Momentum Contrast (He, Fan, Wu, Xie and Girshick, 2019): a query encoder, a momentum key encoder and a queue."""
import copy

import torch
import torch.distributed as dist

from NCE.NCEAverage import MemoryMoCo, gather_from_all_processes
from NCE.NCECriterion import contrast_criterion

from .base import ContrastMethod
from .insdis import INSTANCE_FIELDS, INSTANCE_TAGS, instance_result


class MoCo(ContrastMethod):
    """MoCo (He et al. 2019, Algorithm 1; eq. 1 InfoNCE over [q.k+, q.queue] / T, eq. 2 the momentum update).

    ``encoder`` is the query encoder f_q; ``encoder_k`` (f_k) starts as its copy and follows it as
    theta_k <- alpha theta_k + (1 - alpha) theta_q after each step (``momentum_update``); ``contrast``
    (``MemoryMoCo``) holds the K x D queue and its pointer as buffers. Keys are computed with ShuffleBN (Sec. 3.3).
    The loss is the InfoNCE of eq. 1 (``use_softmax``, MoCo's) or NCE. Checkpoint entries: model (f_q), model_ema
    (f_k), contrast.
    """

    console_fields, tb_tags = INSTANCE_FIELDS, INSTANCE_TAGS

    def __init__(self, encoder, feat_dim, n_data, K, T=0.07, use_softmax=False, z_momentum=None, alpha=0.999):
        super().__init__(encoder, MemoryMoCo(feat_dim, n_data, K, T, use_softmax, z_momentum=z_momentum))
        self.encoder_k = copy.deepcopy(encoder)            # the key encoder starts as the query encoder
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.alpha = alpha
        self.criterion = contrast_criterion(use_softmax, n_data)

    def forward(self, x, index=None):
        """x: B x 6 x H x W, the query and key crops of the same images on channels (index unused). Returns the
        StepResult (loss, prob)."""
        return instance_result(self.criterion, self.scores(x[:, :3], x[:, 3:]))

    def after_step(self):
        self.momentum_update()

    def scores(self, x_q, x_k):
        """x_q, x_k: B x 3 x H x W, two augmentations of the same images. Returns B x (K+1); column 0 is q.k+."""
        with self.autocast():
            q = self.trained(x_q)                                           # B x D
            k = self.shuffled_keys(x_k)                                     # B x D, in x_k's order
        # The contrast runs in float32: exp(s / T) overflows float16.
        return self.contrast(q.float(), k.float())                          # B x (K+1)

    def set_runtime(self, rt):
        """Also run the key encoder under nn.DataParallel when one process drives several GPUs: each GPU's
        BatchNorm then normalises its slice of the shuffled keys (the reference's ShuffleBN on N GPUs). Under DDP
        the key encoder stays unwrapped: the shuffle across processes does it, and it has no gradients to sync."""
        super().set_runtime(rt)
        keys = rt.wrap(self.encoder_k) if rt.n_data_parallel > 1 else self.encoder_k
        object.__setattr__(self, '_key_encoder', keys)     # not a submodule: same tensors, other keys
        return self

    def key_encoder(self):
        return getattr(self, '_key_encoder', self.encoder_k)

    @torch.no_grad()
    def momentum_update(self):
        """theta_k <- alpha theta_k + (1 - alpha) theta_q over the parameters (MoCo eq. 2); under DDP the key
        encoder's BatchNorm statistics, which each process moved with its own slice of the keys, are then averaged
        over processes, so every process holds the same key encoder (the parameters already agree: DDP keeps the
        query encoders equal, and the update is the same arithmetic on the same values)."""
        for p, p_k in zip(self.encoder.parameters(), self.encoder_k.parameters()):
            p_k.mul_(self.alpha).add_(p.detach(), alpha=1 - self.alpha)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            average_float_buffers(self.encoder_k)

    @torch.no_grad()
    def shuffled_keys(self, x_k):
        """ShuffleBN (Sec. 3.3): keys computed on a batch shuffled across all processes, so the BatchNorm statistics
        a key sees are not those of its own query's batch (which would let the model cheat); they come back in x_k's
        order. In one process the shuffle changes nothing BatchNorm can see (as with the reference on one GPU), but
        it is kept so that a run draws the same random numbers either way.
        """
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            shuffle = torch.randperm(x_k.shape[0], device=x_k.device)
            return self.key_encoder()(x_k[shuffle])[torch.argsort(shuffle)]
        batch, rank = x_k.shape[0], dist.get_rank()
        x_all = gather_from_all_processes(x_k)                       # (world x B) x 3 x H x W
        shuffle = torch.randperm(x_all.shape[0], device=x_k.device)
        dist.broadcast(shuffle, src=0)                               # one permutation for all processes
        lo = rank * batch
        keys_all = gather_from_all_processes(self.encoder_k(x_all[shuffle[lo:lo + batch]]))   # shuffled order
        return keys_all[torch.argsort(shuffle)][lo:lo + batch]

    def checkpoint_modules(self):
        return {'model': self.encoder, 'model_ema': self.encoder_k, 'contrast': self.contrast}

    def encoders(self):
        return [self.encoder, self.encoder_k]


def average_float_buffers(module):
    """All-reduce-average ``module``'s floating-point buffers (BatchNorm running mean and variance) over the
    processes, in one collective: the result is the same bits in every process (the reduction is computed once and
    shared). Integer buffers (num_batches_tracked) move alike in every process and are left as they are."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for b, part in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(part.view_as(b))
