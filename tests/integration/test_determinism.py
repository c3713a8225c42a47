"""torch.use_deterministic_algorithms(True) is respected: no fusedopt kernel uses float
atomics, so every op runs under it and gives bitwise-equal results run after run."""
import pytest
import torch

import fusedopt
from fusedopt.nn import functional as F

from tests.conftest import DEVICES


@pytest.fixture
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev)


def _layers_once(device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 16, 20, 20, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(32, 1, 3, 3, generator=g).to(device).requires_grad_()
    bw, bb = torch.rand(32, generator=g).to(device).requires_grad_(), torch.randn(32, generator=g).to(device)
    rm, rv = torch.zeros(32, device=device), torch.ones(32, device=device)
    y = F.batch_norm_relu(F.depthwise_conv2d(x, w, None, stride=1, padding=1), rm, rv, bw, bb, training=True)
    y.backward(torch.randn(y.shape, generator=g).to(device))
    return [y, x.grad, w.grad, bw.grad, rm, rv]


def _optim_once(device, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(device)) for s in ((300, 7), (1000,))]
    opt = fusedopt.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(device)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("run", [_layers_once, _optim_once], ids=["layers", "optim"])
def test_bitwise_repeatable_under_deterministic_algorithms(run, device, deterministic):
    first, second = run(device, 0), run(device, 0)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
