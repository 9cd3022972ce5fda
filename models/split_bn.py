"""ShuffleBN on one device: BatchNorm over N sub-batches, as N GPUs' BatchNorms would compute it.

MoCo (He et al. 2019, "Momentum Contrast for Unsupervised Visual Representation Learning", Sec. 3.3, "Shuffling BN")
computes the keys on a batch shuffled across GPUs, so the BatchNorm statistics a key is normalised with come from a
different subset of the batch than its query's: otherwise the batch statistics leak which sample is the positive
and the model "cheats" the pretext task. In one process with one BatchNorm a shuffle changes nothing (the statistics
of a permuted batch are those of the batch), so there the key encoder's BatchNorm layers are replaced by
``SplitBatchNorm2d``: in training mode it views the batch as ``num_splits`` sub-batches and normalises each with its
own statistics, as ``num_splits`` GPUs would; in eval mode it is an ordinary BatchNorm. facebookresearch/moco's
single-GPU demo emulates several GPUs the same way; this is an independent implementation.

    from models.split_bn import convert_split_batchnorm
    key_encoder = convert_split_batchnorm(copy.deepcopy(encoder), num_splits=8)   # every BatchNorm2d/1d replaced

The state-dict keys are nn.BatchNorm2d's (``weight, bias, running_mean, running_var, num_batches_tracked``), so a
checkpoint written with split BatchNorm loads into plain BatchNorm and back.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['SplitBatchNorm1d', 'SplitBatchNorm2d', 'convert_split_batchnorm', 'shuffle_bn_mode']


class _SplitBatchNorm:
    """The split forward, shared by the 1d and 2d classes (mixed in before the torch BatchNorm class)."""

    def _init_splits(self, num_splits):
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f'num_splits must be a positive integer, got {num_splits!r}')
        self.num_splits = num_splits

    def forward(self, x):
        """x: B x C (x L) or B x C x H x W. Training mode (with num_splits > 1): sub-batch i is rows
        i*B/n .. (i+1)*B/n - 1 (n = num_splits), the slice one of n GPUs would get; each is normalised with its own
        mean and biased variance, with the shared affine weight and bias; returns a tensor of x's shape and memory
        format. Otherwise exactly the torch BatchNorm forward."""
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        self._check_input_dim(x)
        batch, n = x.shape[0], self.num_splits
        if batch % n:
            raise ValueError(f'{type(self).__name__}: a batch of {batch} cannot be split into num_splits={n} equal '
                             f'sub-batches; use a batch size divisible by {n}')
        chunks = x.chunk(n, dim=0)                         # n views of (B/n) x C x ..., x's strides kept
        if not self.track_running_stats:
            return torch.cat([F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                              for c in chunks])

        self.num_batches_tracked.add_(1)                   # once per forward, as one BatchNorm counts
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # momentum=1 makes F.batch_norm overwrite these rows with the sub-batch's own mean and unbiased variance
        # (0 * old + 1 * new), computed by the same fused kernel that normalises it.
        means = torch.zeros(n, self.num_features, device=x.device, dtype=self.running_mean.dtype)
        variances = torch.ones_like(means)
        out = torch.cat([F.batch_norm(c, means[i], variances[i], self.weight, self.bias, True, 1.0, self.eps)
                         for i, c in enumerate(chunks)])
        # One device keeps one copy of the running statistics, so it moves toward the average of the n sub-batches'
        # statistics: what n GPUs' copies, each updated with its own sub-batch, average to. The mean of the
        # sub-batch means is the whole batch's mean; the mean of their variances is the within-sub-batch variance,
        # which is what training normalised with, so eval mode later normalises the way training did.
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(means.mean(0), alpha=factor)
            self.running_var.mul_(1 - factor).add_(variances.mean(0), alpha=factor)
        return out

    def extra_repr(self):
        return super().extra_repr() + f', num_splits={self.num_splits}'


class SplitBatchNorm2d(_SplitBatchNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d that, in training mode, normalises the batch as ``num_splits`` equal sub-batches, each with
    its own statistics (MoCo's ShuffleBN, He et al. 2019, Sec. 3.3, emulated on one device).

    Input B x C x H x W, B divisible by num_splits (else ValueError); output the same shape and memory format.
    Running statistics move with ``momentum`` toward the mean over sub-batches of each sub-batch's mean and
    unbiased variance; num_batches_tracked grows by one per forward. Eval mode is nn.BatchNorm2d's.
    """

    def __init__(self, num_features, num_splits=2, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self._init_splits(num_splits)


class SplitBatchNorm1d(_SplitBatchNorm, nn.BatchNorm1d):
    """SplitBatchNorm2d for B x C or B x C x L inputs (nn.BatchNorm1d in eval mode)."""

    def __init__(self, num_features, num_splits=2, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self._init_splits(num_splits)


_SPLIT_CLASS = {nn.BatchNorm2d: SplitBatchNorm2d, nn.BatchNorm1d: SplitBatchNorm1d}


def convert_split_batchnorm(module, num_splits):
    """Replace every nn.BatchNorm2d / nn.BatchNorm1d in ``module`` (recursively, ``module`` itself included) by a
    Split version holding the very same parameter and buffer tensors (an optimizer or EMA that refers to them keeps
    working, and the state dict is unchanged), in the same training mode. Returns the converted module (a new
    object only when ``module`` itself is a BatchNorm). num_splits == 1 returns ``module`` unchanged; a module that
    is already split gets the new num_splits.
    """
    if not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f'num_splits must be a positive integer, got {num_splits!r}')
    if num_splits == 1:
        return module
    if isinstance(module, _SplitBatchNorm):
        module.num_splits = num_splits
        return module
    split_class = _SPLIT_CLASS.get(type(module))      # exact types: SyncBatchNorm and subclasses are left alone
    if split_class is not None:
        bn = module
        module = split_class(bn.num_features, num_splits, bn.eps, bn.momentum, affine=False,
                             track_running_stats=False)
        # Take over the originals rather than copies (affine / running stats as the original has them).
        module.affine, module.track_running_stats = bn.affine, bn.track_running_stats
        for name in ('weight', 'bias'):
            setattr(module, name, getattr(bn, name))
        for name in ('running_mean', 'running_var', 'num_batches_tracked'):
            module.register_buffer(name, getattr(bn, name))
        module.train(bn.training)
        return module
    for name, child in module.named_children():
        converted = convert_split_batchnorm(child, num_splits)
        if converted is not child:
            module.add_module(name, converted)
    return module


def shuffle_bn_mode(world_size=1, n_gpus_data_parallel=1, num_splits=1):
    """One line saying which ShuffleBN (MoCo Sec. 3.3) a MoCo run gets, for the log:
    DDP processes (each with its own BatchNorm), DataParallel GPUs (each replica's BatchNorm sees its slice), split
    BatchNorm on one device, or none."""
    splits = f', each split over {num_splits} sub-batches' if num_splits > 1 else ''
    if world_size > 1:
        return f'ShuffleBN across {world_size} processes (DDP){splits}'
    if n_gpus_data_parallel > 1:
        return f'ShuffleBN across {n_gpus_data_parallel} GPUs (DataParallel){splits}'
    if num_splits > 1:
        return f'ShuffleBN: split BatchNorm over {num_splits} sub-batches on one device'
    return 'ShuffleBN: none: one BatchNorm sees the whole batch (shuffling changes nothing)'
