"""The methods, each one ``nn.Module`` holding its encoders and its contrast memory (in the manner of
facebookresearch/moco's ``builder.py``): CMC (Tian et al., 2019), InsDis (Wu et al., 2018) and MoCo (He et al., 2019).

Each takes uint8-free, normalised views and returns the contrast scores (B x (K+1), column 0 the positive); the
scripts pair them with ``NCE.NCECriterion.contrast_criterion``. ``checkpoint_modules()`` gives the checkpoint's
entries under the reference's keys (model, contrast, model_ema), so checkpoints keep their format.
"""
from .cmc import CMC
from .insdis import InsDis
from .moco import MoCo

__all__ = ['CMC', 'InsDis', 'MoCo']
