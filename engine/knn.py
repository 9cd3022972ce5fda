"""The weighted k-nearest-neighbour monitor (Wu et al., 2018, Sec. 3.4) run between epochs."""
import torch
import torch.nn.functional as F

from engine.data import eval_loader
from engine.fit import EpochReport
from engine.signals import stop_pending


class Interrupted(Exception):
    """A stop signal came during the kNN pass: the run saves and stops without this epoch's kNN figure."""


@torch.no_grad()
def extract_features(encode, loader, rt):
    """Run ``encode`` (uint8 batch on device -> B x D features) over a loader; returns (features, labels) on device.
    A stop signal (one process) interrupts it between batches (``Interrupted``): a stop waits for a step, not for the
    monitor's pass over the data."""
    feats, labels = [], []
    for images, target, _ in loader:
        if stop_pending(rt):
            raise Interrupted
        with rt.autocast():
            f = encode(images.to(rt.device, non_blocking=True))
        feats.append(f.float())
        labels.append(torch.as_tensor(target).to(rt.device))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_feats, train_labels, query_feats, n_classes, k=200, t=0.07, chunk=1024):
    """Weighted kNN of Wu et al., 2018 (instance discrimination), eq. in Sec. 3.4.

    Each of the k most similar training features (cosine similarity s_i) votes for its class with weight
    exp(s_i / t); returns the class scores, Q x n_classes. Features are L2-normalised here.
    """
    train_feats = F.normalize(train_feats, dim=1)                  # N x D
    query_feats = F.normalize(query_feats, dim=1)                  # Q x D
    k = min(k, train_feats.shape[0])
    scores = []
    for q in query_feats.split(chunk):
        sim = q @ train_feats.t()                                  # q x N
        top_sim, top_idx = sim.topk(k, dim=1)                      # q x k
        weights = (top_sim / t).exp()
        votes = torch.zeros(q.shape[0], n_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)      # q x C
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(encode, train_loader, val_loader, n_classes, rt, k=200, t=0.07):
    """Top-1 (%) of the weighted kNN classifier on the val split, with features of the (unaugmented) train split.

    Under torchrun the loaders are shards (``eval_loader(..., shard=True)``): each process encodes its share of
    both splits, the train features (N x D) are gathered to every process, each classifies its share of val, and
    the correct counts are summed, so every val image counts once and every process returns the same number.
    """
    train_feats, train_labels = extract_features(encode, train_loader, rt)
    train_feats, train_labels = rt.gather_shards(train_feats), rt.gather_shards(train_labels)
    val_feats, val_labels = extract_features(encode, val_loader, rt)
    pred = knn_predict(train_feats, train_labels, val_feats, n_classes, k, t).argmax(1)
    counts = rt.all_sum(torch.stack([(pred == val_labels).sum(), torch.tensor(len(val_labels), device=pred.device)])
                        .double())
    return (counts[0] / counts[1]).item() * 100


def knn_monitor(opt, rt, encode, modules, splits):
    """An epoch-end evaluator (see ``engine.fit.Logged``) printing and logging the weighted kNN top-1 every
    ``opt.knn_freq`` epochs, or None when it is off or there is no labelled val split.

    ``encode`` maps a uint8 batch on the device to B x D features; ``modules`` are put in eval mode first;
    ``splits()`` gives the labelled (train, val) data sets at the evaluation crop, val's labels numbered as train's,
    or None when there are none (``inputs.splits.eval_splits``): called only when the monitor is on.
    """
    if opt.knn_freq is None:
        opt.knn_freq = 0 if opt.dataset in ('imagenet', 'imagenet100') else 1
    if opt.knn_freq <= 0:
        return None
    found = splits()
    if found is None:
        rt.print('kNN monitor off: no labelled train/val split found')
        return None
    train_set, val_set = found
    n_classes = len(train_set.classes)

    def loader(d):
        return eval_loader(d, opt, rt, shard=True)         # every process encodes its share

    train_loader, val_loader = loader(train_set), loader(val_set)

    def evaluate(epoch, meters):
        if epoch % opt.knn_freq != 0 and epoch != opt.epochs:
            return None
        for m in modules:
            m.eval()
        try:
            top1 = knn_accuracy(encode, train_loader, val_loader, n_classes, rt)
        except Interrupted:
            rt.print('kNN monitor: interrupted by the stop signal')
            return None
        rt.print(f'kNN (k=200, t=0.07) top-1 on val: {top1:.2f}')
        return EpochReport(scalars={'knn_top1': top1}, values={'knn_top1': top1})

    return evaluate
