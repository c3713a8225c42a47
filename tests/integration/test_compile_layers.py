"""torch.compile(fullgraph=True) of models built from every fusedopt layer, forward and
backward, with no graph break and no recompile from step to step; compiled results
equal eager ones."""
import copy

import pytest
import torch
from torch import nn

import fusedopt
from fusedopt import nn as fnn


class Net2d(nn.Module):
    """Every 2-d fusedopt layer, including the residual BatchNormReLU."""

    def __init__(self):
        super().__init__()
        self.dw = fnn.DepthwiseConv2d(4, 8, 3, padding=1)
        self.bn = fnn.BatchNorm2d(8)
        self.bnrelu = fnn.BatchNormReLU2d(8)
        self.sep = fnn.DepthwiseSeparableConv2d(8, 6, 3, stride=2, padding="same", depth_multiplier=2)
        self.sync = fnn.SyncBatchNorm(6)  # no process group: plain batch norm
        self.bn1d = fnn.BatchNorm1d(6 * 4 * 4)

    def forward(self, x):
        y = self.bn(self.dw(x))
        y = self.bnrelu(y, residual=y)
        return self.bn1d(torch.flatten(self.sync(self.sep(y)), 1))


class Net3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 1)
        self.bn = fnn.BatchNorm3d(4, momentum=None)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("net,shape", [(Net2d, (3, 4, 8, 8)), (Net3d, (2, 2, 3, 4, 5))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_layers_match_eager_without_recompiles(net, shape, channels_last):
    if channels_last and len(shape) == 5:
        pytest.skip("channels_last applies to the 2-d net")
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = net()
    compiled_model = copy.deepcopy(eager)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    eager, compiled_model = eager.to(memory_format=fmt), compiled_model.to(memory_format=fmt)

    # Dynamo traces the forward (fullgraph: a graph break is an error); AOTAutograd
    # derives and compiles the backward through the ops' registered autograd.
    compiled = torch.compile(compiled_model, fullgraph=True)

    for step in range(4):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(step)).contiguous(memory_format=fmt)
        outs = []
        for model, recompile_is_error in ((compiled, step >= 1), (eager, False)):
            model.zero_grad()
            with torch._dynamo.config.patch(error_on_recompile=recompile_is_error):
                out = model(x)
            out.square().mean().backward()
            outs.append(out)
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
        for (name, pe), pc in zip(eager.named_parameters(), compiled_model.parameters()):
            torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, be), bc in zip(eager.named_buffers(), compiled_model.buffers()):
        torch.testing.assert_close(bc, be, rtol=1e-5, atol=1e-6, msg=name)
