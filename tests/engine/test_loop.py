"""engine.loop.train_epoch reads the loss and metrics every print_freq steps, not every step: the meters still get one
update per step, a non-finite loss is still named by its first step, and a signal still stops after the current
step (single process). In-process, a linear model: well under a second."""
import types

import pytest
import torch

from engine import runtime
from engine.errors import TrainingStopped
from engine.loop import Stepper, StepResult, train_epoch
from engine.signals import StopSignal

FIELDS = [('loss', 'loss'), ('prob', 'prob')]


class Loader(list):
    """Batches with a sampler that knows the epoch's length, as engine.data.make_loader's."""

    def __init__(self, batches):
        super().__init__(batches)
        self.sampler = types.SimpleNamespace(batches_per_epoch=lambda: len(batches))


class Steps(torch.nn.Module):
    """A method whose step i returns loss losses[i] (times a parameter, so backward runs); ``stop_after``: the step
    during which a signal arrives."""

    def __init__(self, losses, stop, stop_after):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.losses, self.stop, self.stop_after = losses, stop, stop_after

    def forward(self, x, index):
        step = int(index[0])
        if self.stop_after is not None and step + 1 == self.stop_after:
            self.stop.signum = 15                      # as SIGTERM's handler would, during this step
        loss = self.weight * self.losses[step]
        return StepResult(loss=loss, metrics={'loss': loss, 'prob': torch.tensor(step * 1.0)})


def run(losses, print_freq, stop_after=None, reads=None, view=lambda x: x):
    """One epoch of ``Steps`` over batches of 2 items; returns (meters, steps)."""
    stop = StopSignal()
    rt = runtime.Runtime(device=torch.device('cpu'), scaler=torch.amp.GradScaler('cpu', enabled=False))
    method = Steps(losses, stop, stop_after)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.0)
    stepper = Stepper(method, view=view, set_lr=lambda *a: None)
    batches = [(torch.zeros(2, 1), torch.zeros(2), torch.full((2,), i)) for i in range(len(losses))]
    return train_epoch(epoch=1, loader=Loader(batches), stepper=stepper, optimizer=optimizer,
                       rt=rt, opt=types.SimpleNamespace(print_freq=print_freq, nce_t=0.07), stop=stop, fields=FIELDS)


def test_meters_get_every_step_when_read_every_print_freq_steps():
    meters, steps = run([1.0, 2.0, 3.0, 4.0, 5.0], print_freq=3)      # read after steps 3 and 5 (the last)
    assert steps == 5 and meters['loss'].count == 10                  # 5 steps x batch 2
    assert meters['loss'].avg == pytest.approx(3.0) and meters['loss'].val == 5.0
    assert meters['prob'].avg == pytest.approx(2.0)


@pytest.mark.parametrize('print_freq', [1, 4, 100])
def test_the_first_non_finite_step_is_named_even_when_read_later(print_freq):
    with pytest.raises(TrainingStopped) as stopped:
        run([1.0, float('nan'), float('inf'), 1.0, 1.0], print_freq=print_freq)
    assert str(stopped.value).startswith('error: the loss is nan at epoch 1, step 2 of 5;')


def test_a_signal_stops_after_the_current_step_in_one_process():
    meters, steps = run([1.0] * 8, print_freq=5, stop_after=3)
    assert steps == 3 and meters['loss'].count == 6                   # read before stopping: 3 steps x batch 2


class Echo(torch.nn.Module):
    """A method that returns what the stepper handed it, as metrics."""

    def forward(self, x, second):
        loss = x.sum() * 0
        return StepResult(loss=loss, metrics={'x': x, 'second': second})


@pytest.mark.parametrize('targets', [False, True])
def test_the_stepper_hands_the_view_of_the_images_and_the_indices_or_the_targets(targets):
    batch = (torch.arange(6.0).view(2, 3), [4, 5], torch.tensor([7, 9]))     # images, targets, data-set indices
    stepper = Stepper(Echo(), view=lambda x: x * 10, set_lr=lambda *a: None, targets=targets)
    result = stepper(batch, torch.device('cpu'))
    assert torch.equal(result.metrics['x'], torch.arange(6.0).view(2, 3) * 10)
    assert result.metrics['second'].tolist() == ([4, 5] if targets else [7, 9])
    assert stepper.train_modules == [stepper.method]
    stepper.after_step()                                     # a method without after_step: nothing to do


class HintedView:
    """A view that knows what a non-finite loss may come from (as views.ViewStack does for the user's own views)."""
    non_finite_hint = ' Or a view of yours returned NaN or inf after its first batch: edges (edges_view.py).'

    def __call__(self, x):
        return x


def test_a_non_finite_loss_names_the_users_views_among_its_causes():
    with pytest.raises(TrainingStopped) as stopped:
        run([1.0, float('nan')], print_freq=1, view=HintedView())
    assert str(stopped.value).startswith('error: the loss is nan at epoch 1, step 2 of 2;')
    assert str(stopped.value).endswith('try a lower --learning_rate, a higher --nce_t or no --amp. Or a view of yours '
                                       'returned NaN or inf after its first batch: edges (edges_view.py).')
