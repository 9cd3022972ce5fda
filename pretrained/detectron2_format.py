"""An encoder as detectron2 backbone weights (``scripts/export.py --to detectron2``): the ``.pkl`` that
facebookresearch/moco's ``detection/convert-pretrain-to-detectron2.py`` writes, for ResNet-50 at width 1 (InsDis,
MoCo, and each view of CMC resnet50v2).

The file: a pickle (protocol: pickle's default, as moco's) of ``{'model': {name: numpy float32 array}, '__author__':
AUTHOR, 'matching_heuristics': True}``, names in detectron2's ResNet layout, from torchvision's (each array pickled
as ``numpy.ndarray(shape, dtype, bytearray)``, names every numpy has: numpy 2 pickles an array by
``numpy._core.multiarray._reconstruct``, which numpy before 1.26 cannot import, so any numpy reads this file):

    conv1 / bn1                 -> stem.conv1 / stem.conv1.norm
    layer1 .. layer4            -> res2 .. res5
    bnK (K = 1, 2, 3)           -> convK.norm
    downsample.0 / downsample.1 -> shortcut / shortcut.norm

The projection head (fc) and BatchNorm's num_batches_tracked are dropped. detectron2's config must match the weights:
``MODEL.RESNETS.DEPTH 50``, ``MODEL.RESNETS.STRIDE_IN_1X1 False`` (the stride is on the 3x3 conv), and
``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` with one value per input channel (their count sets the stem's input channels).
``from_detectron2`` maps a file's names back to torchvision's.
"""
import pickle

import numpy as np
import torch

from pretrained.torchvision_format import head_note, resnet_architecture, torchvision_state_dicts, zero_classifier

AUTHOR = 'CMC (scripts/export.py)'
DETECTRON2_HOLDS = 'ResNet-50 at width 1 (CMC resnet50v2; InsDis / MoCo resnet50)'
# (torchvision's, detectron2's) name pieces, in the order moco's converter replaces them.
RENAMES = ([(f'layer{t}', f'res{t + 1}') for t in (1, 2, 3, 4)] + [(f'bn{t}', f'conv{t}.norm') for t in (1, 2, 3)]
           + [('downsample.0', 'shortcut'), ('downsample.1', 'shortcut.norm')])
DROPPED = ('fc.', 'num_batches_tracked')


def detectron2_name(key: str) -> str:
    """torchvision's key -> detectron2's: 'bn1.weight' -> 'stem.conv1.norm.weight', 'layer1.0.downsample.1.bias' ->
    'res2.0.shortcut.norm.bias'."""
    key = key if key.startswith('layer') else 'stem.' + key
    for old, new in RENAMES:
        key = key.replace(old, new)
    return key


def torchvision_name(name: str) -> str:
    """detectron2's name -> torchvision's (``detectron2_name`` undone)."""
    for old, new in reversed(RENAMES):
        name = name.replace(new, old)
    return name.removeprefix('stem.')


def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """torchvision's ResNet state dict -> detectron2's {name: numpy array}, fc and num_batches_tracked dropped."""
    return {detectron2_name(key): value.detach().cpu().numpy() for key, value in state.items()
            if not key.startswith(DROPPED[0]) and not key.endswith(DROPPED[1])}


def from_detectron2(model: dict[str, np.ndarray], classes: int = 1000) -> dict[str, torch.Tensor]:
    """detectron2's {name: array} (a file's 'model') -> a torchvision ResNet state dict that loads with strict=True:
    num_batches_tracked 0 for each BatchNorm and ``fc`` zeros (classes x C, untrained) put back."""
    state = {torchvision_name(name): torch.from_numpy(np.asarray(value)) for name, value in model.items()}
    counts = {key.replace('running_mean', 'num_batches_tracked'): torch.tensor(0) for key in state
              if key.endswith('running_mean')}
    features = state['layer4.0.downsample.0.weight'].shape[0]        # layer4's output channels: fc's input
    return {**state, **counts, **zero_classifier(features, classes)}


def detectron2_files(encoder) -> dict[str, dict]:
    """{view: the pickled object of its .pkl} for a ``PretrainedEncoder`` at ResNet-50 width 1; else a UserError."""
    resnet_architecture(encoder.info, 'detectron2', depths=(50,), holds=DETECTRON2_HOLDS)
    return {view: {'model': to_detectron2(state), '__author__': AUTHOR, 'matching_heuristics': True}
            for view, state in torchvision_state_dicts(encoder).items()}


class _AnyNumpyPickler(pickle.Pickler):
    """Pickles a numpy array as ``numpy.ndarray(shape, dtype, bytearray(its bytes))``: readable by numpy 1.x and 2.x
    alike (a writable array, C order), where numpy's own pickling names numpy 2's private ``numpy._core``."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            array = np.ascontiguousarray(obj)
            return np.ndarray, (array.shape, array.dtype.str, bytearray(array.tobytes()))
        return NotImplemented


def write_detectron2(obj: dict, path) -> None:
    """Pickle ``obj`` to ``path`` (pickle's default protocol, as moco's converter), its arrays readable by any
    numpy (``_AnyNumpyPickler``)."""
    with open(path, 'wb') as f:
        _AnyNumpyPickler(f).dump(obj)


def pixel_config(entry: dict) -> str:
    """The detectron2 settings a view's preprocessing (an entry of ``info['preprocessing']``) asks for: PIXEL_MEAN /
    PIXEL_STD (one value per channel, in the units of the tensor detectron2's mapper gives the model) and the input."""
    if entry['kind'] == 'colour' and entry['space'] == 'RGB':     # ours: (x / 255 - mean) / std -> x in 0..255
        mean, std = [round(m * 255, 3) for m in entry['mean']], [round(s * 255, 3) for s in entry['std']]
        return f'MODEL.PIXEL_MEAN {mean} MODEL.PIXEL_STD {std} INPUT.FORMAT RGB'
    if entry['kind'] == 'colour':
        return (f'MODEL.PIXEL_MEAN {entry["mean"]} MODEL.PIXEL_STD {entry["std"]}; input: {entry["space"]} '
                f'channel(s) {entry["channels"]} as scikit-image converts uint8 RGB / 255, from your own '
                f'DatasetMapper (INPUT.FORMAT has no {entry["space"]})')
    if entry['kind'] == 'file':                                    # (x / 255 - 0.5) / 0.5 of the file's uint8
        return (f'MODEL.PIXEL_MEAN {[127.5] * entry["channels"]} MODEL.PIXEL_STD {[127.5] * entry["channels"]}; '
                f'input: the view\'s uint8 image read from its files, from your own DatasetMapper')
    return (f'MODEL.PIXEL_MEAN {[0.0] * entry["channels"]} MODEL.PIXEL_STD {[1.0] * entry["channels"]}; input: '
            f'the view module {entry["module"]}\'s output (already normalised), from your own DatasetMapper')


def detectron2_notes(encoder) -> tuple[dict[str, str], list[str]]:
    """({view: what its file holds and the settings it needs}, the lines to print after: what was dropped, the
    config every file needs)."""
    info = encoder.info
    holds = {entry['view']: f'detectron2 ResNet-50 backbone ({info["method"]} {info["model"]}, view {entry["view"]}: '
                            f'stem on {channels} channel(s); {pixel_config(entry)})'
             for entry, channels in zip(info['preprocessing'], info['view_channels'])}
    config = ('detectron2 config: MODEL.WEIGHTS <the file>, MODEL.RESNETS.DEPTH 50, MODEL.RESNETS.STRIDE_IN_1X1 '
              'False (the stride is on the 3x3 conv, as torchvision\'s)')
    return holds, [f'{head_note(encoder)}, and every num_batches_tracked', config]
