"""The methods, each one ``nn.Module`` holding its encoders and its contrast memory (in the manner of
facebookresearch/moco's ``builder.py``): CMC (Tian et al., 2019), InsDis (Wu et al., 2018) and MoCo (He et al., 2019).

Each takes normalised views (float, from ``colour.DeviceView``) and returns contrast scores (column 0 the positive:
B x (K+1) for InsDis and MoCo, one B x (K+1) x 1 per contrasted view pair for CMC); the scripts pair them with
``NCE.NCECriterion.contrast_criterion``. ``checkpoint_modules()`` gives the checkpoint's
entries under the reference's keys (model, contrast, model_ema), so checkpoints keep their format.
"""
from .cmc import CMC, CrossViewPrediction
from .insdis import InsDis
from .moco import MoCo

__all__ = ['CMC', 'CrossViewPrediction', 'InsDis', 'MoCo']
