"""Views: what CMC contrasts (Tian et al. 2019). A view is a name, a channel count and a function from the uint8 RGB
batch on the device (B x 3 x H x W) to a normalised float tensor (B x C x H x W); see ``views.registry``.

colour      colour spaces that reproduce scikit-image (``rgb_to``), their value ranges and normalisation
kernels     the uint8 CPU kernels for Lab, YCbCr and RGB (``FastView``)
device      ``DeviceView``: uint8 crops -> a normalised colour space, batched on the device
registry    the registry: built-in colour views, ``register_view`` for your own, views read from files
loading     ``--view_module``: import the user's module of views, and find it again from a checkpoint
stack       ``ViewStack``: the loader's batch -> the named views, stacked on channels
flags       CMC's view flags (--view, --views, --paradigm, --view_module), run names and checkpoint keys
reference   the reference's per-image scikit-image conversions (``RGB2Lab``...; ``--color_on_cpu``)

Your own view, in one file given to ``--view_module`` (README, "Add a view"; ``examples/edges_view.py``):

    from views import register_view
    register_view('edges', 1, sobel_edges)      # sobel_edges(rgb uint8 B x 3 x H x W) -> float B x 1 x H x W
"""
from views.colour import COLOUR_SPACES, VALUE_RANGES, VIEW_STATS, canonical_space, rgb_to
from views.device import DeviceView, PrenormalisedViews
from views.kernels import FastView, fast_rgb_to_lab, fast_rgb_to_ycbcr
from views.loading import load_view_module
from views.registry import CHROMA_VIEWS, COLOUR_VIEWS, View, find_view, get_view, register_view, view_names
from views.stack import ViewStack

__all__ = ['COLOUR_SPACES', 'VALUE_RANGES', 'VIEW_STATS', 'canonical_space', 'rgb_to', 'DeviceView',
           'PrenormalisedViews', 'FastView', 'fast_rgb_to_lab', 'fast_rgb_to_ycbcr', 'load_view_module',
           'CHROMA_VIEWS', 'COLOUR_VIEWS', 'View', 'find_view', 'get_view', 'register_view', 'view_names', 'ViewStack']
