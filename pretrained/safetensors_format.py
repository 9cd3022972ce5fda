"""An encoder as a safetensors file: every architecture and view, loaded without pickle.

Tensors: the encoder's state dict, keyed as the ``model`` entry of our checkpoints (``encoder.l_to_ab.conv1.weight``,
...; the projection head included, so every layer loads). Metadata (safetensors' str -> str header), each value JSON:
method, model, width, feat_dim, views, view_channels, preprocessing (per view: colour space, channels, mean and std;
or the view module; or 'file'), feature_layer, image_size, source and source_sha256 (the checkpoint it came from).
"""
import json

import torch

from engine.errors import UserError
from models import CMC_MODEL_NAMES, INS_MODEL_NAMES, model_width

FORMAT = 'cmc-encoder/1'
REQUIRED = ('method', 'model', 'width', 'feat_dim', 'views', 'view_channels', 'preprocessing', 'feature_layer',
            'image_size', 'source_sha256')


def _library():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError('the safetensors package is not installed: pip install safetensors (requirements.txt has '
                        'it)') from None
    return safetensors.torch


def write_safetensors(encoder, path):
    """Write ``encoder`` (a ``PretrainedEncoder``) to ``path``: its network's tensors (contiguous, on the CPU) and
    its info as metadata."""
    state = {key: value.detach().cpu().contiguous() for key, value in encoder.network.state_dict().items()}
    metadata = {key: json.dumps(value) for key, value in encoder.info.items()}
    metadata['format'] = FORMAT
    _library().save_file(state, str(path), metadata=metadata)


def read_safetensors(path):
    """(state dict, info) of a file ``write_safetensors`` wrote; anything else is a one-line UserError."""
    library = _library()
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            metadata = f.metadata() or {}
        state = library.load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise UserError(f'{path} is not a readable safetensors file: {str(e).splitlines()[0] if str(e) else e!r}; '
                        f'export it again with scripts/export.py --to safetensors') from None
    if metadata.get('format') != FORMAT:
        raise UserError(f'{path} is a safetensors file but not an encoder that scripts/export.py wrote (no '
                        f'"format": "{FORMAT}" in its metadata); export the checkpoint with --to safetensors')
    try:
        info = {key: json.loads(value) for key, value in metadata.items() if key != 'format'}
    except json.JSONDecodeError as e:
        raise UserError(f'{path}: its metadata is not valid JSON ({e}); export it again') from None
    missing = [key for key in REQUIRED if key not in info]
    if missing:
        raise UserError(f'{path}: its metadata lacks {", ".join(missing)}; export it again with this version')
    wrong = _wrong_metadata(info)
    if wrong:
        raise UserError(f'{path}: its metadata has {wrong}; export the checkpoint again with scripts/export.py')
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}, info


def _wrong_metadata(info):
    """What in an export's metadata could not describe one of our encoders ('' when nothing): a file edited by hand or
    written by another tool would otherwise fail later, inside the model."""
    models = {'cmc': CMC_MODEL_NAMES, 'cmc-predictive': CMC_MODEL_NAMES, 'insdis': INS_MODEL_NAMES,
              'moco': INS_MODEL_NAMES}
    views, channels = info['views'], info['view_channels']
    checks = [
        (info['method'] in models, f'method {info["method"]!r} (one of {", ".join(models)})'),
        (info['model'] in models.get(info['method'], ()), f'model {info["model"]!r} for method {info["method"]!r}'),
        (_width_matches(info), f'width {info["width"]!r} where model {info["model"]!r} has another'),
        (isinstance(views, list) and views and all(isinstance(v, str) for v in views), f'views {views!r}'),
        (isinstance(channels, list) and len(channels) == len(views or ()) and all(_positive(c) for c in channels),
         f'view_channels {channels!r} (a positive integer per view)'),
        (isinstance(info['preprocessing'], list) and len(info['preprocessing']) == len(views or ())
         and all(isinstance(p, dict) and p.get('view') == v and 'kind' in p
                 for p, v in zip(info['preprocessing'], views or ())), 'preprocessing that does not match its views'),
        (_positive(info['image_size']) and _positive(info['feat_dim']),
         f'image_size {info["image_size"]!r} and feat_dim {info["feat_dim"]!r} (positive integers)'),
    ]
    return next((what for ok, what in checks if not ok), '')


def _width_matches(info):
    """The recorded width is the model name's (torchvision export reads it): True also for an unknown model, which the
    model check refuses."""
    known = info['model'] in CMC_MODEL_NAMES + INS_MODEL_NAMES
    return not known or info['width'] == model_width(info['model'])


def _positive(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
