"""Learning-rate schedules of the reference (step decay, cosine, warm-up), the loop's ``LearningRate``, and the
optimiser."""
import math

import numpy as np
import torch


def adjust_learning_rate(epoch, opt, optimizer):
    """Step decay: lr = learning_rate * lr_decay_rate ** (number of decay epochs strictly below ``epoch``).

    Epochs count from 1, as in the reference.
    """
    steps = int(np.sum(epoch > np.asarray(opt.lr_decay_epochs)))
    new_lr = opt.learning_rate * (opt.lr_decay_rate ** steps)
    for group in optimizer.param_groups:
        group['lr'] = new_lr
    return new_lr


def cosine_learning_rate(epoch, opt):
    """The reference's ``--cosine``: CosineAnnealingLR over all epochs, stepped once at the start of each epoch.

    Written in closed form (so a resumed run needs no scheduler state); eta_min = lr * rate^3 * 0.1.
    """
    eta_min = opt.learning_rate * (opt.lr_decay_rate ** 3) * 0.1
    return eta_min + (opt.learning_rate - eta_min) * (1 + math.cos(math.pi * epoch / opt.epochs)) / 2


def warmup_factor(epoch, step, steps_per_epoch, warm_epochs):
    """Linear warm-up over the first ``warm_epochs`` epochs, per iteration, ending at factor 1."""
    if epoch > warm_epochs:
        return 1.0
    done = (epoch - 1) * steps_per_epoch + step + 1
    return done / (warm_epochs * steps_per_epoch)


def sgd(model, opt):
    """The reference's optimiser for pretraining: SGD with momentum and weight decay over all parameters."""
    return torch.optim.SGD(model.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                           weight_decay=opt.weight_decay)


class LearningRate:
    """The loop's ``set_lr(epoch, step_in_epoch, n_batches)``: step decay (``adjust_learning_rate``) or, with
    ``cosine``, ``cosine_learning_rate``, times the linear warm-up over ``warm_epochs`` (0: none), written into every
    parameter group of ``optimizer`` before each step."""

    def __init__(self, opt, optimizer, cosine=False, warm_epochs=0):
        self.opt, self.optimizer, self.cosine, self.warm_epochs = opt, optimizer, cosine, warm_epochs

    def __call__(self, epoch, step_in_epoch, n_batches):
        if self.cosine:
            lr = cosine_learning_rate(epoch, self.opt)
        else:
            lr = adjust_learning_rate(epoch, self.opt, self.optimizer)
        if self.warm_epochs:
            lr *= warmup_factor(epoch, step_in_epoch, n_batches, self.warm_epochs)
        for group in self.optimizer.param_groups:
            group['lr'] = lr
