"""--compile: torch.compile of the encoders, in place. The first step's loss equals eager's, the checkpoint's keys are
the eager run's, and a checkpoint resumes across the two (compiled -> eager and eager -> compiled).

The backend is aot_eager (CMC_COMPILE_BACKEND, which the scripts read): TorchDynamo captures the graphs and
AOTAutograd traces forward and backward exactly as for inductor (the default), but the graphs then run on eager
kernels instead of generated C++; inductor's code generation takes ~75 s for resnet18v1 on this 2-core CPU
(bench/README.md, "The step"), too long for a test. Dynamo's tracing alone is still ~10-30 s of the test."""

import pytest
import torch

import train_CMC
from engine import checkpoint
from engine.checkpoint import RunFolder
from engine.data import set_loader_epoch
from engine.errors import UserError
from engine.fit import Fit
from engine.runtime import COMPILE_BACKEND_ENV, compile_in_place, setup_runtime

pytestmark = pytest.mark.skipif(not hasattr(torch, 'compile'), reason='torch.compile is not available')


def _argv(tmp_path, data):
    return ['--dataset', 'folder', '--data_folder', data, '--model_path', str(tmp_path / 'm'),
            '--tb_path', str(tmp_path / 't'), '--model', 'alexnet', '--image_size', '64', '--batch_size', '8',
            '--nce_k', '8', '--softmax', '--num_workers', '0', '--device', 'cpu', '--seed', '0', '--knn_freq', '0']


def _steps(argv, n=1):
    """(fit driver, parts, [(loss, graphs compiled so far)] of the first n steps) of train_CMC with argv, its
    optimizer stepped n times."""
    opt = train_CMC.parse_option(argv)
    rt = setup_runtime(opt)                               # seeds from --seed: the same weights and crops both ways
    parts = train_CMC.build(opt, rt)
    fit = Fit(opt, rt, RunFolder(f'{opt.model_path}/{opt.model_name}'), parts.loader, parts.saved, parts.stepper,
              parts.logged, ['train_CMC.py'])
    set_loader_epoch(parts.loader, 1)
    parts.method.train()
    losses, batches = [], iter(parts.loader)
    for _ in range(n):
        result = parts.stepper(next(batches), rt.device)
        parts.saved.optimizer.zero_grad()
        result.loss.backward()
        parts.saved.optimizer.step()
        losses.append((result.loss.item(), torch._dynamo.utils.counters['stats']['unique_graphs']))
    return fit, parts, losses


def test_compiled_step_and_checkpoints_match_eager(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, 'aot_eager')
    eager_fit, eager, [(eager_loss, graphs)] = _steps(_argv(tmp_path, image_folder))
    compiled_fit, compiled, [(compiled_loss, first), (_, second)] = _steps(
        _argv(tmp_path, image_folder) + ['--compile'], 2)
    encoder = compiled.method.encoder
    assert first > graphs and second == first             # compiled at the first step only, not again at the second
    assert encoder._compiled_call_impl is not None and eager.method.encoder._compiled_call_impl is None
    # Same ops on the same inputs. aot_eager gave eager's loss bit for bit here (5.578857421875); a backend that
    # fuses and reorders (inductor) moves float32 roundings: its first step agreed with eager to 6e-7 relative
    # (bench/README.md, 52.81139 vs 52.81142). 1e-5 relative (~170 float32 ulps of the loss) covers both.
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)

    # The checkpoint of a compiled run: the eager run's entries and keys (no '_orig_mod.'), same shapes.
    eager_state, compiled_state = eager_fit.state(1, 0), compiled_fit.state(1, 0)
    for key in ('model', 'contrast'):
        assert list(compiled_state[key]) == list(eager_state[key]), key
        assert all(compiled_state[key][k].shape == v.shape for k, v in eager_state[key].items())
    assert not any('_orig_mod' in k for k in compiled_state['model'])
    assert (compiled_state['optimizer']['state'].keys() == eager_state['optimizer']['state'].keys())

    # Resume across: the compiled run's checkpoint into an eager run, and the eager run's into a compiled one.
    paths = {name: str(tmp_path / f'{name}.pth') for name in ('eager', 'compiled')}
    checkpoint.save_checkpoint(compiled_state, paths['compiled'])
    checkpoint.save_checkpoint(eager_state, paths['eager'])
    saved = {name: checkpoint.load_checkpoint(path)['model'] for name, path in paths.items()}   # the states share
    eager_fit.resume(paths['compiled'])                                           # the live tensors: read them back
    compiled_fit.resume(paths['eager'])
    assert not all(torch.equal(saved['eager'][k], v) for k, v in saved['compiled'].items())   # two different states
    for name, tensor in eager.method.encoder.state_dict().items():
        assert torch.equal(tensor, saved['compiled'][name]), name
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, saved['eager'][name]), name
    assert compiled_fit.start_epoch == eager_fit.start_epoch == 2

    # The kNN monitor's features run eagerly: eval mode and another batch size compile nothing new.
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    encoder.eval()
    with torch.no_grad():
        features = compiled.method.features(torch.randn(3, 3, 64, 64))
    assert features.shape == (3, 256) and torch._dynamo.utils.counters['stats']['unique_graphs'] == graphs


def test_unknown_backend_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, 'no_such_backend')
    with pytest.raises(UserError, match="CMC_COMPILE_BACKEND='no_such_backend' is not a torch.compile backend"):
        compile_in_place(torch.nn.Linear(2, 2))
