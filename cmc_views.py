"""CMC's view flags, shared by train_CMC.py and LinearProbing.py: ``--view Lab|YCbCr`` (the reference's two views),
``--views`` (any list of named views, Tian et al. 2019 Sec. 3.3), ``--paradigm core|full``; how a view set names its
run, its checkpoint keys and its console / TensorBoard fields.

``--view Lab`` is ``--views L ab`` and ``--view YCbCr`` is ``--views Y CbCr``: the same run (name, checkpoint and
numbers). Both two-view sets keep the reference's keys (``l_to_ab``, ``ab_to_l``, ``memory_l``, ``memory_ab``);
any other view v is held under its name lowercased (``memory_s``, network ``s``).
"""
from colour import COLOUR_VIEWS, view_channels
from engine.errors import UserError

LEGACY_VIEWS = {'Lab': ('L', 'ab'), 'YCbCr': ('Y', 'CbCr')}
PARADIGMS = ('core', 'full')
# the reference's two-view keys: Y | CbCr are stored as L | ab were
REFERENCE_KEYS = ('L', 'ab')


def add_view_flags(parser, paradigm=True):
    parser.add_argument('--view', type=str, default=None, choices=sorted(LEGACY_VIEWS),
                        help='the reference\'s two views: Lab = --views L ab (default), YCbCr = --views Y CbCr')
    parser.add_argument('--views', type=str, nargs='+', default=None, metavar='VIEW',
                        help=f'named views, one encoder each: colour views {" ".join(COLOUR_VIEWS)}; with --dataset '
                        f'multiview_folder also any view folder (depth, normal, ...). The first is the core view')
    if paradigm:
        parser.add_argument('--paradigm', type=str, default='core', choices=PARADIGMS,
                            help='more than two views: core contrasts the first view with each other (eq. 6 of the '
                            'paper), full every pair (eq. 7)')


def resolve_views(opt):
    """Set ``opt.views`` (list) and ``opt.view`` ('Lab' / 'YCbCr' for those two-view sets, else None)."""
    if opt.view and opt.views:
        raise UserError(f'give --view {opt.view} or --views {" ".join(opt.views)}, not both')
    views = tuple(opt.views or LEGACY_VIEWS[opt.view or 'Lab'])
    check_views(views, opt.dataset)
    opt.views = list(views)
    opt.view = next((name for name, legacy in LEGACY_VIEWS.items() if legacy == views), None)
    return opt


def check_views(views, dataset):
    lowered = [view.lower() for view in views]
    if len(views) < 2:
        raise UserError(f'--views needs at least two views (CMC contrasts views), got {" ".join(views)}')
    if len(set(lowered)) != len(lowered):
        raise UserError(f'--views {" ".join(views)} names a view twice (names are compared case-insensitively)')
    files = [view for view in views if view not in COLOUR_VIEWS]
    if files and dataset != 'multiview_folder':
        raise UserError(f'unknown view{"s" if len(files) > 1 else ""} {" ".join(files)}: colour views are '
                        f'{" ".join(COLOUR_VIEWS)}; views read from files need --dataset multiview_folder')
    bad = [view for view in files if not view.isidentifier() or view.lower() == 'rgb']
    if bad:
        raise UserError(f'view name {bad[0]!r} cannot name a view folder: use letters, digits and _ ("rgb" is the '
                        f'folder of the colour views)')


def key_names(views):
    """Names the encoders and memories are stored under: the reference's for Y | CbCr, else the views'."""
    return REFERENCE_KEYS if tuple(views) == LEGACY_VIEWS['YCbCr'] else tuple(views)


def run_suffix(opt):
    """'_view_Lab' / '_view_YCbCr' (the reference's), else '_views_L_ab_S' (+ '_full' for the full graph)."""
    if opt.view:
        return f'_view_{opt.view}'
    full = '_full' if getattr(opt, 'paradigm', 'core') == 'full' and len(opt.views) > 2 else ''
    return f'_views_{"_".join(opt.views)}{full}'


def channels_of(views, dataset):
    """Input channels per view; a view read from files has its images' channels (``dataset.file_channels``)."""
    return [view_channels(view, getattr(dataset, 'file_channels', None)) for view in views]


def metric_names(pair_names):
    """{pair: (loss key, prob key)}: the reference's l_loss / ab_loss / l_prob / ab_prob for its two views,
    else loss_<pair> / prob_<pair> (pair '<anchor view>_<memory view>')."""
    if tuple(pair_names) == ('L_ab', 'ab_L'):
        return {'L_ab': ('l_loss', 'l_prob'), 'ab_L': ('ab_loss', 'ab_prob')}
    return {pair: (f'loss_{pair}', f'prob_{pair}') for pair in pair_names}
