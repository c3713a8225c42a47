"""Depthwise conv microbenchmarks: fusedopt.nn against torch's nn.Conv2d(groups=C), on
the 3x3 depthwise layers of MobileNetV2 (batch 32, float32, no bias: BN follows), NCHW
and channels_last, forward and forward+backward, and forward+backward in bf16; plus the
separable block (depthwise + 1x1 pointwise) against two torch convs.

Bytes moved by fusedopt's kernels per call (the model behind GB/s), E = element size:
  forward:           read input + write output                          (in + out) * E
  forward+backward:  forward, then grad_input and grad_weight:
                     NCHW, and channels_last at stride 1 (size-preserving padding): one
                           pass reads grad_out and input, writes grad_input
                           -> (in + out) + (out + in + in)
                     channels_last at stride 2: separate grad_input and grad_weight
                           passes read grad_out twice -> (in + out) + (2 * out + in + in)
  Weights, partials and per-plane scratch buffers (cache-resident) are not counted.
Separable rows (depthwise then 1x1 pointwise to `out` channels), both paths against the
same model, the traffic that any implementation must do (out2 = output elements):
  forward:           read input + write output                          (in + out2) * E
  forward+backward:  forward, then read grad_out and input, write grad_input
                                                          -> (in + out2) + (out2 + 2 * in)
The fused path (fused=True) runs image by image and never writes the intermediate
tensor; the unfused path (fused=False) writes it, then runs the pointwise matmul.
"""
import torch
import torch.nn.functional as F

import fusedopt  # noqa: F401  (registers the ops)
from fusedopt.nn.functional import depthwise_conv2d, depthwise_separable_conv2d

# (N, C, H, W, stride): MobileNetV2's expanded 3x3 depthwise layers.
SHAPES = [(32, 144, 56, 56, 1), (32, 144, 56, 56, 2), (32, 384, 14, 14, 1), (32, 960, 7, 7, 1)]
SEPARABLE = [(32, 144, 56, 56, 1, 24), (32, 384, 14, 14, 1, 64)]  # (..., stride, out_channels)


def cases(quick, device):
    layouts = ("nchw", "channels_last")
    if quick:
        for layout in layouts:
            yield dict(family="depthwise", op="forward+backward", shape=SHAPES[0], layout=layout, device=device)
            yield dict(family="depthwise", op="forward", shape=SHAPES[3], layout=layout, device=device)
        for path in ("fused", "unfused"):
            yield dict(family="depthwise", op="separable forward+backward", shape=SEPARABLE[1], layout="nchw",
                       device=device, path=path)
        return
    for shape in SHAPES:
        for layout in layouts:
            for op in ("forward", "forward+backward"):
                yield dict(family="depthwise", op=op, shape=shape, layout=layout, device=device)
    # bf16 (what CPU autocast runs the layer in), forward+backward
    for shape in SHAPES:
        for layout in layouts:
            yield dict(family="depthwise", op="forward+backward", shape=shape, layout=layout, device=device,
                       dtype=torch.bfloat16)
    for shape in SEPARABLE:
        for layout in layouts:
            for op in ("separable forward", "separable forward+backward"):
                for path in ("fused", "unfused"):
                    yield dict(family="depthwise", op=op, shape=shape, layout=layout, device=device, path=path)


def output_hw(h, w, s):
    """Output height and width of the benchmark's 3x3 convs (padding 1, stride s)."""
    return (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1


def _input(n, c, h, w, layout, device, requires_grad, dtype=torch.float32):
    x = torch.randn(n, c, h, w, device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def _depthwise_fns(case):
    n, c, h, w, s = case["shape"]
    device, backward, dtype = case["device"], case["op"] == "forward+backward", case.get("dtype", torch.float32)
    x = _input(n, c, h, w, case["layout"], device, backward, dtype)
    weight = torch.randn(c, 1, 3, 3, device=device, dtype=dtype, requires_grad=backward)
    oh, ow = output_hw(h, w, s)
    g = torch.randn(n, c, oh, ow, device=device, dtype=dtype)
    if case["layout"] == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)

    # Grads are dropped before each call (zero_grad(set_to_none=True), torch's default), so
    # that both sides time the op, not an accumulation into last call's grads.
    def torch_fn():
        x.grad = weight.grad = None
        y = F.conv2d(x, weight, None, s, 1, 1, c)
        if backward:
            y.backward(g)

    def fused_fn():
        x.grad = weight.grad = None
        y = depthwise_conv2d(x, weight, None, s, 1, 1)
        if backward:
            y.backward(g)

    E = x.element_size()
    ins, outs = n * c * h * w, n * c * oh * ow
    nbytes = (ins + outs) * E
    if backward:
        two_passes = case["layout"] == "channels_last" and s > 1
        nbytes += ((2 if two_passes else 1) * outs + 2 * ins) * E
    return {"torch": torch_fn, "fusedopt": fused_fn}, nbytes, f"{n}x{c}x{h}x{w} k3 s{s}"


def _separable_fns(case):
    n, c, h, w, s, out = case["shape"]
    device, backward, fused = case["device"], case["op"].endswith("backward"), case["path"] == "fused"
    x = _input(n, c, h, w, case["layout"], device, True)
    dw = torch.randn(c, 1, 3, 3, device=device, requires_grad=True)
    pw = torch.randn(out, c, 1, 1, device=device, requires_grad=True)
    b = torch.randn(out, device=device, requires_grad=True)
    oh, ow = output_hw(h, w, s)
    g = torch.randn(n, out, oh, ow, device=device)
    if case["layout"] == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)

    def drop_grads():
        x.grad = dw.grad = pw.grad = b.grad = None

    def torch_fn():
        drop_grads()
        with torch.set_grad_enabled(backward):
            y = F.conv2d(F.conv2d(x, dw, None, s, 1, 1, c), pw, b)
        if backward:
            y.backward(g)

    def fused_fn():
        drop_grads()
        with torch.set_grad_enabled(backward):
            y = depthwise_separable_conv2d(x, dw, pw, b, s, 1, 1, fused=fused)
        if backward:
            y.backward(g)

    E = 4
    ins, outs = n * c * h * w, n * out * oh * ow
    nbytes = ((ins + outs) + ((outs + 2 * ins) if backward else 0)) * E
    return {"torch": torch_fn, "fusedopt": fused_fn}, nbytes, f"{n}x{c}x{h}x{w} k3 s{s} -> {out}"


def run_case(case, timer):
    if case["op"].startswith("separable"):
        fns, nbytes, shape = _separable_fns(case)
    else:
        fns, nbytes, shape = _depthwise_fns(case)
    times = timer(fns, max_seconds=6.0)
    return dict(
        family="depthwise",
        op=f"{case['op']}, {case['path']}" if case["op"].startswith("separable") else f"depthwise {case['op']}",
        shape=shape, dtype=str(case.get("dtype", torch.float32)).replace("torch.", ""), layout=case["layout"],
        device=case["device"],
        times=times, skipped={}, fusedopt="fusedopt", bytes=nbytes,
    )
