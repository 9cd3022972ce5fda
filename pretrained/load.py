"""Load a pretrained encoder from a checkpoint the probes accept (ours, the reference's layout, the released weights)
or from an exported ``.safetensors`` file (``pretrained.safetensors_format``), and describe it (``info``)."""
import hashlib
import os
import warnings

import torch

from engine.checkpoint import SAFETENSORS_SUFFIX, checkpoint_section, load_checkpoint, load_weights
from engine.errors import UserError
from engine.finite import refuse_non_finite
from models import CMC_MODEL_NAMES, INS_MODEL_NAMES, build_cmc_model, build_ins_model, model_width
from pretrained.encoder import DEFAULT_LAYER, PretrainedEncoder
from views import VIEW_STATS, DeviceView, ViewStack, find_view
from views.flags import LEGACY_VIEWS, file_channels, key_names
from views.loading import restore_view_module


def load_encoder(path, model=None, view_module=None, device='cpu', view=None):
    """The encoder of ``path`` (a .pth checkpoint or an exported .safetensors file) in eval mode, frozen, on
    ``device``. ``model``: its --model, for a checkpoint that does not record it (one that contradicts the
    checkpoint is refused); ``view_module``: the module of its own views, if it cannot be found where the checkpoint
    says (the one used is recorded in ``info``); ``view``: 'Lab' or 'YCbCr' for a CMC checkpoint that does not record
    its views (else Lab is assumed, with a warning, as LinearProbing.py does). Errors are one-line UserErrors."""
    device = _device(device)
    if view is not None and view not in LEGACY_VIEWS:
        raise UserError(f'view={view!r}: give one of {", ".join(LEGACY_VIEWS)} (the views of a checkpoint that does '
                        f'not record them)')
    if str(path).endswith(SAFETENSORS_SUFFIX):
        if not os.path.isfile(path):
            raise UserError(f'{str(path)!r} does not exist; check the path')
        from pretrained.safetensors_format import read_safetensors  # the optional dependency, only when needed
        state, info = read_safetensors(path)
        refuse_non_finite(state, path)
        files = {entry['view'] for entry in info['preprocessing'] if entry['kind'] == 'file'}
    else:
        state, info = _read_checkpoint(path, model, view)
        files = None                        # a .pth says which views are files by its --dataset
    if model is not None and model != info['model']:
        raise UserError(f'--model {model} contradicts {path}, which holds a --model {info["model"]} encoder; drop it')
    module_missing = own_views(info, view_module, path, files)
    network = build_network(info)
    load_weights(network, state, f'--model {info["model"]}', path, info['model'])
    view_maker, unavailable = _view_of(info, module_missing, path)
    encoder = PretrainedEncoder(network, info, view_maker, unavailable).to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def build_network(info):
    """Our model for an encoder's ``info`` (its weights not loaded)."""
    if info['method'] in ('insdis', 'moco'):
        return build_ins_model(info['model'], info['feat_dim'])
    return build_cmc_model(info['model'], info['feat_dim'], info['view_channels'], key_names(info['views']))


def _device(device):
    """``device`` as a torch.device, or a UserError for one that is no device or not here."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f'device={device!r} is no device ({str(e).splitlines()[0]}); give \'cpu\' or '
                        f'\'cuda\'') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'device={str(device)!r}: no CUDA device is visible here; give device=\'cpu\'')
    return device


def _read_checkpoint(path, model, view):
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
    recorded = opt.get('views') or LEGACY_VIEWS.get(opt.get('view'))
    if view is not None and recorded and tuple(recorded) != LEGACY_VIEWS[view]:
        raise UserError(f'--view {view} contradicts {path}, which records the views {" ".join(recorded)}; drop it')
    if model in CMC_MODEL_NAMES and not (opt.get('views') or opt.get('view')):
        if view is None:
            warnings.warn(f'{path} does not record its views: assumed --view Lab (L and ab); give view=\'YCbCr\' '
                          f'(--view YCbCr) if it was trained on Y and CbCr', stacklevel=3)
        opt = {**opt, 'view': view or 'Lab'}
    return state, describe(opt, model, ckpt, path)


def describe(opt, model, ckpt, path):
    """The encoder's info: method, model, width, feat_dim, views and their channels, the default feature layer, the
    training image size and data set, the view module, whether the file says InsDis or MoCo (``method_recorded``: its
    opt's 'moco' flag or a 'model_ema' entry), the source file and its sha256 (each view's preprocessing is
    added by ``own_views``, once the views' module is imported)."""
    if model in INS_MODEL_NAMES:
        method = 'moco' if opt.get('moco') or 'model_ema' in ckpt else 'insdis'
        views, channels = ['RGB'], [3]
    else:
        method = 'cmc-predictive' if opt.get('objective') == 'predictive' else 'cmc'
        views = list(opt.get('views') or LEGACY_VIEWS[opt.get('view') or 'Lab'])
        channels = list(opt.get('view_channels') or [_registered_channels(view, path) for view in views])
    return {'method': method, 'model': model, 'width': model_width(model), 'feat_dim': int(opt.get('feat_dim') or 128),
            'views': views, 'view_channels': [int(c) for c in channels], 'feature_layer': DEFAULT_LAYER,
            'image_size': int(opt.get('image_size') or 224),
            'image_size_recorded': bool(opt.get('image_size')), 'view_module': opt.get('view_module'),
            'view_module_path': opt.get('view_module_path'), 'dataset': opt.get('dataset'), 'epoch': ckpt.get('epoch'),
            'method_recorded': model not in INS_MODEL_NAMES or 'moco' in opt or 'model_ema' in ckpt,
            'source': os.path.basename(path), 'source_sha256': sha256_of(path)}


def own_views(info, view_module, path, files=None):
    """Import the module of the encoder's own views (``view_module``, else where the checkpoint says), record the
    one used in ``info`` and each view's preprocessing (``info['preprocessing']``). ``files``: the views read from
    files, or None: a .pth's views that no module registers, when it was trained on --dataset multiview_folder (or
    without a module). Returns '' or why preprocess cannot make the views (their module is not found); a module that
    is found but does not register a view the checkpoint uses is a UserError."""
    own = [view for view in info['views'] if not _colour(view)]
    module = view_module or info.get('view_module') or info.get('view_module_path')
    reason = ''
    if own and module:
        try:
            info['view_module'], info['view_module_path'] = restore_view_module(info, view_module, path)
        except UserError as e:
            reason = str(e)
    if files is None:
        unregistered = [view for view in own if find_view(view) is None or find_view(view).kind == 'file']
        files = set(unregistered) if info.get('dataset') == 'multiview_folder' or not module else set()
    missing = [view for view in own if view not in files and not _computed(view)]
    if missing and not reason:
        raise UserError(f'--view_module {module} does not register the view(s) {" ".join(missing)} that {path} '
                        f'uses; give the module it was trained with')
    info['preprocessing'] = preprocessing(info, files)
    return reason


def _colour(view):
    found = find_view(view)
    return view == 'RGB' or (found is not None and found.kind == 'colour')


def _computed(view):
    found = find_view(view)
    return found is not None and found.kind == 'computed'


def _registered_channels(view, path):
    found = find_view(view)
    if found is None:
        raise UserError(f'{path} does not record the channels of its view {view!r}; it is no checkpoint of ours '
                        f'or the reference\'s')
    return found.channels


def preprocessing(info, files=()):
    """Each view's preprocessing, as a downstream user must reproduce it: a colour view's colour space, its channels
    and normalisation ((x - mean) / std, x in the space's units for uint8 / 255 RGB, as scikit-image converts); a
    view read from files (``files``), 'file' ((x / 255 - 0.5) / 0.5 on its uint8 image); any other, its module."""
    out = []
    for view, channels in zip(info['views'], info['view_channels']):
        found = find_view(view)
        if _colour(view):
            space, picked = ('RGB', (0, 1, 2)) if view == 'RGB' else (found.space, found.picked)
            mean, std = VIEW_STATS[space]
            out.append({'view': view, 'kind': 'colour', 'space': space, 'channels': list(picked),
                        'mean': [mean[i] for i in picked], 'std': [std[i] for i in picked]})
        elif view in files:
            out.append({'view': view, 'kind': 'file', 'channels': channels, 'normalisation': '(x / 255 - 0.5) / 0.5'})
        else:
            out.append({'view': view, 'kind': 'computed', 'channels': channels,
                        'module': info.get('view_module') or info.get('view_module_path')})
    return out


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _view_of(info, unavailable, path):
    """(the module that makes the views from uint8 RGB, '') or (None, why it cannot be made): ``unavailable``, their
    module not found (``own_views``), or views read from files."""
    if info['method'] in ('insdis', 'moco'):
        return DeviceView('RGB'), ''
    kinds = {entry['view']: entry['kind'] for entry in info['preprocessing']}
    if unavailable:
        computed = ' '.join(view for view, kind in kinds.items() if kind == 'computed')
        return None, (f'{unavailable}, or view_module=PATH to load_encoder / torch.hub.load; without it, preprocess '
                      f'cannot make the view(s) {computed} from RGB: give features(views=...) the views tensor itself')
    files = [view for view, kind in kinds.items() if kind == 'file']
    if files:
        return None, (f'{path}: view(s) {" ".join(files)} are read from files, not made from RGB, so preprocess '
                      f'cannot make them; give features(views=...) the views tensor itself, B x '
                      f'{sum(info["view_channels"])} x H x W float, each view normalised as info["preprocessing"] says')
    return ViewStack(info['views'], file_channels(info['views'], info['view_channels'])), ''


def add_encoder_flags(parser):
    """The flags of a script that loads an encoder (export.py, extract_features.py): --model_path, and what a
    checkpoint may not record (--model, --view) or may record where it no longer is (--view_module)."""
    parser.add_argument('--model_path', required=True, help='a pretraining checkpoint (ours, the reference\'s, the '
                        'released weights) or an exported .safetensors file')
    parser.add_argument('--model', default=None, choices=CMC_MODEL_NAMES + INS_MODEL_NAMES,
                        help='the checkpoint\'s --model, for a checkpoint that does not record it')
    parser.add_argument('--view', default=None, choices=sorted(LEGACY_VIEWS),
                        help='the views of a CMC checkpoint that does not record them (default Lab, said aloud)')
    parser.add_argument('--view_module', default=None, help='the module of the checkpoint\'s own views (train_CMC.py '
                        '--view_module), if it is not found where the checkpoint says')


def load_from_flags(opt, device='cpu'):
    """``load_encoder`` with ``add_encoder_flags``' flags; its warnings (views assumed) printed as one 'note:' line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        encoder = load_encoder(opt.model_path, opt.model, opt.view_module, device, opt.view)
    for warning in caught:
        print(f'note: {warning.message}', flush=True)
    return encoder
