"""The methods, each one ``nn.Module`` holding its encoders and its contrast memory (in the manner of
facebookresearch/moco's ``builder.py``): CMC (Tian et al., 2019), InsDis (Wu et al., 2018) and MoCo (He et al., 2019).

Each owns its objective: ``forward(x, index)`` takes the normalised views of a batch (float, from ``views.ViewStack``
or ``views.DeviceView``) and the items' data-set indices, and returns an ``engine.loop.StepResult``: the loss (its
criterion, NCE or softmax, or the predictive L2, lives inside) and named metrics, shown as ``console_fields`` and
``tb_tags`` say. ``scores(...)`` gives the raw contrast scores (column 0 the positive). ``checkpoint_modules()`` gives
the checkpoint's entries under the reference's keys (model, contrast, model_ema), so checkpoints keep their format.
"""
from .cmc import CMC, CrossViewPrediction
from .insdis import InsDis
from .moco import MoCo

__all__ = ['CMC', 'CrossViewPrediction', 'InsDis', 'MoCo']
