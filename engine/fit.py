"""The fit driver shared by the four scripts (resume, epochs, TensorBoard, checkpoints, signals) and what configures
it: ``Checkpointed`` (what to save), ``Logged`` (what to log, and the epoch-end evaluators) and ``EpochReport``."""
import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from engine.checkpoint import load_checkpoint, load_weights, checkpoint_section, save_checkpoint, trained_model
from engine.data import set_loader_epoch
from engine.errors import TrainingStopped, UserError, dead_worker
from engine.finite import describe, first_non_finite, likely_causes, refuse_non_finite, run_tensors
from engine.flags import describe_changes, flag_changes, opt_to_dict
from engine.logger import TBLogger
from engine.loop import train_epoch
from engine.runtime import rng_state, set_rng_state, unwrap
from engine.signals import StopSignal, resume_command, stop_message


@dataclass
class Checkpointed:
    """What a checkpoint holds besides the position and RNG state: ``modules`` under their keys (model, contrast,
    model_ema, classifier...), the optimizer, and plain ``values`` (best_acc1...) that epoch reports update."""
    modules: dict
    optimizer: torch.optim.Optimizer
    values: dict = field(default_factory=dict)
    fixed_flags: tuple = ()       # flags a resumed run must share with its checkpoint (the model, K, T, the view...)
    optional: tuple = ()          # keys a checkpoint written without their flag (--<key>) lacks: they start afresh


@dataclass
class EpochReport:
    """What an epoch-end evaluator hands back: TensorBoard ``scalars`` (tag -> value) for this epoch, checkpointed
    ``values`` to update, and ``save_copy``, a path to also save this epoch's checkpoint to (the probe's best)."""
    scalars: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    save_copy: Optional[str] = None


@dataclass
class Logged:
    """What to log: console ``fields`` (meter key, label) each print_freq steps; TensorBoard ``tags`` (meter key or
    'learning_rate', tag) each epoch under ``tb_name``; ``evaluators``, each ``(epoch, meters) -> EpochReport or
    None``, run at the end of each epoch (the kNN monitor, the probe's validation)."""
    fields: list
    tags: list
    tb_name: str
    evaluators: list = field(default_factory=list)

    def __post_init__(self):
        self.evaluators = [e for e in self.evaluators if e is not None]     # None: an evaluator that is off


def on_rank0(rt, work, default=None):
    """``work()`` on the main process, its result given to every process (``default`` where it did not run). A
    UserError it raises ends every process with that same line, said once, instead of leaving the others waiting in
    the broadcast."""
    result, failure = default, None
    if rt.is_main:
        try:
            result = work()
        except UserError as e:
            failure = str(e)
    if rt.distributed:
        holder = [result, failure]
        dist.broadcast_object_list(holder, src=0)
        result, failure = holder
    if failure is not None:
        raise UserError(failure)
    return result


class Fit:
    """The epoch-level driver shared by the four scripts: resume, epochs, TensorBoard, checkpoints, signals.

    A checkpoint records ``epoch``, the last finished epoch (the reference's meaning), and ``resume_step``, the
    batches already done of the next one, besides ``checkpointed``'s modules, optimizer and values.
    """

    def __init__(self, opt, rt, run, loader, checkpointed, stepper, logged, argv=None):
        self.opt, self.rt, self.run, self.loader = opt, rt, run, loader
        self.saved, self.stepper, self.logged = checkpointed, stepper, logged
        self.argv = argv or sys.argv
        self.tb = TBLogger(os.path.join(opt.tb_path, logged.tb_name), enabled=rt.is_main)
        self.start_epoch, self.start_step = 1, 0
        self.writer = rt.is_main        # which processes save (decided per run by _is_writer)
        self.saved_once = False         # whether this run wrote a checkpoint yet

    def rng_states(self):
        """Every process's RNG states, in rank order. A collective in a multi-process run: all processes call it."""
        mine = rng_state()
        if not self.rt.distributed:
            return [mine]
        states = [None] * self.rt.world_size
        dist.all_gather_object(states, mine)
        return states

    def state(self, epoch, resume_step, rngs=None):
        """The checkpoint of this run after ``epoch`` finished epochs and ``resume_step`` batches of the next."""
        rngs = rngs or [rng_state()]
        state = {'opt': opt_to_dict(self.opt), 'epoch': epoch, 'resume_step': resume_step,
                 'world_size': self.rt.world_size,
                 'optimizer': self.saved.optimizer.state_dict(), 'rng': rngs[0],
                 'rng_per_process': rngs if len(rngs) > 1 else None}
        for key, module in self.saved.modules.items():
            state[key] = unwrap(module).state_dict()
        if self.rt.scaler.is_enabled() or self.rt.amp_dtype is not None:
            state['amp'] = self.rt.scaler.state_dict()
        state.update(self.saved.values)
        return state

    def resume(self, path):
        ckpt = load_checkpoint(path)
        self._check_kind(ckpt, path)
        self._check_flags(ckpt, path)
        refuse_non_finite(ckpt, path)
        for key, module in self.saved.modules.items():
            if key not in ckpt and key in self.saved.optional:       # written without that flag
                self.rt.print(f'note: {path} was written without --{key}: a fresh {key.replace("_", " ")} starts')
                continue
            check = getattr(unwrap(module), 'check_resumable', None)     # a module's own one-line refusal, first
            if check is not None:
                check(checkpoint_section(ckpt, key, path), path)
            load_weights(unwrap(module), checkpoint_section(ckpt, key, path), f'the {key} of --model {self.opt.model}',
                         path, trained_model(ckpt))
        if 'optimizer' in ckpt:
            try:
                self.saved.optimizer.load_state_dict(ckpt['optimizer'])
            except (ValueError, KeyError) as e:
                raise UserError(f'{path}: the optimizer state does not fit this run ({e}); resume it with the script '
                                f'and flags that wrote it, or start a new run in another {self.run.flag}')
        self._resume_scaler(ckpt, path)
        per_process = ckpt.get('rng_per_process')
        if per_process is not None and len(per_process) == self.rt.world_size:
            set_rng_state(per_process[self.rt.rank])
        elif ckpt.get('rng') is not None:
            set_rng_state(ckpt['rng'])
        for key in self.saved.values:
            if key in ckpt:
                self.saved.values[key] = ckpt[key]
        self.start_epoch = int(ckpt.get('epoch', 0)) + 1
        self.start_step = int(ckpt.get('resume_step', 0))
        self.rt.print(f"=> resumed from {path}: epoch {self.start_epoch}, step {self.start_step}")

    def _check_kind(self, ckpt, path):
        """Refuse a checkpoint of the other kind: a pretraining one given to a probe's --resume, or the reverse, or
        one of the other pretraining script (CMC's flags have --view, InsDis / MoCo's --moco)."""
        probe = 'classifier' in self.saved.modules
        saved = ckpt.get('opt') if isinstance(ckpt.get('opt'), dict) else {}
        for flag, script in (('moco', 'train_moco_ins.py'), ('view', 'train_CMC.py')):
            if not probe and flag in saved and flag not in vars(self.opt):
                raise UserError(f'{path} was written by {script}: resume it with {script} (--resume takes a run of '
                                f'this script)')
        if any(key in ckpt for key in self.saved.modules) or ('classifier' in ckpt) == probe:
            return
        if probe:
            raise UserError(f'{path} is a pretraining checkpoint: give it to --model_path (the encoder to probe); '
                            f'--resume takes a probe run\'s current.pth (under --save_path), or auto')
        raise UserError(f'{path} is a linear probe\'s checkpoint: --resume takes a pretraining run\'s current.pth '
                        f'(under --model_path), or auto; a probe resumes with its own script\'s --resume')

    def _check_flags(self, ckpt, path):
        """Refuse a resume whose flags contradict the checkpoint's state (one line listing each); note the rest."""
        saved = ckpt['opt'] if isinstance(ckpt.get('opt'), dict) else {}
        fixed = set(self.saved.fixed_flags)
        if self.opt.seed_drawn:                 # no --seed: continue with the checkpoint's (0 before seeds were kept)
            self.opt.seed = saved.get('seed') or 0
            self.loader.sampler.seed = self.opt.seed
            saved = {name: value for name, value in saved.items() if name != 'seed'}
        elif ckpt.get('resume_step'):           # mid-epoch, another seed would reorder the rest of the epoch
            fixed.add('seed')
        refused, noted = flag_changes(saved, self.opt, fixed)
        processes = ckpt.get('world_size', len(ckpt.get('rng_per_process') or [None]) if 'rng' in ckpt else None)
        if processes is not None and processes != self.rt.world_size:
            refused.append(('nproc_per_node', processes, self.rt.world_size))
        if refused:
            # Another number of processes is not supported: --batch_size is per process (another count changes the
            # global batch and which images each process reads), and the checkpoint holds one RNG stream per process.
            why = (' (the number of processes fixes the global batch, --batch_size x processes, and the per-process '
                   'data order and RNG streams saved in the checkpoint)'
                   if any(name == 'nproc_per_node' for name, _, _ in refused) else '')
            raise UserError(f'cannot resume {path} with other values of flags that fix its state: '
                            f'{describe_changes(refused)}{why}; resume with the checkpoint\'s values, or start a new '
                            f'run in another {self.run.flag}')
        if noted:
            self.rt.print(f'note: resuming with changed flags: {describe_changes(noted)}')

    def _resume_scaler(self, ckpt, path):
        if ckpt.get('amp') and self.rt.scaler.is_enabled():
            if 'scale' in ckpt['amp']:
                self.rt.scaler.load_state_dict(ckpt['amp'])
            else:                               # the reference's apex loss-scaler state: start a fresh scaler
                self.rt.print(f'{path}: its amp entry is NVIDIA apex state; the GradScaler starts afresh')

    def __call__(self):
        """Run the remaining epochs; returns the checkpointed values (best_acc1...). The run folder is locked for this
        run from the start (``RunFolder.open``) to the end."""
        try:
            resume_path = self._resume_path()
            if resume_path:
                self.resume(resume_path)
            if self.opt.seed_drawn:
                seed = self.opt.seed
                self.rt.print(f'no --seed given: continuing with the checkpoint\'s seed {seed}' if resume_path else
                              f'no --seed given: drew seed {seed} (pass --seed {seed} to repeat this run)')
            self.writer = self._is_writer()
            with StopSignal() as stop:
                for epoch in range(self.start_epoch, self.opt.epochs + 1):
                    self._epoch(epoch, stop)
        except BaseException as error:
            if not self.saved_once:             # a run that failed before its first save leaves no events behind
                self.tb.discard()
            self.run.close(remove_empty=True)   # ... and no empty folder
            if isinstance(error, RuntimeError) and dead_worker(error) is not None:   # raised wherever the main
                # process was when its worker died; said by the process whose worker it was (run_main's say_once)
                raise TrainingStopped(self._dead_worker(error), exit_code=1) from None
            raise
        self.run.close()
        self.tb.close()
        return self.saved.values

    def _resume_path(self):
        """The checkpoint to resume from, as the main process found it (every process resumes from the same).
        A bad input the main process finds here (a missing --resume file, a run folder in the way) ends every
        process with the same UserError, printed once, instead of leaving the others in the broadcast."""
        default = self.opt.resume if self.opt.resume != 'auto' else ''
        return on_rank0(self.rt, lambda: self.run.open(self.opt, also=[self.tb.log_dir]), default)

    def _is_writer(self):
        """Whether this process writes checkpoints: global rank 0 always; under torchrun also each node's first
        process (LOCAL_RANK 0) when it cannot see the run folder rank 0 made, i.e. when the nodes share no file
        system, so that every node keeps a copy it can resume from (all copies hold the same state). On a shared
        file system one writer per path: two would race on the same file. A collective: every process calls it."""
        rt = self.rt
        if not rt.distributed:
            return rt.is_main
        holder = [f'.shared_fs_probe_{os.urandom(6).hex()}']
        dist.broadcast_object_list(holder, src=0)
        marker = os.path.join(self.run.path, holder[0])
        if rt.is_main:
            open(marker, 'w').close()
        dist.barrier()
        sees_rank0 = os.path.exists(marker)
        dist.barrier()
        if rt.is_main:
            os.remove(marker)
        writer = rt.is_main or (rt.is_local_main and not sees_rank0)
        failure = None
        if writer and not rt.is_main:
            try:
                self.run.open(argparse.Namespace(resume='', overwrite=True))     # makes and locks its own copy
            except UserError as e:
                failure = str(e)
            print(f'rank {rt.rank}: no shared file system with rank 0; this node saves its own copy of the '
                  f'checkpoints in {self.run.path}', flush=True)
        failures = [None] * rt.world_size
        dist.all_gather_object(failures, failure)
        if any(failures):
            raise UserError(next(f for f in failures if f))
        return writer

    def _epoch(self, epoch, stop):
        """One epoch, its reports and its checkpoint; stops the run (TrainingStopped) when a signal came."""
        set_loader_epoch(self.loader, epoch, self.start_step)
        t0 = time.time()
        meters, steps = train_epoch(epoch=epoch, loader=self.loader, stepper=self.stepper,
                                    optimizer=self.saved.optimizer, rt=self.rt, opt=self.opt, stop=stop,
                                    fields=self.logged.fields, start_step=self.start_step)
        if steps < self.loader.sampler.batches_per_epoch():                 # a signal arrived mid-epoch
            self._stop(stop, epoch - 1, steps)
        self._report_skipped()
        self.start_step = 0
        self.rt.print(f'epoch {epoch}, total time {time.time() - t0:.2f}')
        self.rt.broadcast_norm_buffers(*self.saved.modules.values())   # evaluate and save rank 0's model
        self._check_state(f'after epoch {epoch}')                     # before anything of the epoch is written
        for key, tag in self.logged.tags:
            value = self.saved.optimizer.param_groups[0]['lr'] if key == 'learning_rate' else meters[key].avg
            self.tb.log_value(tag, value, epoch)
        try:
            for evaluate in self.logged.evaluators:
                self._take(evaluate(epoch, meters), epoch)
        except RuntimeError as error:
            if dead_worker(error) is None or self.rt.distributed:
                raise
            self.run.save(self.state(epoch, 0), epoch, self.opt.save_freq)      # the epoch trained is not lost
            self.saved_once = True
            raise
        rngs = self.rng_states()
        self._save_everywhere(lambda: self.run.save(self.state(epoch, 0, rngs), epoch, self.opt.save_freq))
        self.tb.flush()
        if stop.agreed(self.rt):                    # a signal during the epoch-end work
            self._stop(stop, epoch, 0)

    def _take(self, report, epoch):
        """Log an evaluator's report, keep its values, and save the extra copy it asks for."""
        if report is None:
            return
        for tag, value in report.scalars.items():
            self.tb.log_value(tag, value, epoch)
        self.saved.values.update(report.values)
        if report.save_copy:
            self._save_everywhere(lambda: save_checkpoint(self.state(epoch, 0), report.save_copy, self.run.flag))

    def _save_everywhere(self, save):
        """Run ``save`` where this process writes checkpoints. A failure (a full disk) ends every process with its
        one line: under torchrun the others would otherwise wait in the next collective until a timeout."""
        failure = None
        if self.writer:
            try:
                save()
                self.saved_once = True
            except UserError as e:
                failure = str(e)
            except OSError as e:                  # not a full disk (that is a UserError): a permission, a lost mount
                failure = (f'could not save a checkpoint in {self.run.path}: {e}; make the folder writable (or give '
                           f'{self.run.flag} another one), then resume with --resume auto')
        if self.rt.distributed:
            failures = [None] * self.rt.world_size
            dist.all_gather_object(failures, failure)
            failure = next((f for f in failures if f is not None), None)
        if failure is not None:
            raise UserError(failure)

    def resume_command(self, path):
        """The command that continues this run from the checkpoint ``path``."""
        return resume_command(self.argv, path, self.launcher())

    def launcher(self):
        return (f'torchrun --nproc_per_node {self.rt.world_size}' if self.rt.distributed else 'python').split()

    def _dead_worker(self, error):
        """The one line for a loader worker that a signal killed (the kernel's out-of-memory killer, mostly): what
        died, the likely cause, and the command that continues from the last checkpoint, which is left as it was."""
        current = os.path.join(self.run.path, 'current.pth')
        again = (f'resume with: {self.resume_command(current)}' if os.path.isfile(current) else
                 f'nothing was saved yet: run {shlex.join([*self.launcher(), *self.argv])} again')
        return (f'error: {dead_worker(error)}, most likely by the kernel\'s out-of-memory killer: lower --num_workers '
                f'({self.opt.num_workers} now) or --batch_size ({self.opt.batch_size} now); the checkpoints written '
                f'are intact; {again}')

    def _check_state(self, when):
        """Stop, as a non-finite loss does and before anything is saved, when any tensor of the state (parameters,
        buffers, the optimizer's) holds NaN or inf. Under torchrun every process votes, so all stop together."""
        bad = first_non_finite(run_tensors(self.saved.modules, self.saved.optimizer))
        votes = self.rt.all_sum(torch.tensor([float(bad is not None)], device=self.rt.device))
        if votes.item():
            what = describe(*bad) if bad is not None else 'the state of another process'
            raise TrainingStopped(f'error: the state is not finite {when}: {what}; stopped without saving, the last '
                                  f'checkpoint is kept as it was. {likely_causes(self.opt)}' if self.rt.is_main else '',
                                  exit_code=3)

    def _report_skipped(self):
        """--skip_bad_images: say how many files were skipped (counted where they were read: with --num_workers 0
        here; workers warn once per file instead)."""
        skipped = getattr(self.loader.dataset, 'num_skipped', 0)
        if skipped:
            self.rt.print(f'skipped {skipped} undecodable image{"s" if skipped != 1 else ""} so far '
                          f'(--skip_bad_images)')

    def _stop(self, stop, epochs_done, resume_step):
        """Save the exact position (``epochs_done`` finished epochs plus ``resume_step`` batches) and stop."""
        path = os.path.join(self.run.path, 'current.pth')
        self._check_state(f'at epoch {epochs_done + 1}, step {resume_step}' if resume_step else
                          f'after epoch {epochs_done}')
        rngs = self.rng_states()
        self._save_everywhere(lambda: save_checkpoint(self.state(epochs_done, resume_step, rngs), path,
                                                      self.run.flag))
        self.tb.close()
        n_batches = self.loader.sampler.batches_per_epoch()
        message = stop_message(stop, path, epochs_done, resume_step, n_batches, self.resume_command(path))
        raise TrainingStopped(message if self.rt.is_main else '', exit_code=128 + stop.signum)   # said once
