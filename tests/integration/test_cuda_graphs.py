"""CUDA graphs: capturable fusedopt optimizers and the fused layers (forward and backward)
captured once and replayed, against eager torch. Needs a GPU; skipped with a reason
on machines without one (these tests have not yet run on a GPU in this project)."""
import pytest
import torch

import fusedopt
from tests.conftest import CUDA_SKIP_REASON

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)]

KINDS = {"SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(lr=1e-2, capturable=True),
         "AdamW": dict(lr=1e-2, capturable=True, weight_decay=0.1), "RMSprop": dict(lr=1e-2, capturable=True),
         "Adagrad": dict(lr=0.1), "Adadelta": dict(lr=1.0, capturable=True)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_optimizer_step_replays_from_a_cuda_graph(kind):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in ((64, 33), (7,), (1000,))]
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    kw = dict(KINDS[kind])
    lr = kw.pop("lr")
    ours = getattr(fusedopt.optim, kind)(params, lr=torch.tensor(lr, device="cuda"), **kw)
    ref = getattr(torch.optim, kind)(twin, lr=lr, foreach=False, **{k: v for k, v in kw.items() if k != "capturable"})
    static_grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, static_grads):
        p.grad = g

    def grads(step):
        gen = torch.Generator(device="cuda").manual_seed(step)
        return [torch.randn(p.shape, device="cuda", generator=gen) for p in params]

    # Warm up on a side stream (state is created here, outside the capture).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for g, new in zip(static_grads, grads(0)):
            g.copy_(new)
        ours.step()
    torch.cuda.current_stream().wait_stream(side)
    for p, new in zip(twin, grads(0)):
        p.grad = new
    ref.step()

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ours.step()
    for step in range(1, 6):
        for g, new in zip(static_grads, grads(step)):
            g.copy_(new)
        graph.replay()
        for p, new in zip(twin, grads(step)):
            p.grad = new
        ref.step()
    torch.cuda.synchronize()
    for a, b in zip(params, twin):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_layers_forward_and_backward_replay_from_a_cuda_graph():
    torch.manual_seed(0)
    from torch import nn

    ref = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16), nn.ReLU()).cuda()
    ours = fusedopt.convert_model(__import__("copy").deepcopy(ref))
    static_x = torch.randn(4, 8, 12, 12, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        for _ in range(2):
            ours(static_x).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    ours.zero_grad(set_to_none=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ours(static_x)
        static_out.square().mean().backward()
    for m in (ref, ours):  # both start the replays from the same running stats
        m[1].running_mean.zero_()
        m[1].running_var.fill_(1)
    for step in range(3):
        x = torch.randn(4, 8, 12, 12, device="cuda", generator=torch.Generator(device="cuda").manual_seed(step))
        static_x.copy_(x)
        for p in ours.parameters():
            p.grad.zero_()
        graph.replay()
        ref.zero_grad()
        out = ref(x)
        out.square().mean().backward()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_out, out, rtol=1e-4, atol=1e-5)
        for (name, pr), po in zip(ref.named_parameters(), ours.parameters()):
            torch.testing.assert_close(po.grad, pr.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(ours[1].running_var, ref[1].running_var, rtol=1e-5, atol=1e-6)
