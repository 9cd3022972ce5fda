"""Finite state or nothing. A diverged run can keep a finite loss while its state is not (an absurd learning rate
sends BatchNorm's running variance to inf one epoch before the loss follows): every tensor of the state is checked
before a checkpoint is written, and a checkpoint holding non-finite values is refused when it is loaded."""
import torch

from engine.errors import UserError
from engine.runtime import unwrap

# What a diverged run most likely did, said by both stops (a non-finite loss, a non-finite state): pretraining's
# contrast (its temperature, NCE's exp) and the linear probe's classifier.
LIKELY_CAUSES = ('Likely causes: a learning rate too high for this batch size, a temperature --nce_t so low that '
                 'exp(s/T) overflows, or --amp with the NCE loss (float16 overflows); try a lower --learning_rate, a '
                 'higher --nce_t or no --amp.')
PROBE_CAUSES = ('Likely causes: a --learning_rate too high for these features (try a lower one, or --bn to '
                'normalise them), or --amp (float16 overflows); try a lower --learning_rate, --bn or no --amp.')


def likely_causes(opt):
    """The likely causes for this script: pretraining has a temperature (--nce_t), the probes do not."""
    return LIKELY_CAUSES if 'nce_t' in vars(opt) else PROBE_CAUSES


def float_tensors(tree, prefix=''):
    """(name, tensor) of every floating-point tensor in nested dicts, lists and tuples, in order; names join the keys
    with dots ('model.encoder.l_to_ab.bn1.running_var')."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():
            yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from float_tensors(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from float_tensors(value, f'{prefix}.{i}' if prefix else str(i))


def run_tensors(modules, optimizer):
    """(name, tensor) of a run's whole state: each module's parameters and buffers (BatchNorm statistics, memory
    banks, the queue, Z) under its checkpoint key, then the optimizer's state named by the parameter it belongs to."""
    named, names = [], {}
    for key, module in modules.items():
        module = unwrap(module)
        named += [(f'{key}.{name}', t) for name, t in module.state_dict(keep_vars=True).items()]
        names.update({id(p): f'{key}.{name}' for name, p in module.named_parameters()})
    for param, state in optimizer.state.items():
        named += [(f'optimizer {name} of {names.get(id(param), "a parameter")}', t)
                  for name, t in float_tensors(state)]
    return [(name, t.detach()) for name, t in named if isinstance(t, torch.Tensor) and t.is_floating_point()]


BIG = 1 << 20       # elements from which a tensor gets a reduction of its own (the memory banks, the queue)


def first_non_finite(named):
    """The first (name, tensor) of ``named`` holding NaN or inf, or None; the tensors are only read. Each tensor is
    reduced to values that NaN and inf reach and no finite value overflows: a big one to its min and max
    (``aminmax``, about memory speed), the many small ones together to their largest absolute values (one fused
    ``_foreach_norm`` per device and dtype: a call per tensor costs more in launch overhead than a bank's read); then
    one host sync per device for all of them."""
    named = list(named)
    tensors = dict(named)
    reductions, small = {}, {}                  # device -> [(names, values)];  (device, dtype) -> [(name, tensor)]
    for name, t in named:
        if t.numel() >= BIG:
            reductions.setdefault(t.device, []).append(([name, name], torch.stack(torch.aminmax(t.reshape(-1)))))
        elif t.numel():
            small.setdefault((t.device, t.dtype), []).append((name, t))
    for (device, _), group in small.items():
        largest = torch.stack(torch._foreach_norm([t for _, t in group], float('inf')))
        reductions.setdefault(device, []).append(([name for name, _ in group], largest))
    bad = []
    for entries in reductions.values():
        names = [name for group, _ in entries for name in group]
        finite = torch.isfinite(torch.cat([values.float() for _, values in entries]))
        if not finite.all():
            bad += [names[i] for i in (~finite).nonzero().flatten().tolist()]
    order = {name: position for position, name in enumerate(tensors)}
    first = min(bad, key=order.__getitem__, default=None)
    return None if first is None else (first, tensors[first])


def describe(name, tensor):
    """'model.x.running_var (3 inf of 64 values)'."""
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    counts = ' and '.join(f'{n} {kind}' for n, kind in ((nan, 'NaN'), (inf, 'inf')) if n)
    return f'{name} ({counts} of {tensor.numel()} values)'


def refuse_non_finite(ckpt, path):
    """UserError naming the first non-finite tensor of a loaded checkpoint (a run that diverged wrote it)."""
    bad = first_non_finite(float_tensors(ckpt))
    if bad is not None:
        again = 'probe again' if 'classifier' in ckpt else 'pretrain again'
        raise UserError(f'{path} holds non-finite values: {describe(*bad)}; the run that wrote it had diverged: use '
                        f'an earlier checkpoint of it (ckpt_epoch_N.pth), or {again} with a lower --learning_rate')
