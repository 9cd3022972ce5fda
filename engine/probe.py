"""The linear probe shared by LinearProbing.py and eval_moco_ins.py: a linear classifier trained on the frozen
features of a pretrained encoder at one layer, validated every epoch (CMC Sec. 4.1; Zhang et al. 2016's protocol)."""
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from engine.checkpoint import RunFolder, checkpoint_section, load_checkpoint, load_weights, trained_model
from engine.data import eval_loader, make_loader
from engine.finite import refuse_non_finite
from engine.fit import Checkpointed, EpochReport, Fit, Logged, on_rank0
from engine.loop import Stepper, StepResult
from engine.meters import AverageMeter, accuracy, format_meters
from engine.runtime import unwrap
from engine.schedule import LearningRate

FIELDS = [('loss', 'Loss'), ('acc1', 'Acc@1'), ('acc5', 'Acc@5')]
# Flags that fix what a probe checkpoint means (the classifier's input, its optimizer state, the batches done).
FIXED_FLAGS = ('model', 'layer', 'view', 'probe_views', 'bn', 'adam', 'batch_size', 'dataset', 'model_path')


@dataclass
class ProbeSpec:
    """What a probe script supplies. ``make_encoder(feat_dim)`` builds the pretrained architecture;
    ``features(encoder, x) -> B x C [x H x W]`` runs it on a normalised batch; ``make_classifier(C, n)`` builds the
    head for C feature channels and n classes; ``view`` turns uint8 crops into the encoder's input; ``splits()``
    builds the labelled (train, val) data sets (``inputs.splits.probe_splits``), after the checkpoint has loaded."""
    make_encoder: Callable
    features: Callable
    make_classifier: Callable
    view: nn.Module
    splits: Callable
    adam: bool = False
    cosine: bool = False
    warm_epochs: int = 0                       # 0: no warm-up
    sync_bn: bool = False


def load_pretrained(make_encoder, opt):
    """Build the encoder with the checkpoint's ``--feat_dim`` and load its ``model`` entry (ours or the reference's,
    ``module.`` keys or not). Returns (encoder, checkpoint)."""
    ckpt = load_checkpoint(opt.model_path)
    pretrain_opt = ckpt.get('opt') if isinstance(ckpt.get('opt'), dict) else {}
    refuse_non_finite(ckpt, opt.model_path)
    model = make_encoder(pretrain_opt.get('feat_dim', 128))
    load_weights(model, checkpoint_section(ckpt, 'model', opt.model_path), f'--model {opt.model}', opt.model_path,
                 trained_model(ckpt))
    return model, ckpt


class FeatureBN(nn.Module):
    """``--bn``: a parameter-free BatchNorm on the frozen features before the linear layer (2-d or 4-d input)."""

    def __init__(self, channels):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, affine=False)

    def forward(self, x):
        if x.dim() == 4:                       # B x C x H x W -> B x C x HW: per-channel statistics, as BatchNorm2d
            return self.bn(x.flatten(2)).view_as(x)
        return self.bn(x)


class FrozenEncoder:
    """The pretrained encoder, frozen and in eval mode: ``__call__(uint8 images) -> float32 features``."""

    def __init__(self, spec, opt, rt):
        self.encoder, self.ckpt = load_pretrained(spec.make_encoder, opt)
        rt.place(self.encoder).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.features, self.view, self.rt = spec.features, spec.view.to(rt.device), rt
        # Under DataParallel the frozen encoder, the costly part, runs on every GPU too (not under DDP: no gradients)
        self.run = rt.wrap(self.encoder) if rt.n_data_parallel > 1 else self.encoder
        rt.print(f"==> loaded pretrained {opt.model_path} (epoch {self.ckpt.get('epoch', '?')})")

    @torch.no_grad()
    def __call__(self, images):
        with self.rt.autocast():
            x = self.view(images.to(self.rt.device, non_blocking=True))
            return self.features(self.run, x).float()


class _ProbeHead(nn.Module):
    """The optional parameter-free BatchNorm followed by the linear classifier."""

    def __init__(self, bn, classifier):
        super().__init__()
        self.bn, self.classifier = bn, classifier

    def forward(self, feat):
        return self.classifier(self.bn(feat) if self.bn is not None else feat)


class _CachedFeatures(torch.utils.data.Dataset):
    """Precomputed (feature, target) pairs served as (feature, target, index), like the image data sets."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        f, t = self.pairs[i]
        return f, t, i


def _features_and_targets(frozen, data, opt, rt, rows=None):
    """--cache_features: this process's share of ``data`` (``ShardSampler``: images rank, rank + W, ...; all of them
    in one process) through the frozen encoder, kept in host memory as float16 (half the memory; the features are
    normalised by --bn or used by a linear layer, where float16's 3 significant digits do not show). ``rows``: keep
    only the first ``rows`` (every process then steps through the same number of batches). Returns
    (n x C [x H x W] float16 features, n targets). Each batch is copied into one preallocated tensor, so the peak
    is the cache itself (a list of batches joined by torch.cat would need twice that)."""
    loader = eval_loader(data, opt, rt, shard=True)
    feats, targets, filled = None, [], 0
    for x, t, _ in loader:
        batch = frozen(x).to('cpu', torch.float16)                                   # b x C [x H x W]
        if feats is None:
            feats = torch.empty((len(loader.sampler), *batch.shape[1:]), dtype=torch.float16)
        feats[filled:filled + len(batch)] = batch
        filled += len(batch)
        targets.append(torch.as_tensor(t))
    if feats is None:                                     # a share with no images (more processes than images)
        return torch.empty(0, dtype=torch.float16), []
    return feats[:filled][:rows], torch.cat(targets).tolist()[:rows]


def _batched(pairs, batch_size):
    batches = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        batches.append((torch.cat([f for f, _ in chunk]), torch.cat([t for _, t in chunk])))
    return batches


class Validation:
    """The probe's epoch-end evaluator: validates on the whole val split, writes the log line, keeps the best."""

    def __init__(self, opt, rt, head, batches, n_batches, n_label, saved, paths):
        self.opt, self.rt, self.head, self.batches, self.n_batches = opt, rt, head, batches, n_batches
        self.n_label, self.saved, (self.log_path, self.best_path) = n_label, saved, paths
        self.criterion = nn.CrossEntropyLoss()

    @torch.no_grad()
    def run(self):
        """Loss, top-1 and top-5 over the val split (meters)."""
        self.head.eval()
        meters = {k: AverageMeter() for k, _ in FIELDS}
        for i, (feat, target) in enumerate(self.batches()):
            target = target.to(self.rt.device)
            output = self.head(feat.to(self.rt.device).float()).float()     # cached features are float16
            acc1, acc5 = accuracy(output, target, topk=(1, min(5, self.n_label)))
            batch = torch.cat([self.criterion(output, target).reshape(1), acc1, acc5]).tolist()   # one sync
            for (key, _), value in zip(FIELDS, batch):
                meters[key].update(value, target.shape[0])
            if (i + 1) % self.opt.print_freq == 0:
                self.rt.print(f'Test: [{i + 1}/{self.n_batches}]\t' + format_meters(meters, FIELDS))
        if self.rt.distributed:             # each process saw its share of val: the averages over all of it
            sums = self.rt.all_sum(torch.tensor([meters[k].sum for k, _ in FIELDS] + [meters['loss'].count],
                                                dtype=torch.float64, device=self.rt.device)).tolist()
            for (key, _), total in zip(FIELDS, sums):
                meters[key].sum, meters[key].count, meters[key].avg = total, sums[-1], total / sums[-1]
        self.rt.print(f" * Acc@1 {meters['acc1'].avg:.3f} Acc@5 {meters['acc5'].avg:.3f}")
        return meters

    def __call__(self, epoch, meters):
        test = self.run()
        acc1, acc5 = test['acc1'].avg, test['acc5'].avg
        if self.rt.is_main:
            with open(self.log_path, 'a') as f:
                f.write(f"epoch {epoch} time {time.strftime('%Y-%m-%d %H:%M:%S')} train_loss {meters['loss'].avg:.4f} "
                        f"train_acc {meters['acc1'].avg:.3f} test_loss {test['loss'].avg:.4f} "
                        f"test_acc {acc1:.3f} test_acc5 {acc5:.3f}\n")
        report = EpochReport(scalars={'test_acc': acc1, 'test_acc5': acc5, 'test_loss': test['loss'].avg},
                             values={'last_acc1': acc1, 'last_acc5': acc5})
        if acc1 > self.saved.values['best_acc1']:       # the best so far (-1 before any), a resumed run's included
            report.values.update(best_acc1=acc1, best_acc5=acc5)
            self.rt.print('saving best model!')
            report.save_copy = self.best_path          # saved by the processes that write (engine.fit.Fit)
        return report


def _optimizer(params, opt, adam):
    if adam:
        return torch.optim.Adam(params, lr=opt.learning_rate, betas=(opt.beta1, opt.beta2),
                                weight_decay=opt.weight_decay, eps=1e-8)
    return torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)


def run_linear_probe(opt, rt, spec, argv):
    """Train a linear classifier on frozen features and validate it every epoch (both probe scripts).

    Returns the checkpointed values: best_acc1, best_acc5, last_acc1, last_acc5 (percent).
    """
    run = RunFolder(os.path.join(opt.save_path, opt.model_name), flag='--save_path')
    tb_name = f'{opt.model_name}_layer{opt.layer}'
    frozen = FrozenEncoder(spec, opt, rt)
    train_set, val_set = spec.splits()
    # The run folder is taken (locked) before the features are computed: a refusal costs nothing, and two probes
    # started together do not both compute them. Fit opens it again; until then a failure releases it.
    on_rank0(rt, lambda: run.open(opt, also=[os.path.join(opt.tb_path, tb_name)], quiet=True))
    try:
        return _fit_probe(opt, rt, spec, argv, run, frozen, train_set, val_set, tb_name)
    except BaseException:
        run.close(remove_empty=True)
        raise


def _fit_probe(opt, rt, spec, argv, run, frozen, train_set, val_set, tb_name):
    """The probe's head, its data (cached features or images) and ``Fit``, in a run folder already open."""
    n_label = len(train_set.classes)
    val_loader = eval_loader(val_set, opt, rt, shard=True)     # each val image in exactly one process
    channels = frozen(next(iter(val_loader))[0][:2]).shape[1]
    classifier = spec.make_classifier(channels, n_label).to(rt.device)
    feature_bn = FeatureBN(channels).to(rt.device) if opt.bn else None
    if opt.cache_features:                    # the frozen encoder runs once, not once per epoch
        # Each process caches and trains on its own share of the train split: equal shares (N // W), so that all
        # take the same number of steps; its sampler then shuffles that share (make_loader(..., sharded=True)).
        train_set = _CachedFeatures(list(zip(*_features_and_targets(frozen, train_set, opt, rt,
                                                                    rows=len(train_set) // rt.world_size))))
        val_feats = list(zip(*_features_and_targets(frozen, val_set, opt, rt)))
        cached = _batched([(f.unsqueeze(0), torch.as_tensor([t])) for f, t in val_feats], opt.batch_size)

        def val_batches():
            return cached
    else:
        def val_batches():
            return ((frozen(x), t) for x, t, _ in val_loader)
    loader = make_loader(train_set, opt, rt, seed=opt.seed or 0, sharded=opt.cache_features)
    optimizer = _optimizer(list(classifier.parameters()), opt, spec.adam)
    # Several processes train one classifier: DDP averages its gradients (--syncBN also syncs the --bn statistics).
    head = rt.wrap(_ProbeHead(feature_bn, classifier), sync_bn=spec.sync_bn)
    stepper = Stepper(ProbeObjective(head, rt, n_label), view=as_float32 if opt.cache_features else frozen,
                      set_lr=LearningRate(opt, optimizer, spec.cosine, spec.warm_epochs), targets=True)
    saved = Checkpointed(modules=_saved(head), optimizer=optimizer,
                         values={'best_acc1': -1.0, 'best_acc5': -1.0, 'last_acc1': 0.0, 'last_acc5': 0.0},
                         fixed_flags=FIXED_FLAGS)
    paths = os.path.join(run.path, opt.log), os.path.join(run.path, f'{opt.model}_layer{opt.layer}.pth')
    validation = Validation(opt, rt, head, val_batches, len(val_loader), n_label, saved, paths)
    logged = Logged(fields=FIELDS, tags=[('acc1', 'train_acc'), ('acc5', 'train_acc5'), ('loss', 'train_loss'),
                                         ('learning_rate', 'learning_rate')],
                    tb_name=tb_name, evaluators=[validation])
    result = Fit(opt, rt, run, loader, saved, stepper, logged, argv)()
    rt.print(f"best Acc@1 {result['best_acc1']:.3f} (Acc@5 {result['best_acc5']:.3f})")
    return result


def _saved(head):
    """The probe's checkpoint entries: the classifier, and the --bn statistics when there are any."""
    inner = unwrap(head)
    return {'classifier': inner.classifier, **({'feature_bn': inner.bn} if inner.bn is not None else {})}


def as_float32(features):
    """The probe's view of cached features (float16 in host memory): float32."""
    return features.float()


class ProbeObjective(nn.Module):
    """The probe's objective, stepped by the loop like a method's: cross-entropy of the head (``--bn`` and the linear
    classifier, under DDP when several processes train it) on B frozen features, with top-1 / top-5 (percent) as
    metrics. ``forward(features, targets) -> StepResult``."""

    console_fields = FIELDS

    def __init__(self, head, rt, n_label):
        super().__init__()
        self.head, self.rt, self.n_label = head, rt, n_label
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, feat, target):
        with self.rt.autocast():
            output = self.head(feat)
        output = output.float()
        loss = self.criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, min(5, self.n_label)))
        return StepResult(loss=loss, metrics={'loss': loss, 'acc1': acc1[0], 'acc5': acc5[0]})
