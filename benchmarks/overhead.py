"""Per-call cost of the layers on tensors too small for their kernels to matter:
fusedopt.nn.BatchNorm2d and DepthwiseConv2d against their torch twins, training forward
and forward + backward, on (2, 16, 8, 8). What is timed is the host side of a call
(Python wrapper, dispatcher, autograd, launches): on a GPU it bounds the small layers
of a network, whose kernels take a few microseconds.

Each timed call runs the step CALLS times, so that one timing spans more than the
clock's resolution; the table's times are for the CALLS steps. No bytes model.
"""
import torch

import fusedopt

SHAPE = (2, 16, 8, 8)
CALLS = 50


def cases(quick, device):
    """Both layers, training forward and forward + backward (also in --quick: a few
    seconds in all)."""
    for layer in ("bn2d", "depthwise"):
        for op in ("fwd", "fwd+bwd"):
            yield dict(family="overhead", op=f"{layer}-{op} x{CALLS}", layer=layer, backward=op == "fwd+bwd",
                       shape=SHAPE, device=device)


def _step(case, module, x, dy):
    if not case["backward"]:
        def fwd():
            for _ in range(CALLS):
                module(x)
        return fwd
    xg = x.clone().requires_grad_()

    def fwd_bwd():
        for _ in range(CALLS):
            xg.grad = None
            module.zero_grad(set_to_none=True)
            module(xg).backward(dy)
    return fwd_bwd


def run_case(case, timer):
    device, c = case["device"], case["shape"][1]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(case["shape"], generator=g, device=device)
    dy = torch.randn(case["shape"], generator=g, device=device)
    if case["layer"] == "bn2d":
        pair = {"torch": torch.nn.BatchNorm2d(c, device=device), "fusedopt": fusedopt.nn.BatchNorm2d(c, device=device)}
    else:
        conv = torch.nn.Conv2d(c, c, 3, padding=1, groups=c, device=device)
        pair = {"torch": conv, "fusedopt": fusedopt.nn.DepthwiseConv2d.from_torch(conv)}
    fns = {name: _step(case, m, x, dy) for name, m in pair.items()}
    times = timer(fns, max_seconds=3.0)
    return dict(
        family="overhead", op=case["op"], shape="x".join(map(str, case["shape"])), dtype="float32", layout="nchw",
        device=device, times=times, skipped={}, fusedopt="fusedopt", bytes=None,
    )

