"""--online_probe: a linear classifier trained alongside pretraining on the encoder's detached features, its val top-1
logged every epoch: the "online linear evaluation" of solo-learn (da Costa et al., JMLR 2022) and lightly's
``OnlineLinearClassifier``. It watches the encoder and never changes it: no gradient, no random draw, no extra
forward pass of the encoder during training.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from engine.data import eval_loader
from engine.errors import UserError
from engine.fit import EpochReport
from engine.knn import Interrupted, extract_features

CHECKPOINT_KEY = 'online_probe'        # the probe's entry in the run's checkpoints


class FeatureTap:
    """Keeps the input of each network's projection head (``network.projection_head`` names it: ResNet's ``fc``,
    whose input is ``forward(x, 6)``, the pooled features; HalfAlexNet's ``fc8``, whose input is fc7's output,
    ``forward(x, 7)``), detached, from the forward the encoder runs anyway: a forward hook, no second pass. ``dim``:
    the features' width, sum(D_v) over the views.

    It records in training mode, and in eval mode only inside ``recording()`` (the probe's val pass; the kNN
    monitor's pass records nothing). Under nn.DataParallel each replica runs the hook in its own thread on its slice
    of the batch: the slices are kept per (view, device) and put back in device order, the order of the scatter.
    """

    def __init__(self, networks):
        heads = [getattr(network, network.projection_head) for network in networks]
        self.dim = sum(next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features for head in heads)
        self.parts, self.evaluating = {}, False
        for view, head in enumerate(heads):
            head.register_forward_hook(self._hook(view))

    def _hook(self, view):
        def keep(module, inputs, output):
            if module.training or self.evaluating:
                x = inputs[0]                                               # B_d x D_v, this replica's slice
                self.parts[(view, x.get_device())] = x.detach()             # get_device(): -1 on the CPU
        return keep

    @contextmanager
    def recording(self):
        """Record the heads' inputs of eval-mode forwards too."""
        self.evaluating = True
        try:
            yield
        finally:
            self.evaluating = False

    def take(self, device):
        """The features of the last forward, B x sum(D_v) float32 on ``device`` (views concatenated in view
        order), and forget them."""
        parts, self.parts = self.parts, {}
        if not parts:
            raise RuntimeError('the online probe found no features: the forward never ran the projection heads')
        views = sorted({view for view, _ in parts})
        per_view = [torch.cat([parts[key].to(device) for key in sorted(k for k in parts if k[0] == view)])
                    for view in views]                                      # B x D_v each
        return torch.cat(per_view, 1).float()


class OnlineProbe(nn.Module):
    """A linear classifier on frozen features (the linear evaluation protocol of Zhang et al. 2016 and of every
    paper here), trained online: one step per pretraining batch on that batch's features, detached, and its labels.

    ``forward(features)``: B x D -> B x C logits, in float32 (also under --amp). The features pass a BatchNorm
    without affine parameters first (as LinearProbing.py --bn and MAE's linear probe): the features' scale changes as
    pretraining goes on and differs between encoders (the reference probed AlexNet with lr 0.1, ResNet-50 with 30),
    standardised they let one learning rate fit them all. The classifier starts at zero, a fine start for a convex
    problem, and one that draws nothing from the run's random streams.

    Its optimiser is its own SGD, lr 0.01 and momentum 0.9 (torch.optim.SGD's update), held in buffers so that the
    checkpoint holds all of it. 0.01, not 0.1: pretraining CMC resnet18v1 (512-d features) on the demo data at 32 px
    for 10 epochs, the probe's top-1 over epochs 6-10 was 35-42% with 0.1, 42-47% with 0.01 and with 0.001.
    Unlabelled items (target -1, STL-10's) are left out of the loss. Under torchrun the gradients and BatchNorm
    statistics are averaged over the processes (one all-reduce per step), so every process keeps the same probe.
    """

    def __init__(self, dim, n_classes, tap, rt, lr=0.01, momentum=0.9):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.weight = nn.Parameter(torch.zeros(n_classes, dim))              # C x D
        self.bias = nn.Parameter(torch.zeros(n_classes))                     # C
        self.register_buffer('weight_velocity', torch.zeros(n_classes, dim))
        self.register_buffer('bias_velocity', torch.zeros(n_classes))
        self.tap, self.rt, self.lr, self.momentum = tap, rt, lr, momentum

    def check_resumable(self, state, path):
        """Refuse, in one line, a checkpoint's probe (``state``) for another number of classes than this run's data
        set has (load_state_dict would only say "size mismatch")."""
        theirs, ours = tuple(state['weight'].shape) if 'weight' in state else None, tuple(self.weight.shape)
        if theirs is not None and theirs[0] != ours[0]:
            raise UserError(f'{path}: its online probe classifies {theirs[0]} classes, but the data set now has '
                            f'{ours[0]}; resume on the data it was trained on, or drop --online_probe to resume '
                            f'without the probe')

    def forward(self, features):
        with torch.autocast(features.device.type, enabled=False):
            return F.linear(self.norm(features.float()), self.weight, self.bias)     # B x C

    def step(self, targets):
        """One SGD step on the features the tap kept from this batch's training forward; ``targets``: B labels on
        the device (-1: unlabelled). Its own backward: the encoder's gradients and the GradScaler never see it."""
        logits = self(self.tap.take(self.rt.device))                        # B x C
        labelled = (targets >= 0).sum().clamp(min=1)                        # no host sync
        loss = F.cross_entropy(logits, targets, ignore_index=-1, reduction='sum') / labelled
        self._descend(self._averaged(torch.autograd.grad(loss, [self.weight, self.bias])))

    def _averaged(self, grads):
        """Under torchrun the mean over processes of the gradients and of the BatchNorm running statistics, which
        each process moved with its own batch; the gradients as they are otherwise."""
        if not self.rt.distributed:
            return grads
        stats = [self.norm.running_mean, self.norm.running_var]
        flat = self.rt.all_sum(torch.cat([t.reshape(-1) for t in [*grads, *stats]])) / self.rt.world_size
        *grads, mean, var = flat.split([t.numel() for t in [*grads, *stats]])
        self.norm.running_mean.copy_(mean)
        self.norm.running_var.copy_(var)
        return [g.view_as(p) for g, p in zip(grads, (self.weight, self.bias))]

    @torch.no_grad()
    def _descend(self, grads):
        for param, velocity, grad in zip((self.weight, self.bias), (self.weight_velocity, self.bias_velocity), grads):
            velocity.mul_(self.momentum).add_(grad)
            param.sub_(velocity, alpha=self.lr)


def attach_online_probe(opt, rt, encode, model, splits, *, stepper, logged, saved):
    """--online_probe: build the probe on ``model``'s heads and hook it into a run, or say in one line why it is off
    (no labelled val split, or heads the training forward never runs).

    ``encode`` maps a uint8 batch on the device through ``model`` (the kNN monitor's: the same views, run eagerly);
    ``model`` is the encoder (``method.encoder``: a multi-view one or MoCo's query encoder), whose networks with a
    ``projection_head`` the probe reads in their order; ``splits()`` gives the labelled (train, val) sets at the
    evaluation crop or None (``inputs.splits.eval_splits``). The probe then steps after each forward
    (``stepper.probe``), evaluates at each epoch's end (``logged.evaluators``) and is saved under 'online_probe', an
    entry a checkpoint written without --online_probe may lack (``saved.optional``)."""
    if not opt.online_probe:
        return None
    if getattr(opt, 'objective', None) == 'predictive':
        rt.print('online probe off: --objective predictive never runs the encoders\' projection heads')
        return None
    found = splits()
    if found is None:
        rt.print('online probe off: the data set has no labelled train/val split to train and validate it on')
        return None
    tap = FeatureTap([m for m in model.modules() if hasattr(m, 'projection_head')])     # in view order
    probe = OnlineProbe(tap.dim, len(found[0].classes), tap, rt).to(rt.device)
    stepper.probe = probe
    stepper.train_modules.append(probe)
    logged.evaluators.append(evaluator(probe, encode, [model, probe], eval_loader(found[1], opt, rt, shard=True), rt))
    saved.modules[CHECKPOINT_KEY] = probe
    saved.optional += (CHECKPOINT_KEY,)
    return probe


def evaluator(probe, encode, modules, val_loader, rt):
    """The epoch-end evaluator (see ``engine.fit.Logged``): ``modules`` in eval mode, the probe's top-1 on the val
    split printed and logged (``online_probe_top1``). Under torchrun each process classifies its shard and the counts
    are summed. A stop signal interrupts it between batches, as it does the kNN monitor."""
    def logits(images):                                 # uint8 batch on the device -> B x C
        with probe.tap.recording():
            encode(images)
        return probe(probe.tap.take(rt.device))

    def evaluate(epoch, meters):
        for m in modules:
            m.eval()
        try:
            scores, labels = extract_features(logits, val_loader, rt)      # N_r x C, N_r
        except Interrupted:
            rt.print('online probe: interrupted by the stop signal')
            return None
        right, seen = rt.all_sum(torch.stack([(scores.argmax(1) == labels).sum(), labels.new_tensor(len(labels))])
                                 .double()).tolist()
        top1 = 100 * right / seen
        rt.print(f'online probe top-1 on val: {top1:.2f}')
        return EpochReport(scalars={'online_probe_top1': top1}, values={'online_probe_top1': top1})

    return evaluate
