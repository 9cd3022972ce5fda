"""engine.runtime: native bfloat16 detection against the CPU's flags, and channels-last placement."""
import os

import pytest
import torch

from engine import runtime


@pytest.mark.skipif(not os.path.exists('/proc/cpuinfo'), reason='reads the CPU flags from /proc/cpuinfo')
def test_native_bf16_on_the_cpu_agrees_with_the_kernel_cpu_flags():
    flags = set()
    for line in open('/proc/cpuinfo'):
        if line.startswith('flags'):
            flags |= set(line.split(':', 1)[1].split())
    expected = 'avx512_bf16' in flags or 'amx_tile' in flags
    assert runtime.native_bf16(torch.device('cpu')) is expected


def test_place_makes_conv_weights_channels_last_and_keeps_outputs_and_checkpoints():
    from models import build_cmc_model
    torch.manual_seed(0)
    reference = build_cmc_model('resnet18v1').eval()
    placed = build_cmc_model('resnet18v1').eval()
    placed.load_state_dict(reference.state_dict())
    runtime.Runtime(device=torch.device('cpu')).place(placed)
    conv = placed.encoder.ab_to_l.layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(3, 3, 64, 64)
    for layer in (2, 5, 7):
        for a, b in zip(reference(x, layer), placed(x, layer)):
            # channels-last kernels sum the conv products in another order, through 18 layers: the tolerances of
            # test_models' functional-path checks (~sqrt(n) U per layer in practice, n <= 4608)
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # a checkpoint of the placed model loads into a plain one, value for value
    fresh = build_cmc_model('resnet18v1')
    fresh.load_state_dict(placed.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(fresh.state_dict().values(), reference.state_dict().values()))
