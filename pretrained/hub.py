"""torch.hub's entries (``hubconf.py``): load an encoder through the entry of its method, and refuse, in one line
naming the right entry, a checkpoint of another method."""
import os

from engine.errors import UserError
from models import CMC_MODEL_NAMES, INS_MODEL_NAMES
from pretrained.encoder import CMC_METHODS
from pretrained.load import load_encoder

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))      # where hubconf.py is
# entry -> (its name in messages, the --model names it builds)
ENTRIES = {'cmc': ('CMC', CMC_MODEL_NAMES), 'insdis': ('InsDis', INS_MODEL_NAMES), 'moco': ('MoCo', INS_MODEL_NAMES)}


def hub_entry(method):
    """The hub entry that loads an encoder of ``info['method']``: 'cmc' for both CMC objectives."""
    return 'cmc' if method in CMC_METHODS else method


def load_entry(entry, checkpoint, arch=None, view_module=None, device='cpu', view=None):
    """The ``PretrainedEncoder`` of ``checkpoint`` (.pth or .safetensors), in eval mode and frozen, on ``device``,
    through the hub entry ``entry`` ('cmc', 'insdis' or 'moco'); ``arch``: its --model, for a file that does not
    record it; ``view``: 'Lab' or 'YCbCr', for a CMC file that does not record its views. A checkpoint of another
    method is a UserError naming its entry; an InsDis / MoCo .pth that does not record which it is (no opt 'moco',
    no 'model_ema') is taken as the entry says."""
    name, models = ENTRIES[entry]
    if arch is not None and arch not in models:
        raise UserError(f'hub entry {entry!r}: arch={arch!r} is no {name} --model; give one of {", ".join(models)}')
    encoder = load_encoder(checkpoint, arch, view_module, device, view)
    found = hub_entry(encoder.info['method'])
    if found != entry and {found, entry} <= {'insdis', 'moco'} and not encoder.info.get('method_recorded', True):
        encoder.info['method'] = entry          # the file does not say which of the two it is: as the entry says
    elif found != entry:
        raise UserError(f'{checkpoint} holds an encoder trained with {ENTRIES[found][0]} (--model '
                        f'{encoder.info["model"]}), which the {entry!r} entry does not load: load it with '
                        f'torch.hub.load({REPO_DIR!r}, {found!r}, source=\'local\', checkpoint={str(checkpoint)!r})')
    return encoder

