"""BatchNorm2d microbenchmarks: fusedopt.nn.BatchNorm2d against torch.nn.BatchNorm2d,
training mode (batch statistics and running-stats update), forward alone and
forward + backward.

Bytes model (per call, E = bytes of one input-sized tensor): the textbook two-pass
kernels, whatever the caches save:
    forward:            read x twice (statistics, normalisation) + write y      = 3 E
    forward + backward: forward + read (dy, x) for the per-channel sums
                        + read (dy, x) and write dx for the element pass        = 8 E
Per-channel tensors (C elements) are not counted. fusedopt's NCHW kernels find the
second read of each channel in L2, so they move less from memory than this model says.
"""
import torch

import fusedopt

SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 112, 112)]
LAYOUTS = ["nchw", "channels_last"]
DTYPES = [torch.float32, torch.bfloat16]
QUICK = [((32, 64, 56, 56), "nchw", torch.float32), ((32, 64, 56, 56), "channels_last", torch.float32),
         ((32, 64, 56, 56), "nchw", torch.bfloat16)]


def cases(quick, device):
    """Every shape x layout x dtype, forward and forward+backward; --quick: the ResNet
    stage-1 shape in fp32 (both layouts) and bf16 NCHW, forward+backward only."""
    if quick:
        for shape, layout, dtype in QUICK:
            yield dict(family="batchnorm", op="bn2d-fwd+bwd", shape=shape, layout=layout, dtype=dtype, device=device)
        return
    for shape in SHAPES:
        for layout in LAYOUTS:
            for dtype in DTYPES:
                for op in ("bn2d-fwd", "bn2d-fwd+bwd"):
                    yield dict(family="batchnorm", op=op, shape=shape, layout=layout, dtype=dtype, device=device)


def _candidates(case):
    shape, dtype, device = case["shape"], case["dtype"], case["device"]
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device).to(dtype)
    dy = torch.randn(shape, generator=g, device=device).to(dtype)
    if case["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    fns = {}
    for name, cls in (("torch", torch.nn.BatchNorm2d), ("fusedopt", fusedopt.nn.BatchNorm2d)):
        bn = cls(c, device=device)  # float32 parameters and buffers, as under autocast
        if case["op"] == "bn2d-fwd":
            def fwd(bn=bn):
                with torch.no_grad():
                    bn(x)
            fns[name] = fwd
        else:
            xg = x.clone().requires_grad_()

            def fwd_bwd(bn=bn, xg=xg):
                xg.grad = None
                bn.zero_grad(set_to_none=True)
                bn(xg).backward(dy)
            fns[name] = fwd_bwd
    return fns, x.numel() * x.element_size()


def run_case(case, timer):
    fns, e = _candidates(case)
    times = timer(fns, max_seconds=6.0)
    return dict(
        family="batchnorm", op=case["op"], shape="x".join(map(str, case["shape"])),
        dtype=str(case["dtype"]).replace("torch.", ""), layout=case["layout"], device=case["device"], times=times,
        skipped={}, fusedopt="fusedopt", bytes=(3 if case["op"] == "bn2d-fwd" else 8) * e,
    )
