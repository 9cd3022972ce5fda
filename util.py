"""The reference's ``util`` names, importable as before: ``adjust_learning_rate``, ``AverageMeter``, ``accuracy``.

Everything else the scripts share lives in the ``engine`` package, one module per concern.
"""
from engine.meters import AverageMeter, accuracy
from engine.schedule import adjust_learning_rate

__all__ = ['adjust_learning_rate', 'AverageMeter', 'accuracy']
