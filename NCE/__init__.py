"""Contrast modules and losses for CMC, InsDis and MoCo (reference module layout: NCE.NCEAverage, NCE.NCECriterion)."""
from .alias_multinomial import AliasMethod, sample_contrast_indices
from .NCEAverage import (ContrastMemory, MemoryInsDis, MemoryMoCo, MultiviewContrast, NCEAverage, contrast_view_pairs,
                         momentum_update_, score_against_memory)
from .NCECriterion import NCECriterion, NCESoftmaxLoss

__all__ = ['AliasMethod', 'sample_contrast_indices', 'ContrastMemory', 'MultiviewContrast', 'contrast_view_pairs',
           'NCEAverage', 'MemoryInsDis', 'MemoryMoCo', 'score_against_memory', 'momentum_update_', 'NCECriterion',
           'NCESoftmaxLoss']
