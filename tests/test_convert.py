"""fusedopt.convert_model: torch layers swapped for fusedopt's, weights, buffers and
behaviour kept."""
import copy

import pytest
import torch
from torch import nn

import fusedopt


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),  # depthwise
        nn.Conv2d(8, 16, 1),
        nn.Sequential(nn.BatchNorm2d(16, momentum=None), nn.Conv2d(16, 32, (3, 1), padding=(1, 0), groups=16)),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, padding_mode="reflect"),
        nn.Conv2d(32, 32, 1),  # pointwise: kept
        nn.Flatten(),
        nn.BatchNorm1d(32 * 4 * 4, affine=False),
    )


def test_convert_model_swaps_layers_and_keeps_everything():
    ref = _net()
    x = torch.randn(4, 3, 8, 8)
    ref(x)  # move the running stats off their initial values
    ours = fusedopt.convert_model(copy.deepcopy(ref))
    expected = [fusedopt.nn.BatchNorm2d, fusedopt.nn.DepthwiseConv2d, fusedopt.nn.BatchNorm2d,
                fusedopt.nn.DepthwiseConv2d, fusedopt.nn.DepthwiseConv2d, fusedopt.nn.BatchNorm1d]
    swapped = [type(m) for m in ours.modules() if type(m).__module__.startswith("fusedopt")]
    assert swapped == expected
    assert type(ours[0]) is nn.Conv2d and type(ours[4]) is nn.Conv2d and type(ours[7]) is nn.Conv2d
    assert ours[6].padding_mode == "reflect"
    assert ref.state_dict().keys() == ours.state_dict().keys()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)

    for mode in ("train", "eval"):
        getattr(ref, mode)()
        getattr(ours, mode)()
        xr = torch.randn(4, 3, 8, 8, requires_grad=True)
        xo = xr.detach().clone().requires_grad_()
        yr, yo = ref(xr), ours(xo)
        torch.testing.assert_close(yo, yr, rtol=1e-4, atol=1e-5)
        g = torch.randn_like(yr)
        yr.backward(g)
        yo.backward(g)
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-4)
        for (name, pr), po in zip(ref.named_parameters(), ours.parameters()):
            # atol: a bias right before a training-mode batch norm has a grad that is zero
            # in exact arithmetic (the norm's input grad sums to zero), float32 noise here.
            torch.testing.assert_close(po.grad, pr.grad, rtol=1e-4, atol=5e-4, msg=lambda m: f"{name}: {m}")
            pr.grad = po.grad = None
    for k, v in ref.state_dict().items():  # running stats moved alike in training mode
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_convert_model_returns_replacement_for_a_bare_layer():
    bn = nn.BatchNorm2d(4).eval()
    out = fusedopt.convert_model(bn)
    assert type(out) is fusedopt.nn.BatchNorm2d and not out.training


def test_convert_model_leaves_fusedopt_and_unrelated_layers_alone():
    m = nn.Sequential(fusedopt.nn.BatchNorm2d(3), nn.Linear(3, 3), nn.SyncBatchNorm(3))
    out = fusedopt.convert_model(m)
    assert out is m
    assert [type(x) for x in out] == [fusedopt.nn.BatchNorm2d, nn.Linear, nn.SyncBatchNorm]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_convert_model_keeps_device_and_dtype(dtype):
    m = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.BatchNorm2d(8)).to(dtype)
    out = fusedopt.convert_model(m)
    for p in out.parameters():
        assert p.dtype == dtype
