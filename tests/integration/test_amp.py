"""Under torch.autocast the fusedopt layers behave as torch's: batch norm runs in its
input's dtype with float32 statistics; depthwise conv runs in the autocast dtype."""
import copy

import pytest
import torch
from torch import nn

import fusedopt

from tests.conftest import DEVICES


def _pair():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8))
    return ref, fusedopt.convert_model(copy.deepcopy(ref))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layers_under_autocast_follow_torch(device, dtype):
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("CPU autocast is bf16 here, as in torch's defaults")
    ref, ours = _pair()
    ref, ours = ref.to(device), ours.to(device)
    x = torch.randn(3, 4, 10, 10, device=device)
    outs, grads = [], []
    for model in (ref, ours):
        xi = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            inner = model[0](xi)
            out = model[1:](inner)
        assert inner.dtype == dtype  # the depthwise conv ran in the autocast dtype
        out.float().square().mean().backward()
        outs.append(out)
        grads.append(xi.grad)
        assert model[1].running_mean.dtype == torch.float32 and model[1].weight.grad.dtype == torch.float32
    assert outs[1].dtype == outs[0].dtype
    tol = dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(outs[1].float(), outs[0].float(), **tol)
    torch.testing.assert_close(grads[1], grads[0], **tol)
    torch.testing.assert_close(ours[1].running_var, ref[1].running_var, rtol=1e-2, atol=1e-3)


def test_autocast_off_keeps_float32():
    _, ours = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert ours(torch.randn(2, 4, 6, 6)).dtype == torch.float32
