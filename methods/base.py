"""What the three methods share: how the trained encoder runs (DDP wrapper, autocast) once the runtime is known."""
from contextlib import nullcontext

from torch import nn


class ContrastMethod(nn.Module):
    """Base of the methods: ``encoder`` is trained, ``contrast`` holds the memory; both are submodules, so
    ``state_dict()`` is the whole method. ``set_runtime(rt)`` wraps the encoder for several processes (DDP) and
    sets mixed precision; until then the method runs as it is, in float32."""

    def __init__(self, encoder, contrast):
        super().__init__()
        self.encoder, self.contrast = encoder, contrast
        self._runtime = None

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
