"""Load a pretrained encoder from a checkpoint the probes accept (ours, the reference's layout, the released weights)
or from an exported ``.safetensors`` file (``pretrained.safetensors_format``), and describe it (``info``)."""
import hashlib
import os

from engine.checkpoint import checkpoint_section, load_checkpoint, load_weights
from engine.errors import UserError
from engine.finite import refuse_non_finite
from models import CMC_MODEL_NAMES, CMC_RESNET_WIDTHS, INS_MODEL_NAMES, build_cmc_model, build_ins_model
from pretrained.encoder import CMC_METHODS, DEFAULT_LAYER, PretrainedEncoder
from views import VIEW_STATS, DeviceView, ViewStack, find_view
from views.flags import LEGACY_VIEWS, file_channels, key_names
from views.loading import restore_view_module

SAFETENSORS_SUFFIX = '.safetensors'


def load_encoder(path, model=None, view_module=None, device='cpu'):
    """The encoder of ``path`` (a .pth checkpoint or an exported .safetensors file) in eval mode, frozen, on
    ``device``. ``model``: its --model, for a checkpoint that does not record it; ``view_module``: the module of its
    own views, if it cannot be found where the checkpoint says. Errors are one-line UserErrors."""
    if str(path).endswith(SAFETENSORS_SUFFIX):
        if not os.path.isfile(path):
            raise UserError(f'{str(path)!r} does not exist; check the path')
        from pretrained.safetensors_format import read_safetensors  # the optional dependency, only when needed
        state, info = read_safetensors(path)
    else:
        state, info = _read_checkpoint(path, model)
    network = build_network(info)
    load_weights(network, state, f'--model {info["model"]}', path, info['model'])
    view, unavailable = _view_of(info, view_module, path)
    encoder = PretrainedEncoder(network, info, view, unavailable).to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def build_network(info):
    """Our model for an encoder's ``info`` (its weights not loaded)."""
    if info['method'] in ('insdis', 'moco'):
        return build_ins_model(info['model'], info['feat_dim'])
    return build_cmc_model(info['model'], info['feat_dim'], info['view_channels'], key_names(info['views']))


def _read_checkpoint(path, model):
    """(the encoder's state dict, info) of a pretraining checkpoint."""
    ckpt = load_checkpoint(path)
    opt = ckpt.get('opt') if isinstance(ckpt.get('opt'), dict) else {}
    refuse_non_finite(ckpt, path)
    model = opt.get('model') or model
    if model is None:
        raise UserError(f'{path} does not record its --model; give it (--model resnet50v2, resnet50, alexnet, ...; '
                        f'model= to load_encoder, arch= to torch.hub.load)')
    if model not in CMC_MODEL_NAMES + INS_MODEL_NAMES:
        raise UserError(f'{path} holds a --model {model} encoder, which is none of this project\'s: '
                        f'{", ".join(CMC_MODEL_NAMES + INS_MODEL_NAMES)}')
    if 'classifier' in ckpt:
        raise UserError(f'{path} is a linear probe\'s checkpoint; give the pretraining checkpoint it probed '
                        f'(its --model_path)')
    state = checkpoint_section(ckpt, 'model', path)
    return state, describe(opt, model, ckpt, path)


def describe(opt, model, ckpt, path):
    """The encoder's info: method, model, width, feat_dim, views and their channels, each view's preprocessing, the
    default feature layer, the training image size, the source file and its sha256."""
    if model in INS_MODEL_NAMES:
        method = 'moco' if opt.get('moco') or 'model_ema' in ckpt else 'insdis'
        views, channels = ['RGB'], [3]
    else:
        method = 'cmc-predictive' if opt.get('objective') == 'predictive' else 'cmc'
        views = list(opt.get('views') or LEGACY_VIEWS[opt.get('view') or 'Lab'])
        channels = list(opt.get('view_channels') or [_registered_channels(view, path) for view in views])
    info = {'method': method, 'model': model, 'width': model_width(model), 'feat_dim': int(opt.get('feat_dim', 128)),
            'views': views, 'view_channels': [int(c) for c in channels], 'feature_layer': DEFAULT_LAYER,
            'image_size': int(opt.get('image_size', 224)), 'view_module': opt.get('view_module'),
            'view_module_path': opt.get('view_module_path'), 'epoch': ckpt.get('epoch'),
            'source': os.path.basename(path), 'source_sha256': sha256_of(path)}
    if method in CMC_METHODS and any(find_view(view) is None for view in views):
        try:                                # its own views: registered by their module, if that is found
            restore_view_module(info, None, path)
        except UserError:
            pass                            # described from the checkpoint alone; preprocess will say what is missing
    info['preprocessing'] = preprocessing(info)
    return info


def _registered_channels(view, path):
    found = find_view(view)
    if found is None:
        raise UserError(f'{path} does not record the channels of its view {view!r}; it is no checkpoint of ours '
                        f'or the reference\'s')
    return found.channels


def model_width(model):
    """The width multiplier of a --model: CMC resnet v1 0.5, v2 1, v3 2; InsDis / MoCo x2 2, x4 4; AlexNet 0.5 (the
    half-width AlexNet of each view)."""
    if model == 'alexnet':
        return 0.5
    if model in CMC_MODEL_NAMES:
        return CMC_RESNET_WIDTHS[model[-2:]]
    return float(model.partition('x')[2] or 1)


def preprocessing(info):
    """Each view's preprocessing, as a downstream user must reproduce it: a colour view's colour space, its channels
    and normalisation ((x - mean) / std, x in the space's units for uint8 / 255 RGB, as scikit-image converts); a
    view of a view module, that module; a view read from files, 'file' ((x / 255 - 0.5) / 0.5 on its uint8 image)."""
    out = []
    for view, channels in zip(info['views'], info['view_channels']):
        found = find_view(view)
        if view == 'RGB' or (found is not None and found.kind == 'colour'):
            space, picked = ('RGB', (0, 1, 2)) if view == 'RGB' else (found.space, found.picked)
            mean, std = VIEW_STATS[space]
            out.append({'view': view, 'kind': 'colour', 'space': space, 'channels': list(picked),
                        'mean': [mean[i] for i in picked], 'std': [std[i] for i in picked]})
        elif (found.kind == 'computed') if found is not None else bool(info.get('view_module')):
            out.append({'view': view, 'kind': 'computed', 'channels': channels,
                        'module': info.get('view_module') or info.get('view_module_path')})
        else:
            out.append({'view': view, 'kind': 'file', 'channels': channels, 'normalisation': '(x / 255 - 0.5) / 0.5'})
    return out


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _view_of(info, view_module, path):
    """(the module that makes the views from uint8 RGB, '') or (None, why it cannot be made)."""
    if info['method'] in ('insdis', 'moco'):
        return DeviceView('RGB'), ''
    kinds = {entry['view']: entry['kind'] for entry in info['preprocessing']}
    if 'computed' in kinds.values():
        try:
            restore_view_module(info, view_module, path)
        except UserError as e:
            computed = ' '.join(view for view, kind in kinds.items() if kind == 'computed')
            return None, (f'{e}, or view_module=PATH to load_encoder / torch.hub.load; without it, preprocess cannot '
                          f'make the view(s) {computed} from RGB: give features() the views tensor itself')
    files = [view for view, kind in kinds.items() if kind == 'file']
    if files:
        return None, (f'{path}: view(s) {" ".join(files)} are read from files, not made from RGB, so preprocess '
                      f'cannot make them; give features() the views tensor itself, B x {sum(info["view_channels"])} '
                      f'x H x W float, each view normalised as info["preprocessing"] says')
    return ViewStack(info['views'], file_channels(info['views'], info['view_channels'])), ''
