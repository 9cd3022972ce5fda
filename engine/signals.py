"""Stop signals: SIGTERM / SIGINT turned into a flag the epoch loop reads after each step, agreed across torchrun
processes, and the line a stopped run ends with."""
import shlex
import signal

import torch
import torch.distributed as dist


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag the epoch loop checks after each step (a scheduler's pre-emption).

    ``signum`` is this process's signal, set by the handler at any moment. Under torchrun the processes must stop
    after the same step (one stopping alone would leave the others waiting in DDP's all-reduce), so there the loop
    decides on ``agreed_signum`` only, which collectives set identically in every process: ``poll`` after each step
    (a vote sent without waiting and read one step later, on a gloo group: no host sync with the GPU) and ``agreed``
    at the epoch's end. torchrun's agent kills 30 s after its SIGTERM; stopping waits at most one more step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    active = None                          # the StopSignal in force (one per process), for ``stop_pending``

    def __init__(self):
        self.signum = None
        self.agreed_signum = None
        self._old = {}
        self._vote = None                  # (async work, CPU tensor) of the vote sent after the previous step

    def __enter__(self):
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        StopSignal.active = self
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:   # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        StopSignal.active = None
        for s, old in self._old.items():
            signal.signal(s, old)
        if self._vote is not None:             # left in flight by an error: a pending collective hangs the exit
            self._vote[0].wait()
            self._vote = None
        return False

    @property
    def requested(self):
        return self.signum is not None

    def adopt(self, votes):
        """Take the signal any process got (votes: how many processes got each of SIGNALS)."""
        got = [s for s, n in zip(self.SIGNALS, votes) if n > 0]
        if got and self.agreed_signum is None:
            self.agreed_signum = self.signum = got[0]

    def _my_votes(self):
        return torch.tensor([self.signum == s for s in self.SIGNALS], dtype=torch.float32)

    def poll(self, rt):
        """After each step: whether to stop now. One process: its own signal. Under torchrun: read the vote sent
        after the previous step (all processes read the same sum), then send this step's."""
        if not rt.distributed:
            return self.requested
        self.collect()
        if self.agreed_signum is None:
            votes = self._my_votes()
            self._vote = (dist.all_reduce(votes, group=rt.signal_group, async_op=True), votes)
        return self.agreed_signum is not None

    def collect(self):
        """Read the vote in flight, if any (every process at the same point)."""
        if self._vote is not None:
            work, votes = self._vote
            work.wait()
            self._vote = None
            self.adopt(votes.tolist())

    def agreed(self, rt):
        """Whether to stop now (a collective under torchrun: every process calls it at the same point)."""
        if not rt.distributed:
            return self.requested
        self.collect()
        votes = self._my_votes()
        dist.all_reduce(votes, group=rt.signal_group)                    # how many processes got each signal
        self.adopt(votes.tolist())
        return self.agreed_signum is not None


def stop_pending(rt):
    """Whether work that only monitors the run (the kNN pass between epochs) should give way: a signal came, in a
    single process (under torchrun every process must reach the same collectives, so there it runs to its end)."""
    return StopSignal.active is not None and StopSignal.active.requested and not rt.distributed


def resume_command(script_argv, ckpt_path, launcher=('python',)):
    """The command that continues a run from ``ckpt_path``: the command as typed, its --resume replaced."""
    argv, rest = [], list(script_argv)
    while rest:
        arg = rest.pop(0)
        if arg == '--resume':
            rest = rest[1:]
        elif not arg.startswith('--resume='):
            argv.append(arg)
    return shlex.join([*launcher, *argv, '--resume', ckpt_path])


def stop_message(stop, ckpt_path, epochs_done, resume_step, n_batches, command):
    """The one line a stopped run ends with: where it stopped and the command that continues it."""
    name = signal.Signals(stop.signum).name
    where = (f'at epoch {epochs_done + 1}, step {resume_step} of {n_batches}' if resume_step else
             f'after epoch {epochs_done}')
    return f'stopped by {name} {where}; the position is saved in {ckpt_path}. Resume with: {command}'
