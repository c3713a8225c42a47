"""Depthwise and depthwise-separable conv: parity with torch's grouped conv and with the
float64 reference (fusedopt/reference/depthwise.py), both CPU kernel variants, layouts,
dtypes, autograd, opcheck, torch.compile, errors and deterministic grad_weight."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedopt
from fusedopt.nn import DepthwiseConv2d, DepthwiseSeparableConv2d
from fusedopt.nn.functional import depthwise_conv2d, depthwise_separable_conv2d
from fusedopt.reference import depthwise as ref
from tests.conftest import with_threads

OPS = torch.ops.fusedopt

# (N, C, H, W, kernel, stride, padding, dilation, M). Not the full cross product: every
# value of every axis appears, with the awkward ones (odd/tiny spatial sizes, even
# kernels with 'same', asymmetric padding, batch 1) spread across cases.
CASES = [
    (2, 3, 9, 8, 3, 1, 1, 1, 1),
    (2, 4, 10, 11, 3, 2, 1, 1, 1),
    (1, 3, 7, 7, 5, 1, 2, 1, 2),
    (2, 2, 12, 9, 5, 2, 2, 1, 1),
    (1, 2, 11, 13, 7, 1, 3, 1, 1),
    (2, 3, 15, 14, 7, 2, 0, 2, 2),
    (2, 3, 8, 8, 1, 1, 0, 1, 2),
    (1, 4, 9, 6, 1, 2, 0, 1, 1),
    (2, 2, 9, 7, (3, 1), 1, (1, 0), 1, 1),
    (2, 2, 10, 9, (3, 1), 2, 1, (2, 1), 2),
    (2, 3, 9, 9, 3, 1, 2, 2, 1),
    (1, 3, 12, 10, 3, 2, 1, 2, 2),
    (2, 3, 8, 9, 3, 1, "same", 1, 1),
    (1, 2, 7, 8, 4, 1, "same", 1, 2),
    (2, 2, 9, 6, (2, 4), 1, "same", 2, 1),
    (1, 2, 5, 6, 5, 1, "valid", 1, 1),
    (1, 1, 1, 1, 1, 1, 0, 1, 1),
    (3, 2, 3, 2, 3, 1, 1, 1, 3),
    (2, 3, 10, 9, 3, 2, (1, 2, 0, 1), 1, 1),  # asymmetric (top, bottom, left, right)
    (2, 5, 8, 8, 3, 3, 1, 1, 1),
]


def case_id(c):
    n, ch, h, w, k, s, p, d, m = c
    return f"N{n}C{ch}_{h}x{w}_k{k}_s{s}_p{p}_d{d}_m{m}".replace(" ", "")


def pad4(padding, kernel, dilation):
    """(top, bottom, left, right) for the torch-style padding of a case (torch's 'same')."""
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":
        out = []
        for kk, dd in zip(k, d):
            t = dd * (kk - 1)
            out += [t // 2, t - t // 2]
        return out
    if isinstance(padding, int):
        return [padding] * 4
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    return list(padding)


def torch_conv(x, w, b, stride, p4, dilation):
    """torch's grouped conv with explicit (possibly asymmetric) zero padding."""
    xp = F.pad(x, (p4[2], p4[3], p4[0], p4[1]))
    return F.conv2d(xp, w, b, stride, 0, dilation, groups=x.shape[1])


def make(case, dtype=torch.float32, device="cpu", channels_last=False, bias=True, seed=0):
    n, c, h, w, k, s, p, d, m = case
    kh, kw = (k, k) if isinstance(k, int) else k
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(c * m, 1, kh, kw, generator=gen, dtype=torch.float64)
    b = torch.randn(c * m, generator=gen, dtype=torch.float64) if bias else None
    x = x.to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = wt.to(device=device, dtype=dtype)
    b = b.to(device=device, dtype=dtype) if bias else None
    return x, wt, b, s, p, d


def close(actual, expected, tol, what):
    expected = expected.to(torch.float64)
    scale = max(expected.abs().max().item(), 1.0)
    err = (actual.to(torch.float64).cpu() - expected.cpu()).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3g}"


def run_fused(x, w, b, s, p, d, grad_out):
    xg = x.detach().clone().requires_grad_()
    wg = w.detach().clone().requires_grad_()
    bg = b.detach().clone().requires_grad_() if b is not None else None
    y = depthwise_conv2d(xg, wg, bg, s, p, d)
    y.backward(grad_out)
    return y, xg.grad, wg.grad, (bg.grad if bg is not None else None)


def check_case(case, dtype, device, channels_last, tol_torch, tol_ref, bias=True):
    x, w, b, s, p, d = make(case, dtype, device, channels_last, bias)
    st = (s, s) if isinstance(s, int) else s
    dl = (d, d) if isinstance(d, int) else d
    p4 = pad4(p, w.shape[2:], dl)
    expected = ref.depthwise_conv2d(x, w, b, st, p4, dl)
    gen = torch.Generator().manual_seed(1)
    g64 = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    g = g64.to(device=device, dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    y, gx, gw, gb = run_fused(x, w, b, s, p, d, g)
    assert y.shape == expected.shape and y.dtype == dtype
    if channels_last and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        assert gx.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()
    rgx, rgw, rgb = ref.depthwise_conv2d_grads(g64, x, w, b, st, p4, dl)
    close(y, expected, tol_ref, "output vs reference")
    close(gx, rgx, tol_ref, "grad_input vs reference")
    close(gw, rgw, tol_ref, "grad_weight vs reference")
    if bias:
        close(gb, rgb, tol_ref, "grad_bias vs reference")
    # torch's grouped conv, same dtype
    xt = x.detach().clone().requires_grad_()
    wt = w.detach().clone().requires_grad_()
    bt = b.detach().clone().requires_grad_() if bias else None
    # cuDNN may take TF32 algorithms for float32 (seen on an H200: grad_input 4e-3 off the
    # float64 reference, where fusedopt's was within 2e-5 of it).
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yt = torch_conv(xt, wt, bt, st, p4, dl)
        yt.backward(g)
    close(y, yt, tol_torch, "output vs torch")
    close(gx, xt.grad, tol_torch, "grad_input vs torch")
    close(gw, wt.grad, tol_torch, "grad_weight vs torch")
    if bias:
        close(gb, bt.grad, tol_torch, "grad_bias vs torch")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_grid_float32(case, channels_last, device):
    check_case(case, torch.float32, device, channels_last, 2e-5, 2e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3], CASES[5], CASES[9], CASES[13], CASES[18]], ids=case_id)
def test_both_simd_variants(case, channels_last, simd_all):
    check_case(case, torch.float32, "cpu", channels_last, 2e-5, 2e-5)
    check_case(case, torch.float64, "cpu", channels_last, 1e-12, 1e-12, bias=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[2], CASES[9]], ids=case_id)
def test_half_types_accumulate_in_float(case, channels_last, dtype, device):
    # One rounding of a float32 sum: within a few ulps of the float64 result.
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    check_case(case, dtype, device, channels_last, 2 * tol, tol)


def test_mobilenet_shapes_match_torch(simd_all):
    # The benchmark's hot paths (3x3 s1/s2 with padding 1, many channels), both layouts.
    for shape, s in [((2, 16, 20, 20), 1), ((2, 16, 21, 20), 2)]:
        for cl in (False, True):
            case = (*shape, 3, s, 1, 1, 1)
            check_case(case, torch.float32, "cpu", cl, 2e-5, 2e-5)


# The same geometries with depth multiplier 1 and channels a multiple of 8: the CPU
# kernels' channel-block paths (8 channels per vector, 16 in the AVX-512 unit's
# channels_last kernels; zero-padded block buffers; stride 1 gathers grad_input, other
# strides and padding beyond the kernel's reach scatter).
BLOCK_CASES = [(n, 16, h, w, k, s, p, d, 1) for (n, _, h, w, k, s, p, d, _) in CASES] + [
    (1, 8, 1, 1, 3, 1, 1, 1, 1),
    (2, 24, 5, 5, 3, 1, 3, 1, 1),  # padding beyond the kernel's reach
    # Larger planes, one with rows of padding only.
    (1, 8, 37, 35, 3, 1, 1, 1, 1),
    (1, 8, 45, 40, 5, 2, 2, 2, 1),
    (1, 8, 33, 40, 3, 1, 20, 1, 1),  # whole rows of padding
    # Stride 1, asymmetric (top, bottom, left, right) padding that keeps the size: the
    # channels_last backward's single walk.
    (2, 16, 9, 11, 3, 1, (2, 0, 0, 2), 1, 1),
    (1, 16, 8, 7, 5, 1, (0, 4, 3, 1), 1, 1),
    # Several channel vectors per row at either width (8, or 16 in the AVX-512 unit).
    (2, 48, 6, 7, 3, 1, 1, 1, 1),
    (1, 32, 9, 8, 5, 2, 2, 1, 1),
    # Stride 2, asymmetric padding (Keras 'same'), a single column, padding beyond the
    # kernel's reach: the channels_last grad_input by row and column parity.
    (2, 16, 7, 9, 3, 2, (1, 0, 0, 1), 1, 1),
    (1, 32, 10, 1, 5, 2, (2, 2, 1, 3), 1, 1),
    (2, 16, 6, 8, 3, 2, (0, 3, 2, 0), 1, 1),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=case_id)
def test_channel_blocks(case, channels_last, simd_all):
    check_case(case, torch.float32, "cpu", channels_last, 2e-5, 2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [BLOCK_CASES[0], BLOCK_CASES[1], BLOCK_CASES[5], BLOCK_CASES[18]], ids=case_id)
def test_channel_blocks_dtypes(case, dtype, simd_all):
    tol = {torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    for cl in (False, True):
        check_case(case, dtype, "cpu", cl, 2 * tol, tol, bias=dtype != torch.float64)


# channels_last, stride 1, size-preserving padding: the full backward walks the rows
# once for grad_input and grad_weight together, a single grad walks them alone; both
# must give the same bits.
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True)])
@pytest.mark.parametrize("case", [BLOCK_CASES[0], BLOCK_CASES[1], BLOCK_CASES[2], BLOCK_CASES[10]], ids=case_id)
def test_channel_blocks_some_grads(case, mask, channels_last):
    x, w, b, s, p, d = make(case, channels_last=channels_last)
    p4 = pad4(p, w.shape[2:], (d, d))
    y = OPS.depthwise_conv2d(x, w, b, [s, s], p4, [d, d])
    g = torch.randn_like(y)
    full = OPS.depthwise_conv2d_backward(g, x, w, [s, s], p4, [d, d], [True, True, True])
    some = OPS.depthwise_conv2d_backward(g, x, w, [s, s], p4, [d, d], list(mask))
    for want, a, e in zip(mask, some, full):
        assert torch.equal(a, e) if want else a.numel() == 0


# NCHW, stride 1 or 2, no dilation, depth multiplier 1, 3x3 or 5x5, rows of at least 24
# outputs: the CPU row kernels (8 columns per vector, 16 in the AVX-512 unit; the last
# vector of a row overlaps the one before; at stride 2 rows split by column parity and
# grad_input gathered by phase). Widths give whole vectors and tails at either width,
# odd and even; padding runs from none to the kernel's reach, asymmetric included.
ROWS_CASES = [
    (2, 3, 9, 32, 3, 1, 1, 1, 1),  # whole vectors at 8 and at 16
    (1, 5, 11, 37, 3, 1, 1, 1, 1),  # a tail at either width
    (2, 2, 7, 26, 3, 1, 0, 1, 1),  # no padding: 24 outputs per row
    (1, 3, 12, 40, 5, 1, 2, 1, 1),
    (1, 2, 9, 30, 5, 1, (4, 0, 1, 4), 1, 1),  # asymmetric, up to the kernel's reach
    (2, 16, 8, 56, 3, 1, (0, 2, 2, 0), 1, 1),  # channels a multiple of 8
    (2, 3, 9, 56, 3, 2, 1, 1, 1),
    (1, 4, 10, 51, 3, 2, 1, 1, 1),  # odd width
    (1, 2, 11, 50, 3, 2, (0, 1, 0, 1), 1, 1),  # Keras 'same' at stride 2
    (2, 2, 7, 49, 3, 2, 0, 1, 1),  # no padding
    (1, 2, 9, 60, 5, 2, 2, 1, 1),
    (1, 3, 8, 53, 5, 2, (1, 4, 3, 2), 1, 1),  # odd left padding
]


@pytest.mark.parametrize("case", ROWS_CASES, ids=case_id)
def test_rows(case, simd_all):
    check_case(case, torch.float32, "cpu", False, 2e-5, 2e-5)
    check_case(case, torch.float32, "cpu", False, 2e-5, 2e-5, bias=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [ROWS_CASES[1], ROWS_CASES[4], ROWS_CASES[7], ROWS_CASES[11]], ids=case_id)
def test_rows_dtypes(case, dtype, simd_all):
    tol = {torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    check_case(case, dtype, "cpu", False, 2 * tol, tol, bias=dtype != torch.float64)


@pytest.mark.parametrize("case", [ROWS_CASES[3], ROWS_CASES[7]], ids=case_id)
@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True)])
def test_rows_some_grads(case, mask, simd_all):
    # grad_input and grad_weight share a pass over each plane; asked for alone, each must
    # come out with the same bits.
    x, w, b, s, p, d = make(case)
    p4 = pad4(p, w.shape[2:], (d, d))
    g = torch.randn_like(OPS.depthwise_conv2d(x, w, b, [s, s], p4, [d, d]))
    full = OPS.depthwise_conv2d_backward(g, x, w, [s, s], p4, [d, d], [True, True, True])
    some = OPS.depthwise_conv2d_backward(g, x, w, [s, s], p4, [d, d], list(mask))
    for want, a, e in zip(mask, some, full):
        assert torch.equal(a, e) if want else a.numel() == 0


@pytest.mark.parametrize("case", [(1, 2, 4, 25, 3, 1, 1, 1, 1), (1, 1, 3, 49, 3, 2, 1, 1, 1)], ids=case_id)
def test_rows_gradcheck_float64(case):
    x, w, b, s, p, d = make(case, torch.float64)
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: depthwise_conv2d(x, w, b, s, p, d), (x, w, b))


def test_rows_avx512_unit_against_avx2():
    # 3x3: each output and grad_input value is the same sum at either width, so those bits
    # match; grad_weight's per-plane sums run in 16 lanes instead of 8 (close, not equal).
    # 5x5 takes the rows only at 16 lanes (the AVX2 unit runs the channel blocks): close.
    if fusedopt.build_info()["simd_available"] != "avx512":
        pytest.skip("this CPU or build has no avx512 kernels")
    for case in ROWS_CASES:
        x, w, b, s, p, d = make(case)
        p4 = pad4(p, w.shape[2:], (d, d))
        outs = {}
        for level in ("avx512", "avx2"):
            previous = fusedopt._C._set_cpu_simd(level)
            try:
                y = OPS.depthwise_conv2d(x, w, b, [s, s], p4, [d, d])
                g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
                outs[level] = (y, *OPS.depthwise_conv2d_backward(g, x, w, [s, s], p4, [d, d], [True, True, True]))
            finally:
                fusedopt._C._set_cpu_simd(previous)
        a, e = outs["avx512"], outs["avx2"]
        if w.shape[2] == 3:
            assert torch.equal(a[0], e[0]) and torch.equal(a[1], e[1]), case_id(case)
        else:
            close(a[0], e[0], 1e-5, "output, avx512 vs avx2")
            close(a[1], e[1], 1e-5, "grad_input, avx512 vs avx2")
        close(a[2], e[2], 1e-5, "grad_weight, avx512 vs avx2")
        close(a[3], e[3], 1e-5, "grad_bias, avx512 vs avx2")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", [CASES[1], CASES[9], CASES[18]], ids=case_id)
def test_gradcheck_float64(case, channels_last, device):
    x, w, b, s, p, d = make(case, torch.float64, device, channels_last)
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: depthwise_conv2d(x, w, b, s, p, d), (x, w, b))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", [CASES[1], CASES[9], CASES[13], CASES[18]], ids=case_id)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_gradgradcheck_float64(case, channels_last, bias, device):
    # Double backward runs our ops again (csrc/depthwise/depthwise_autograd.cpp).
    x, w, b, s, p, d = make(case, torch.float64, device, channels_last, bias=bias)
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    fn = (lambda x, w, b: depthwise_conv2d(x, w, b, s, p, d)) if bias else (
        lambda x, w: depthwise_conv2d(x, w, None, s, p, d))
    assert torch.autograd.gradgradcheck(fn, leaves)


def test_gradient_penalty_matches_torch():
    # A second derivative as training code takes it: the norm of the input gradient.
    x, w, b, s, p, d = make(CASES[3], torch.float64, seed=4)
    grads = []
    for conv in (lambda x, w, b: depthwise_conv2d(x, w, b, s, p, d),
                 lambda x, w, b: F.conv2d(x, w, b, s, p, d, groups=x.shape[1])):
        xl, wl, bl = (t.detach().clone().requires_grad_() for t in (x, w, b))
        (gx,) = torch.autograd.grad(conv(xl, wl, bl).square().sum(), [xl], create_graph=True)
        grads.append(torch.autograd.grad(gx.square().sum(), [xl, wl, bl], allow_unused=True))
    for a, e in zip(*grads):
        close(a, e, 1e-10, "gradient penalty grad")


def test_fused_separable_refuses_double_backward():
    x, dw, pw, b = (t.requires_grad_() for t in separable_case())
    y = OPS.depthwise_separable_conv2d(x, dw, pw, b, [1, 1], [1, 1, 1, 1], [1, 1])
    (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="fused=False"):
        gx.sum().backward()
    y = depthwise_separable_conv2d(x, dw, pw, b, padding=1, fused=False)
    (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    gx.sum().backward()  # the unfused path has a second derivative
    assert dw.grad is not None and dw.grad.abs().sum() > 0


def test_only_some_grads():
    x, w, b, s, p, d = make(CASES[1])
    x.requires_grad_()
    y = depthwise_conv2d(x, w, b, s, p, d)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    p4 = pad4(p, w.shape[2:], (d, d))
    rgx, _, _ = ref.depthwise_conv2d_grads(torch.ones(y.shape, dtype=torch.float64), x, w, b, (s, s), p4, (d, d))
    close(gx, rgx, 2e-5, "grad_input alone")
    gi, gw, gb = OPS.depthwise_conv2d_backward(torch.randn_like(y), x.detach(), w, [s, s], p4, [d, d], [False, True, False])
    assert gi.numel() == 0 and gb.numel() == 0 and gw.shape == w.shape


def test_empty_batch():
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    y = depthwise_conv2d(x, w, b, 1, 1)
    assert y.shape == (0, 3, 5, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


# ---------------------------------------------------------------- modules

@pytest.mark.parametrize("padding,padding_mode", [
    (0, "zeros"), (1, "zeros"), ((2, 1), "zeros"), ("same", "zeros"), ("valid", "zeros"),
    (1, "reflect"), ((2, 1), "reflect"), ("same", "reflect"), (1, "circular"), ("same", "circular"),
])
def test_module_matches_nn_conv2d(padding, padding_mode):
    torch.manual_seed(0)
    kw = dict(kernel_size=(3, 4) if padding == "same" else 3, stride=1, padding=padding, dilation=1, bias=True,
              padding_mode=padding_mode)
    tconv = nn.Conv2d(4, 8, groups=4, **kw)
    fconv = DepthwiseConv2d(4, 8, **kw)
    assert fconv.state_dict().keys() == tconv.state_dict().keys()
    fconv.load_state_dict(tconv.state_dict())
    x = torch.randn(2, 4, 9, 10)
    xt, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yt, yf = tconv(xt), fconv(xf)
    g = torch.randn_like(yt)
    yt.backward(g)
    yf.backward(g)
    close(yf, yt, 2e-5, "module output")
    close(xf.grad, xt.grad, 2e-5, "module grad_input")
    close(fconv.weight.grad, tconv.weight.grad, 2e-5, "module grad_weight")
    close(fconv.bias.grad, tconv.bias.grad, 2e-5, "module grad_bias")


def test_from_torch_keeps_weights_and_config():
    torch.manual_seed(0)
    tconv = nn.Conv2d(6, 12, 5, stride=2, padding=2, dilation=1, groups=6, bias=False).double()
    fconv = DepthwiseConv2d.from_torch(tconv)
    assert isinstance(fconv, nn.Conv2d) and fconv.groups == 6 and fconv.bias is None
    assert fconv.weight.dtype == torch.float64 and torch.equal(fconv.weight, tconv.weight)
    assert fconv.weight.data_ptr() != tconv.weight.data_ptr()
    x = torch.randn(2, 6, 11, 12, dtype=torch.float64)
    close(fconv(x), tconv(x), 1e-12, "from_torch output")
    with pytest.raises(ValueError, match="groups == in_channels"):
        DepthwiseConv2d.from_torch(nn.Conv2d(4, 4, 3))


def keras_same(size, k, s, d):
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("k,s,d,m,padding,hw", [
    (3, 1, 1, 1, "same", (9, 8)),
    (3, 2, 1, 2, "same", (10, 9)),  # stride 2: Keras pads (0, 1) on even sizes
    (5, 2, 1, 1, "same", (11, 12)),
    (4, 1, 2, 1, "same", (8, 9)),
    (3, 2, 1, 1, "valid", (9, 9)),
    (3, 1, 1, 3, 1, (7, 6)),
])
@pytest.mark.parametrize("fused", [None, True, False], ids=["auto", "fused", "unfused"])
def test_separable_matches_two_convs(k, s, d, m, padding, hw, channels_last, fused):
    torch.manual_seed(0)
    c, out = 4, 6
    mod = DepthwiseSeparableConv2d(c, out, k, stride=s, padding=padding, dilation=d, depth_multiplier=m, fused=fused)
    assert isinstance(mod.depthwise, DepthwiseConv2d) and mod.depthwise.bias is None
    assert mod.pointwise.weight.shape == (out, c * m, 1, 1) and mod.pointwise.bias is not None
    x = torch.randn(2, c, *hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if padding == "same":
        (pt, pb), (pl, pr) = keras_same(hw[0], k, s, d), keras_same(hw[1], k, s, d)
        assert hw[0] % s or s == 1 or pt < pb  # stride 2 on even sizes pads asymmetrically
    elif padding == "valid":
        pt = pb = pl = pr = 0
    else:
        pt = pb = pl = pr = padding
    xt, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    mid = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), mod.depthwise.weight, None, s, 0, d, groups=c)
    yt = F.conv2d(mid, mod.pointwise.weight, mod.pointwise.bias)
    yf = mod(xf)
    if padding == "same":
        assert yf.shape[2:] == (-(-hw[0] // s), -(-hw[1] // s))
    g = torch.randn_like(yt)
    grads_t = torch.autograd.grad(yt, [xt, mod.depthwise.weight, mod.pointwise.weight, mod.pointwise.bias], g)
    grads_f = torch.autograd.grad(yf, [xf, mod.depthwise.weight, mod.pointwise.weight, mod.pointwise.bias], g)
    close(yf, yt, 2e-5, "separable output")
    for a, b_, name in zip(grads_f, grads_t, ["input", "depthwise", "pointwise", "bias"]):
        close(a, b_, 2e-5, f"separable grad {name}")
    expected = ref.depthwise_separable_conv2d(x, mod.depthwise.weight, mod.pointwise.weight, mod.pointwise.bias,
                                              (s, s), [pt, pb, pl, pr], (d, d))
    close(yf, expected, 2e-5, "separable output vs reference")
    yfun = depthwise_separable_conv2d(x, mod.depthwise.weight, mod.pointwise.weight, mod.pointwise.bias, s, padding, d,
                                      fused=fused)
    close(yfun, expected, 2e-5, "functional separable vs reference")
    if channels_last:
        assert yf.is_contiguous(memory_format=torch.channels_last)


def separable_case(channels_last=False, dtype=torch.float64, n=2, c=8, m=1, out=5, hw=(9, 7), bias=True):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, c, *hw, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dw = torch.randn(c * m, 1, 3, 3, generator=gen, dtype=dtype)
    pw = torch.randn(out, c * m, 1, 1, generator=gen, dtype=dtype)
    b = torch.randn(out, generator=gen, dtype=dtype) if bias else None
    return x, dw, pw, b


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("c,m,s,p", [(8, 1, 1, [1, 1, 1, 1]), (3, 2, 2, [0, 1, 1, 0]), (16, 1, 2, [1, 1, 1, 1])])
def test_fused_separable_op_matches_reference(channels_last, c, m, s, p, device):
    # float64 against the float64 reference: output and all four grads, some-grads masks,
    # and gradcheck through the autograd registration.
    x, dw, pw, b = (t.to(device) for t in separable_case(channels_last, c=c, m=m))
    st, dl = [s, s], [1, 1]
    y = OPS.depthwise_separable_conv2d(x, dw, pw, b, st, p, dl)
    expected = ref.depthwise_separable_conv2d(x, dw, pw, b, st, p, dl)
    close(y, expected, 1e-12, "fused separable output")
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    g = torch.randn_like(y)
    leaves = [t.detach().clone().requires_grad_() for t in (x, dw, pw, b)]
    yr = ref.depthwise_separable_conv2d(*leaves, st, p, dl)
    want = torch.autograd.grad(yr, leaves, g)
    full = OPS.depthwise_separable_conv2d_backward(g, x, dw, pw, st, p, dl, [True] * 4)
    for a, e, name in zip(full, want, ["input", "depthwise", "pointwise", "bias"]):
        close(a, e, 1e-12, f"fused separable grad {name}")
    for i in range(4):
        mask = [j == i for j in range(4)]
        some = OPS.depthwise_separable_conv2d_backward(g, x, dw, pw, st, p, dl, mask)
        assert all(t.numel() == 0 for j, t in enumerate(some) if j != i)
        assert torch.equal(some[i], full[i])
    x, dw, pw, b = (t.to(device).requires_grad_() for t in separable_case(channels_last, c=3, m=m, n=1, hw=(5, 6)))
    assert torch.autograd.gradcheck(lambda *a: OPS.depthwise_separable_conv2d(*a, st, p, dl), (x, dw, pw, b))


# Every pattern of which tensors ask for a grad, the bias absent, given, or given with a
# grad. The autograd kernels (csrc/depthwise/depthwise_autograd.cpp) map the graph's
# edges, which skip an absent bias, back to argument order.
_GRAD_PATTERNS = [(x, w, b) for x in (False, True) for w in (False, True) for b in (None, False, True)
                  if x or w or b]


@pytest.mark.parametrize("x_grad,w_grad,b_kind", _GRAD_PATTERNS)
def test_conv_grads_reach_exactly_the_inputs_that_ask(x_grad, w_grad, b_kind):
    x, w, b, s, p, d = make(CASES[1], dtype=torch.float64, seed=7, bias=b_kind is not None)
    x.requires_grad_(x_grad), w.requires_grad_(w_grad)
    if b is not None:
        b.requires_grad_(b_kind)
    leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
    p4 = pad4(p, w.shape[2:], (d, d))
    y = depthwise_conv2d(x, w, b, s, p, d)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, g)
    want = torch.autograd.grad(ref.depthwise_conv2d(x, w, b, (s, s), p4, (d, d)), leaves, g)
    for a, e in zip(got, want):
        close(a, e, 1e-12, "grad")


@pytest.mark.parametrize("x_grad,w_grad,b_kind", _GRAD_PATTERNS)
def test_separable_grads_reach_exactly_the_inputs_that_ask(x_grad, w_grad, b_kind):
    # w_grad stands for both weights: the depthwise one asks when it is set, the
    # pointwise one when it is not, so each weight is tested asking and not asking.
    x, dw, pw, b = separable_case(bias=b_kind is not None)
    x.requires_grad_(x_grad), dw.requires_grad_(w_grad), pw.requires_grad_(not w_grad)
    if b is not None:
        b.requires_grad_(b_kind)
    leaves = [t for t in (x, dw, pw, b) if t is not None and t.requires_grad]
    st, p, dl = [2, 2], [0, 1, 1, 0], [1, 1]
    y = OPS.depthwise_separable_conv2d(x, dw, pw, b, st, p, dl)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, g)
    want = torch.autograd.grad(ref.depthwise_separable_conv2d(x, dw, pw, b, st, p, dl), leaves, g)
    for a, e in zip(got, want):
        close(a, e, 1e-12, "grad")


def test_fused_separable_float32_threads_and_empty_batch():
    x, dw, pw, b = separable_case(dtype=torch.float32, n=6, c=16, out=12, hw=(14, 14))
    args = ([1, 1], [1, 1, 1, 1], [1, 1])
    y = OPS.depthwise_separable_conv2d(x, dw, pw, b, *args)
    close(y, F.conv2d(F.conv2d(x, dw, None, 1, 1, 1, 16), pw, b), 2e-5, "fused separable float32")
    g = torch.randn_like(y)
    runs = [with_threads(n, lambda: OPS.depthwise_separable_conv2d_backward(g, x, dw, pw, *args, [True] * 4))
            for n in (torch.get_num_threads(), 1)]
    assert all(torch.equal(a, e) for a, e in zip(*runs))  # per-image partials, summed in order
    x0 = x[:0].clone().requires_grad_()
    leaves = [t.clone().requires_grad_() for t in (dw, pw, b)]
    y0 = depthwise_separable_conv2d(x0, *leaves, 1, 1, fused=True)
    assert y0.shape == (0, 12, 14, 14)
    y0.sum().backward()
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in leaves)


def test_fused_separable_errors():
    x, dw, pw, b = separable_case(dtype=torch.float32)
    with pytest.raises(TypeError, match="float32 or float64.*fused=False"):
        depthwise_separable_conv2d(x.bfloat16(), dw.bfloat16(), pw.bfloat16(), b.bfloat16(), 1, 1, fused=True)
    with pytest.raises(ValueError, match=r"pointwise weight must have shape \(out, 8, 1, 1\)"):
        OPS.depthwise_separable_conv2d(x, dw, pw[:, :4], b, [1, 1], [1, 1, 1, 1], [1, 1])
    with pytest.raises(ValueError, match="bias must have shape"):
        OPS.depthwise_separable_conv2d(x, dw, pw, b[:2], [1, 1], [1, 1, 1, 1], [1, 1])
    with pytest.raises(TypeError, match="pointwise weight dtype"):
        OPS.depthwise_separable_conv2d(x, dw, pw.double(), b, [1, 1], [1, 1, 1, 1], [1, 1])
    y = OPS.depthwise_separable_conv2d(x, dw, pw, b, [1, 1], [1, 1, 1, 1], [1, 1])
    with pytest.raises(ValueError, match="grad_out must have shape"):
        OPS.depthwise_separable_conv2d_backward(y[:, :2], x, dw, pw, [1, 1], [1, 1, 1, 1], [1, 1], [True] * 4)
    # bf16 takes the unfused path by default
    yb = depthwise_separable_conv2d(x.bfloat16(), dw.bfloat16(), pw.bfloat16(), b.bfloat16(), 1, 1)
    close(yb, F.conv2d(F.conv2d(x, dw, None, 1, 1, 1, 8), pw, b), 5e-2, "bf16 separable (unfused)")


# ---------------------------------------------------------------- dispatcher / compile

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_opcheck(channels_last, device):
    x, w, b, s, p, d = make(CASES[9], device=device, channels_last=channels_last)
    p4 = pad4(p, w.shape[2:], d)
    st, dl = [s, s], list(d)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    torch.library.opcheck(OPS.depthwise_conv2d, (x, w, b, st, p4, dl))
    torch.library.opcheck(OPS.depthwise_conv2d, (x, w, None, st, p4, dl))
    y = OPS.depthwise_conv2d(x.detach(), w.detach(), None, st, p4, dl)
    g = torch.randn_like(y)
    for mask in ([True, True, True], [False, True, False], [True, False, False]):
        torch.library.opcheck(OPS.depthwise_conv2d_backward, (g, x.detach(), w.detach(), st, p4, dl, mask))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_opcheck_fused_separable(channels_last, device):
    x, dw, pw, b = (t.to(device) for t in separable_case(channels_last, dtype=torch.float32, c=4, m=2))
    args = ([2, 2], [1, 0, 1, 1], [1, 1])
    for t in (x, dw, pw, b):
        t.requires_grad_()
    torch.library.opcheck(OPS.depthwise_separable_conv2d, (x, dw, pw, b, *args))
    torch.library.opcheck(OPS.depthwise_separable_conv2d, (x, dw, pw, None, *args))
    y = OPS.depthwise_separable_conv2d(x.detach(), dw.detach(), pw.detach(), None, *args)
    g = torch.randn_like(y)
    for mask in ([True] * 4, [False, True, False, True], [True, False, False, False]):
        torch.library.opcheck(OPS.depthwise_separable_conv2d_backward,
                              (g, x.detach(), dw.detach(), pw.detach(), *args, mask))


class MobileBlock(nn.Module):
    def __init__(self, c, m):
        super().__init__()
        self.dw = DepthwiseConv2d(c, c * m, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c * m)
        self.pw = nn.Conv2d(c * m, 8, 1)

    def forward(self, x):
        return self.pw(torch.relu(self.bn(self.dw(x))))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_compile_fullgraph_mobilenet_block(channels_last):
    torch.manual_seed(0)
    eager = MobileBlock(4, 2)
    compiled_mod = MobileBlock(4, 2)
    compiled_mod.load_state_dict(eager.state_dict())
    x = torch.randn(2, 4, 12, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(compiled_mod, fullgraph=True)  # inductor: our ops stay extern kernels
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = eager(xe), compiled(xc)
    g = torch.randn_like(ye)
    ye.backward(g)
    yc.backward(g)
    # inductor fuses BN and ReLU in its own order: equal up to float32 rounding
    close(yc, ye, 1e-5, "compiled output")
    close(xc.grad, xe.grad, 1e-5, "compiled grad_input")
    close(compiled_mod.dw.weight.grad, eager.dw.weight.grad, 1e-5, "compiled grad_weight")


# ---------------------------------------------------------------- determinism, errors

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_grad_weight_bitwise_deterministic(channels_last):
    x, w, b, s, p, d = make((8, 16, 20, 20, 3, 1, 1, 1, 1), channels_last=channels_last)
    g = torch.randn(8, 16, 20, 20)
    threads = torch.get_num_threads()
    runs = [with_threads(n, lambda: run_fused(x, w, b, s, p, d, g)[2:]) for n in (threads, threads, 1)]
    for other in runs[1:]:
        assert torch.equal(runs[0][0], other[0]) and torch.equal(runs[0][1], other[1])


def test_errors():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="multiple of in_channels"):
        DepthwiseConv2d(4, 6, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        depthwise_conv2d(x, torch.randn(6, 1, 3, 3))
    with pytest.raises(ValueError, match=r"shape \(C\*M, 1, kH, kW\)"):
        depthwise_conv2d(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="4-D input"):
        depthwise_conv2d(torch.randn(4, 8, 8), w)
    with pytest.raises(TypeError, match="dtype"):
        depthwise_conv2d(x.double(), w)
    with pytest.raises(TypeError, match="float32, float64"):
        depthwise_conv2d(x.to(torch.int32), w.to(torch.int32))
    with pytest.raises(ValueError, match="bias must have shape"):
        depthwise_conv2d(x, w, torch.randn(5))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        depthwise_conv2d(torch.randn(1, 4, 2, 2), w)
    with pytest.raises(ValueError, match="stride"):
        depthwise_conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding"):
        depthwise_conv2d(x, w, padding=(1, -1, 0, 0))
    with pytest.raises(ValueError, match="strided"):
        depthwise_conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be"):
        DepthwiseSeparableConv2d(4, 4, 3, padding="full")
    y = depthwise_conv2d(x, w, padding=1)
    with pytest.raises(ValueError, match="grad_out must have shape"):
        OPS.depthwise_conv2d_backward(y[:, :2], x, w, [1, 1], [1, 1, 1, 1], [1, 1], [True, True, False])
    with pytest.raises(RuntimeError, match="sparse"):
        OPS.depthwise_conv2d(x.to_sparse(), w, None, [1, 1], [0, 0, 0, 0], [1, 1])


@pytest.mark.parametrize("view", ["sliced", "permuted"])
def test_non_contiguous_input(view):
    torch.manual_seed(0)
    base = torch.randn(2, 6, 10, 18)
    x = base[:, :, :, ::2] if view == "sliced" else base.permute(0, 1, 3, 2)[:, :, :9]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 1, 3, 3)
    close(depthwise_conv2d(x, w, None, 2, 1), F.conv2d(x, w, None, 2, 1, 1, 6), 2e-5, "non-contiguous input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_avx512_unit_gives_the_avx2_bits(channels_last, dtype):
    # The AVX-512 unit walks channels_last rows 16 channels at a time instead of 8; each
    # channel's sum is the same sequence of operations, so every output bit must match.
    if fusedopt.build_info()["simd_available"] != "avx512":
        pytest.skip("this CPU or build has no avx512 kernels")
    torch.manual_seed(5)
    # 48 channels: row blocks at both widths; 24: pixel groups; 960 on 7x7: MobileNet's tail.
    for c, h, w, s in [(48, 9, 10, 1), (32, 12, 13, 2), (24, 7, 8, 1), (960, 7, 7, 1)]:
        x = torch.randn(2, c, h, w).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        wt, b = torch.randn(c, 1, 3, 3).to(dtype), torch.randn(c).to(dtype)
        outs = {}
        for level in ("avx512", "avx2"):
            previous = fusedopt._C._set_cpu_simd(level)
            try:
                y = torch.ops.fusedopt.depthwise_conv2d(x, wt, b, [s, s], [1, 1, 1, 1], [1, 1])
                g = torch.randn(y.shape, generator=torch.Generator().manual_seed(c)).to(dtype)
                g = g.contiguous(memory_format=torch.channels_last) if channels_last else g
                grads = torch.ops.fusedopt.depthwise_conv2d_backward(g, x, wt, [s, s], [1, 1, 1, 1], [1, 1],
                                                                     [True, True, True])
                outs[level] = (y, *grads)
            finally:
                fusedopt._C._set_cpu_simd(previous)
        for name, a, b2 in zip(("output", "grad_input", "grad_weight", "grad_bias"), outs["avx512"], outs["avx2"]):
            assert torch.equal(a, b2), (c, h, w, s, name)
