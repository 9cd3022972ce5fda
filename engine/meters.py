"""Running averages and top-k accuracy (the reference's AverageMeter and accuracy), and the console fields."""
import torch


class AverageMeter:
    """Computes and stores the average and current value."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def accuracy(output, target, topk=(1,)):
    """Precision@k in percent for each k, as 1-element tensors (the reference's return type)."""
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()                                        # maxk x B
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


def format_meters(meters, fields):
    """The reference's console fields: ``name val (avg)``, tab separated."""
    return '\t'.join(f'{label} {meters[key].val:.3f} ({meters[key].avg:.3f})' for key, label in fields)
