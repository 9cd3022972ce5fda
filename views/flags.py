"""CMC's view flags, shared by train_CMC.py and LinearProbing.py: ``--view Lab|YCbCr`` (the reference's two views),
``--views`` (any list of named views, Tian et al. 2019 Sec. 3.3), ``--paradigm core|full`` and ``--view_module`` (the
user's own views); how a view set names its run and its checkpoint keys.

``--view Lab`` is ``--views L ab`` and ``--view YCbCr`` is ``--views Y CbCr``: the same run (name, checkpoint and
numbers). Both two-view sets keep the reference's keys (``l_to_ab``, ``ab_to_l``, ``memory_l``, ``memory_ab``);
any other view v is held under its name lowercased (``memory_s``, network ``s``).
"""
import os

from engine.checkpoint import checkpoint_opt
from engine.errors import UserError
from views.loading import load_view_module, restore_view_module
from views.registry import check_view_name, find_view, find_view_ignoring_case, get_view, made_from_rgb, view_names

LEGACY_VIEWS = {'Lab': ('L', 'ab'), 'YCbCr': ('Y', 'CbCr')}
PARADIGMS = ('core', 'full')
# the reference's two-view keys: Y | CbCr are stored as L | ab were
REFERENCE_KEYS = ('L', 'ab')
VIEW_MODULE_HELP = ('a .py file (or a module name importable from the working directory) that registers your own '
                    'views with views.register_view(name, channels, fn); README, "Add a view"')


def add_view_flags(parser, paradigm=True):
    parser.add_argument('--view', type=str, default=None, choices=sorted(LEGACY_VIEWS),
                        help='the reference\'s two views: Lab = --views L ab (default), YCbCr = --views Y CbCr')
    parser.add_argument('--views', type=str, nargs='+', default=None, metavar='VIEW',
                        help=f'named views, one encoder each: built in {" ".join(view_names("colour"))}; yours with '
                        f'--view_module; with --dataset multiview_folder also any view folder (depth, normal, ...). '
                        f'The first is the core view')
    parser.add_argument('--view_module', type=str, default=None, metavar='PATH_OR_MODULE', help=VIEW_MODULE_HELP)
    if paradigm:
        parser.add_argument('--paradigm', type=str, default='core', choices=PARADIGMS,
                            help='more than two views: core contrasts the first view with each other (eq. 6 of the '
                            'paper), full every pair (eq. 7)')


def resolve_views(opt):
    """Set ``opt.views`` (list) and ``opt.view`` ('Lab' / 'YCbCr' for those two-view sets, else None): names only
    (``check_views`` then checks them)."""
    if opt.view and opt.views:
        raise UserError(f'give --view {opt.view} or --views {" ".join(opt.views)}, not both')
    views = tuple(opt.views or LEGACY_VIEWS[opt.view or 'Lab'])
    opt.views = list(views)
    opt.view = next((name for name, legacy in LEGACY_VIEWS.items() if legacy == views), None)
    return opt


def load_views(opt, resume=None):
    """Import ``--view_module`` (or, without it, when a view is not registered, the module the checkpoint ``resume``
    was trained with, if that file exists), record it in ``opt`` (``view_module`` as given, ``view_module_path``
    absolute: the checkpoint keeps both), then check the view names (``check_views``)."""
    unknown = [view for view in opt.views if not made_from_rgb(view)]
    if opt.view_module:
        opt.view_module_path = load_view_module(opt.view_module)
    elif unknown and resume and os.path.isfile(resume):
        opt.view_module, opt.view_module_path = restore_view_module(checkpoint_opt(resume), None, resume)
    else:
        opt.view_module_path = None
    check_views(opt.views, opt.dataset)


def check_views(views, dataset):
    """At least two distinct views, each registered, or (with --dataset multiview_folder) read from a view folder."""
    lowered = [view.lower() for view in views]
    if len(views) < 2:
        raise UserError(f'--views needs at least two views (CMC contrasts views), got {" ".join(views)}')
    if len(set(lowered)) != len(lowered):
        raise UserError(f'--views {" ".join(views)} names a view twice (names are compared case-insensitively)')
    files = [view for view in views if not made_from_rgb(view)]
    for view in files:
        twin = find_view_ignoring_case(view)
        if twin is not None and twin.kind != 'file':
            raise UserError(f'unknown view {view!r}: did you mean {twin.name!r}? (a view is named exactly as it was '
                            f'registered)')
    if files and dataset != 'multiview_folder':
        raise UserError(f'unknown view{"s" if len(files) > 1 else ""} {" ".join(files)}: the registered views are '
                        f'{" ".join(view_names("colour", "computed"))}; give your own with --view_module; views read '
                        f'from files need --dataset multiview_folder')
    for view in files:
        check_view_name(view, 'view folder')


def checkpoint_views(opt, saved):
    """For a probe: set opt.views, opt.view, opt.view_channels, opt.view_module(_path) and opt.probe_views from the
    pretraining checkpoint's flags ``saved`` (views, or the reference's view), else from --view. A --view that
    contradicts the checkpoint, or a probed view it lacks, is a UserError."""
    views = saved.get('views') or LEGACY_VIEWS.get(saved.get('view') or opt.view)
    given = LEGACY_VIEWS.get(opt.view_given)
    if given and tuple(given) != tuple(views):
        raise UserError(f'--view {opt.view_given} contradicts {opt.model_path}, trained on views {" ".join(views)}; '
                        f'drop --view (the checkpoint\'s views are used)')
    opt.views, opt.view = list(views), next((k for k, v in LEGACY_VIEWS.items() if tuple(v) == tuple(views)), None)
    if opt.view_module or any(find_view(view) is None for view in opt.views):      # only when a view needs it
        opt.view_module, opt.view_module_path = restore_view_module(saved, opt.view_module, opt.model_path)
    else:
        opt.view_module = opt.view_module_path = None
    check_views(opt.views, opt.dataset)
    opt.view_channels = list(saved.get('view_channels') or [get_view(view).channels for view in opt.views])
    for view, channels in zip(opt.views, opt.view_channels):
        registered = find_view(view)
        if registered is not None and registered.kind != 'file' and registered.channels != channels:
            raise UserError(f'view {view!r} has {registered.channels} channel(s) as registered now '
                            f'({registered.source}), but {opt.model_path} was trained with {channels}: give the '
                            f'--view_module it was trained with')
    opt.probe_views = list(opt.probe_views or opt.views)
    if opt.probe_views != opt.views:
        opt.model_name += '_probe_' + '_'.join(opt.probe_views)
    unknown = [view for view in opt.probe_views if view not in opt.views]
    if unknown or len(set(opt.probe_views)) != len(opt.probe_views):
        raise UserError(f'--probe_views {" ".join(opt.probe_views)}: choose distinct views among the checkpoint\'s '
                        f'{" ".join(opt.views)}')


def file_channels(views, channels):
    """{view: channels} of the views read from files (a checkpoint's ``views`` and ``view_channels``)."""
    return {view: c for view, c in zip(views, channels) if not made_from_rgb(view)}


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
    files = getattr(dataset, 'file_channels', None) or {}
    return [files[view] if view in files else get_view(view).channels for view in views]
