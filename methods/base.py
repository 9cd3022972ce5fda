"""What the methods share: how the trained encoder runs (DDP wrapper, autocast) once the runtime is known, and what
the loop reads of a method (its forward's ``StepResult``, ``console_fields``, ``tb_tags``, ``after_step``)."""
from contextlib import nullcontext

import torch
from torch import nn

from engine.errors import UserError
from engine.runtime import compile_in_place


def eager():
    """A context in which modules compiled by ``--compile`` run their eager forward: the kNN monitor's eval mode and
    batch shapes would otherwise each compile anew (a minute or more on a CPU) for a pass every few epochs."""
    return torch.compiler.set_stance('force_eager')


class ContrastMethod(nn.Module):
    """Base of the methods: ``encoder`` is trained, ``contrast`` holds the memory; both are submodules, so
    ``state_dict()`` is the whole method. ``set_runtime(rt)`` wraps the encoder for several processes (DDP) and
    sets mixed precision; until then the method runs as it is, in float32.

    A method owns its objective: ``forward(x, index)`` (x the views of a batch, normalised, on the device; index the
    items' data-set indices) returns an ``engine.loop.StepResult``, the loss and the named metrics that
    ``console_fields`` (metric key, console label) and ``tb_tags`` (metric key or 'learning_rate', TensorBoard tag)
    show. ``after_step()`` runs after each optimizer step."""

    console_fields = [('loss', 'loss')]
    tb_tags = []

    def __init__(self, encoder, contrast):
        super().__init__()
        self.encoder, self.contrast = encoder, contrast
        self._runtime = None

    def after_step(self):
        """Called by the loop after each optimizer step (MoCo's momentum update); nothing by default."""

    def set_runtime(self, rt):
        """Run the encoder through ``rt.wrap`` (DDP averages its gradients) and under ``rt.autocast()``."""
        # A plain attribute, not a submodule: the wrapper holds the same parameters under other keys.
        object.__setattr__(self, '_runtime', (rt, rt.wrap(self.encoder)))
        return self

    def autocast(self):
        return self._runtime[0].autocast() if self._runtime else nullcontext()

    @property
    def trained(self):
        """The encoder as trained: under DDP when several processes run, else the encoder itself."""
        return self._runtime[1] if self._runtime else self.encoder

    def checkpoint_modules(self):
        """The checkpoint's entries, under the reference's keys."""
        return {'model': self.encoder, 'contrast': self.contrast}

    def encoders(self):
        """The networks ``--compile`` compiles: the trained encoder (MoCo adds its key encoder)."""
        return [self.encoder]

    def compile_encoders(self):
        """``--compile``: each of ``encoders()`` compiled in place (``engine.runtime.compile_in_place``), so the
        state-dict keys and checkpoints do not change; the wrappers of ``set_runtime`` hold the same modules.
        UserError under nn.DataParallel: its replicas copy the compiled function, which stays bound to the original
        module on the first GPU."""
        if self._runtime and self._runtime[0].n_data_parallel > 1:
            raise UserError('--compile does not work with one process driving several GPUs (nn.DataParallel); '
                            'use torchrun --nproc_per_node N (DDP), or --gpu N for one GPU')
        for encoder in self.encoders():
            compile_in_place(encoder)
        return self

    def features(self, x):
        """The encoder's features of normalised views x, run eagerly (the kNN monitor's input)."""
        with eager():
            return self.encoder(x)
