"""torch.hub entries: the CMC, InsDis and MoCo encoders of this repository's checkpoints (README, "torch.hub").

    encoder = torch.hub.load('/path/to/this/repo', 'cmc', source='local', checkpoint='results/demo/cmc.pth')
    features = encoder.features(images)         # uint8 RGB B x 3 x H x W -> B x D float32

The work is in ``pretrained`` (``pretrained.hub.load_entry``); this file only names the entries.
"""
import os as _os
import sys as _sys

dependencies = ['torch', 'numpy']

# torch.hub puts this folder first on sys.path while it imports this file, but a module of the same name imported
# before (a project's own "models") would be taken instead of ours: refuse that in one line.
_HERE = _os.path.realpath(_os.path.dirname(_os.path.abspath(__file__)))
_OURS = ('engine', 'models', 'views', 'pretrained')         # the packages the entries import
_CLASH = [name for name in _OURS if name in _sys.modules and not _os.path.realpath(
    getattr(_sys.modules[name], '__file__', None) or '/').startswith(_HERE + _os.sep)]
if _CLASH:
    raise ImportError(f'{_HERE}/hubconf.py: the module(s) {", ".join(_CLASH)} already imported in this process are '
                      f'not this repository\'s ({_sys.modules[_CLASH[0]].__file__}); load the encoder in a process '
                      f'that has not imported them, or rename yours')

from pretrained.hub import load_entry as _load_entry


def cmc(checkpoint, arch=None, view_module=None, device='cpu', view=None):
    """A CMC encoder (``pretrained.PretrainedEncoder``, eval mode, frozen) from ``checkpoint``: a train_CMC.py .pth
    (ours, the reference's, the released weights) or its .safetensors export. ``arch``: its --model, for a file that
    does not record it (resnet50v2, alexnet, ...; not ``model=``, which torch.hub.load takes for the entry's name);
    ``view_module``: the .py file of its own views, if not found where the checkpoint says; ``device``: where it runs;
    ``view``: 'Lab' or 'YCbCr', for a file that does not record its views (else Lab, with a warning).

    ``encoder.preprocess(images)``: uint8 RGB B x 3 x H x W -> its views, normalised as in training (a view read from
    files cannot be made from RGB: give ``features`` the views tensor itself); ``encoder.features(images, layer=6)``:
    the views' features concatenated in checkpoint order, B x D float32, as LinearProbing.py probes them; or
    ``encoder.features(views=...)`` of the normalised views tensor.

        encoder = torch.hub.load('/path/to/CMC', 'cmc', source='local', checkpoint='results/demo/cmc.pth')
        images = torchvision.io.read_image('photo.png', torchvision.io.ImageReadMode.RGB)[None]   # 1 x 3 x H x W
        features = encoder.features(images)                                # 1 x D: the L and ab features
    """
    return _load_entry('cmc', checkpoint, arch, view_module, device, view)


def insdis(checkpoint, arch=None, device='cpu'):
    """An InsDis encoder (``pretrained.PretrainedEncoder``, eval mode, frozen: one RGB ResNet) from ``checkpoint``:
    a train_moco_ins.py .pth (ours, the reference's, the released weights) or its .safetensors export. ``arch``: its
    --model, for a file that does not record it (resnet50, resnet50x2, ...); ``device``: where it runs.
    ``encoder.preprocess(images)``: uint8 RGB B x 3 x H x W -> (x / 255 - ImageNet mean) / std;
    ``encoder.features(images, layer=6)``: B x D float32, as eval_moco_ins.py probes them.

        encoder = torch.hub.load('/path/to/CMC', 'insdis', source='local', checkpoint='results/demo/insdis.pth')
        images = torchvision.io.read_image('photo.png', torchvision.io.ImageReadMode.RGB)[None]   # 1 x 3 x H x W
        features = encoder.features(images)                                # 1 x D: the pooled features
    """
    return _load_entry('insdis', checkpoint, arch, None, device)


def moco(checkpoint, arch=None, device='cpu'):
    """A MoCo encoder (``pretrained.PretrainedEncoder``, eval mode, frozen: the query ResNet, on RGB) from
    ``checkpoint``: a train_moco_ins.py --moco .pth (ours, the reference's, the released weights) or its
    .safetensors export; ``arch`` and ``device`` as for ``insdis``, and ``preprocess`` and ``features``.

        encoder = torch.hub.load('/path/to/CMC', 'moco', source='local', checkpoint='results/demo/moco.pth')
        images = torchvision.io.read_image('photo.png', torchvision.io.ImageReadMode.RGB)[None]   # 1 x 3 x H x W
        features = encoder.features(images)                                # 1 x D: the pooled features
    """
    return _load_entry('moco', checkpoint, arch, None, device)
