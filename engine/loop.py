"""The loop: one training step and epoch, the same for every method and for the linear probe.

A step is ``stepper.method(stepper.view(images), index)`` (``Stepper``): the view turns the loader's batch into the
method's input on the device, and the method returns a ``StepResult`` (the loss and its named metrics); then backward
through the GradScaler, the optimizer step and the method's ``after_step`` (MoCo's EMA).
"""
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from engine.errors import TrainingStopped
from engine.finite import likely_causes
from engine.logger import progress
from engine.meters import AverageMeter, format_meters


@dataclass
class StepResult:
    """What every method's forward returns (CMC, the predictive baseline, InsDis, MoCo, the linear probe): the loss to
    minimise (a scalar tensor) and named metrics (scalar tensors, or numbers), averaged and logged by the loop. Both
    stay on the device until the loop reads them."""
    loss: torch.Tensor
    metrics: dict


@dataclass
class Stepper:
    """How to step: ``method(view(images), index)`` -> StepResult, where ``view`` maps the loader's batch (moved to
    the device) to the method's input and ``index`` are the items' data-set indices (their targets instead when
    ``targets``: the linear probe). ``set_lr(epoch, step_in_epoch, n_batches)`` runs before each step; after the
    optimizer step the method's ``after_step()``, if it has one (MoCo's momentum update). ``train_modules`` are put
    in train mode each epoch (default: the method). ``probe`` (--online_probe, ``engine.online_probe``) steps after
    each forward on the batch's targets."""
    method: nn.Module
    view: Callable
    set_lr: Callable
    targets: bool = False
    train_modules: Optional[list] = None
    probe: Optional[nn.Module] = None

    def __post_init__(self):
        if self.train_modules is None:
            self.train_modules = [self.method]

    def __call__(self, batch, device):
        """One batch (images, targets, indices) -> the method's StepResult."""
        images, targets, index = batch
        x = self.view(images.to(device, non_blocking=True))
        result = self.method(x, torch.as_tensor(targets if self.targets else index).to(device, non_blocking=True))
        if self.probe is not None:
            self.probe.step(torch.as_tensor(targets).to(device, non_blocking=True))
        return result

    def after_step(self):
        after = getattr(self.method, 'after_step', None)
        if after is not None:
            after()


def train_epoch(*, epoch, loader, stepper, optimizer, rt, opt, stop, fields, start_step=0):
    """One training epoch shared by the four scripts.

    ``stepper(batch, device) -> StepResult`` computes the loss (``Stepper``); this loop does timing, the optimiser
    step through the GradScaler (a no-op without float16), ``stepper.after_step`` (MoCo's EMA), the non-finite-loss
    check, the reference's console lines, and stopping on a signal.

    No host synchronisation inside a step: each step's loss and metrics stay on the device (`Readings`) and are read
    in one copy every ``print_freq`` steps, at the epoch's last step and before stopping; the non-finite check then
    names the first bad step, and it runs before `Fit` can save anything. A signal: one process stops after the
    current step; under torchrun the processes agree one step later (``StopSignal.poll``), all after the same step.

    Returns ``(meters, steps_done)``; steps_done < steps per epoch means a signal stopped the epoch.
    """
    for m in stepper.train_modules:
        m.train()
    meters = {key: AverageMeter() for key, _ in fields}
    meters['BT'], meters['DT'] = AverageMeter(), AverageMeter()
    n_batches = loader.sampler.batches_per_epoch()
    readings = Readings(fields, rt, epoch, n_batches, start_step,
                        likely_causes(opt) + getattr(stepper.view, 'non_finite_hint', ''))
    step = start_step
    end = time.time()
    for batch in progress(loader, n_batches - start_step, f'epoch {epoch}', rt.is_main):
        meters['DT'].update(time.time() - end)
        stepper.set_lr(epoch, step, n_batches)
        result = stepper(batch, rt.device)
        optimizer.zero_grad(set_to_none=True)
        rt.scaler.scale(result.loss).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
        stepper.after_step()
        readings.add(result, len(batch[0]))
        step += 1
        stopping = stop.poll(rt)
        if step % opt.print_freq == 0 or step == n_batches or stopping:
            readings.read_into(meters)             # the one host sync of these steps; raises on a non-finite loss
        meters['BT'].update(time.time() - end)
        end = time.time()
        if rt.is_main and (step % opt.print_freq == 0):
            print(f'Train: [{epoch}][{step}/{n_batches}]\tBT {meters["BT"].val:.3f} ({meters["BT"].avg:.3f})\t'
                  f'DT {meters["DT"].val:.3f} ({meters["DT"].avg:.3f})\t' + format_meters(meters, fields), flush=True)
        if stopping:
            break
    readings.read_into(meters)                 # nothing pending unless the loader ran short
    stop.collect()                             # the last step's vote: no collective left in flight at the epoch's end
    return meters, step


class Readings:
    """The loss and metrics of the steps since the last read, kept on the device (one small tensor per step, at most
    print_freq of them), read in one device-to-host copy.

    In a multi-process run one all_reduce per read carries every pending step's loss (summed, so a non-finite loss in
    any process stops all of them at the same read) and the metrics (averaged over processes).
    """

    def __init__(self, fields, rt, epoch, n_batches, start_step, causes=''):
        self.fields, self.rt, self.epoch, self.n_batches, self.causes = fields, rt, epoch, n_batches, causes
        self.pending, self.batch_sizes, self.first_step = [], [], start_step   # steps first_step + 1, ...

    def add(self, result, batch_size):
        """Queue one step's [loss, metrics...] (a device tensor of 1 + len(fields) float32; no sync)."""
        device = result.loss.device
        parts = [result.loss.detach().float().reshape(1)]
        parts += [torch.as_tensor(result.metrics[key], device=device).detach().float().reshape(1)
                  for key, _ in self.fields]
        self.pending.append(torch.cat(parts))
        self.batch_sizes.append(batch_size)

    def read_into(self, meters):
        """Read the pending steps into ``meters`` (one update per step, as if read each step); raise TrainingStopped
        naming the first step whose loss is not finite. Under torchrun a collective: every process reads at the same
        steps."""
        if not self.pending:                   # the same in every process: all skip the collective
            return
        values, n_steps = self._gather()
        for offset, row in enumerate(values[:n_steps]):
            if not math.isfinite(row[0]):     # every process sees the same sum: all stop here, one says why
                raise TrainingStopped(non_finite_message(row[0], self.epoch, self.first_step + offset + 1,
                                                         self.n_batches, self.causes) if self.rt.is_main else '',
                                      exit_code=3)
            for (key, _), value in zip(self.fields, row[1:]):
                meters[key].update(value, self.batch_sizes[offset])
        self.first_step += n_steps
        self.pending, self.batch_sizes = [], []

    def _gather(self):
        """(rows as Python lists, number of step rows): one copy; under torchrun one all_reduce."""
        width = 1 + len(self.fields)
        device = self.pending[0].device if self.pending else self.rt.device
        rows = torch.stack(self.pending) if self.pending else torch.zeros(0, width, device=device)
        if not self.rt.distributed:
            return rows.tolist(), len(self.pending)
        flat = rows.reshape(-1).clone()
        dist.all_reduce(flat)
        host = flat.tolist()
        table = [host[i * width:(i + 1) * width] for i in range(len(self.pending))]
        for row in table:
            row[1:] = [value / self.rt.world_size for value in row[1:]]
        return table, len(self.pending)


def non_finite_message(value, epoch, step, n_batches, causes):
    """The one line a run stopped by a non-finite loss ends with (``causes``: the script's likely causes)."""
    return (f'error: the loss is {value} at epoch {epoch}, step {step} of {n_batches}; stopped without '
            f'saving, the last checkpoint is kept as it was. {causes}')
