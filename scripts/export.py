"""Export a pretrained encoder (CMC, InsDis or MoCo; a checkpoint of ours, of the reference, or the released weights)
for other libraries: torchvision (and timm), detectron2, or safetensors.

    # the demo's CMC encoder (two half-width ResNet-18s, L and ab): safetensors holds every architecture
    python scripts/export.py --model_path results/demo/cmc.pth --to safetensors --out exported/cmc.safetensors
    # the demo's MoCo (a half-width ResNet-18, which torchvision has no model for) as one safetensors file
    python scripts/export.py --model_path results/demo/moco.pth --to safetensors --out exported/moco.safetensors
    # the released CMC ResNet-50 v2: one file per view ({view} -> L, ab), for torchvision and for detectron2
    python scripts/export.py --model_path /path/to/CMC_resnet50v2.pth --to torchvision --out exported/cmc_{view}.pth
    python scripts/export.py --model_path /path/to/CMC_resnet50v2.pth --to detectron2 --out exported/cmc_{view}.pkl

--to torchvision: ResNets at width 1 of a depth torchvision has (InsDis / MoCo resnet18, resnet50; CMC resnet18v2,
  resnet50v2, resnet101v2). Each file is torchvision's state dict (plain tensors, ``torch.load(weights_only=True)``)
  that ``load_state_dict`` takes with strict=True; the projection head is dropped and ``fc`` (1000 classes) is zeros,
  UNTRAINED. A CMC view's conv1 takes that view's channels (L: 1, ab: 2):
      m = torchvision.models.resnet50(); m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
      m.load_state_dict(torch.load('exported/cmc_L.pth'))
  timm: ``timm.create_model('resnet50', in_chans=1)`` loads the same file (``pretrained/torchvision_format.py``).
--to detectron2: ResNet-50 at width 1 (InsDis, MoCo, CMC resnet50v2), the .pkl of facebookresearch/moco's
  detection/convert-pretrain-to-detectron2.py; --out ends with .pkl (``pretrained/detectron2_format.py``).
--to safetensors: every encoder, all views in one file, its preprocessing in the metadata; --out ends with
  .safetensors; ``pretrained.load_encoder(path)`` loads it without pickle (``pretrained/safetensors_format.py``).

--out: the file to write. For torchvision and detectron2 a CMC encoder (several views) writes one file per view: put
{view} in --out, replaced by each view's name. An existing file is kept (the export stops first) unless --overwrite;
each file is written beside its place and renamed into it once all are written.
"""
import functools
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from engine import flags
from engine.checkpoint import DETECTRON2_SUFFIX, SAFETENSORS_SUFFIX
from engine.errors import UserError, run_main
from pretrained.detectron2_format import detectron2_files, detectron2_notes, write_detectron2
from pretrained.load import add_encoder_flags, load_from_flags
from pretrained.outputs import refuse_empty, refuse_outputs, write_outputs
from pretrained.safetensors_format import write_safetensors
from pretrained.torchvision_format import VIEW_PLACEHOLDER, output_paths, torchvision_notes, torchvision_state_dicts

SUFFIXES = {'detectron2': DETECTRON2_SUFFIX, 'safetensors': SAFETENSORS_SUFFIX}


def parse_option(argv=None):
    parser = flags.ArgumentParser('export a pretrained encoder for torchvision / timm, detectron2 or safetensors')
    add_encoder_flags(parser)
    parser.add_argument('--to', required=True, choices=['torchvision', 'detectron2', 'safetensors'])
    parser.add_argument('--out', required=True, help='the file to write; {view} in it is replaced by each view\'s '
                        'name (needed for a CMC encoder --to torchvision / detectron2: one file per view)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files')
    opt = parser.parse_args(argv)
    refuse_empty(opt.out, '--out')
    suffix = SUFFIXES.get(opt.to)
    if suffix and not opt.out.endswith(suffix):
        raise UserError(f'--out {opt.out}: --to {opt.to} writes {suffix} files (the suffix its loader goes by); end '
                        f'--out with {suffix}')
    if opt.to == 'safetensors' and VIEW_PLACEHOLDER in opt.out:
        raise UserError(f'--out {opt.out}: --to safetensors writes every view into one file; drop {VIEW_PLACEHOLDER}')
    return opt


def plan(encoder, opt):
    """({path: write(path)}, what each path holds, the lines to print after): nothing written yet."""
    info = encoder.info
    if opt.to == 'safetensors':
        what = (f'safetensors, every tensor of the {info["method"]} {info["model"]} encoder (views '
                f'{" ".join(encoder.views)}), nothing dropped; info in the metadata; load it with '
                f'pretrained.load_encoder({opt.out!r})')
        return {opt.out: functools.partial(write_safetensors, encoder)}, {opt.out: what}, []
    if opt.to == 'torchvision':
        payloads, write, (holds, notes) = torchvision_state_dicts(encoder), torch.save, torchvision_notes(encoder)
    else:
        payloads, write, (holds, notes) = detectron2_files(encoder), write_detectron2, detectron2_notes(encoder)
    paths = output_paths(opt.out, list(payloads))
    writes = {paths[view]: functools.partial(write, payload) for view, payload in payloads.items()}
    return writes, {paths[view]: what for view, what in holds.items()}, notes


def main(argv=None):
    opt = parse_option(argv)
    encoder = load_from_flags(opt)
    writes, holds, notes = plan(encoder, opt)
    refuse_outputs({path: '--out' for path in writes}, opt.overwrite, keep=[opt.model_path])
    write_outputs(writes)
    for path in writes:
        print(f'wrote {path}: {holds[path]}')
    for line in notes:
        print(line)
    return list(writes)


if __name__ == '__main__':
    run_main(main)
