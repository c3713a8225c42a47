"""fusedopt.nn batch norm against torch.nn and the float64 reference
(fusedopt/reference/batchnorm.py): outputs, grads, running stats, layouts, dtypes,
double backward, ops (opcheck), torch.compile, errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedopt
from fusedopt import reference
from fusedopt.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d, fold_bn_into_conv
from fusedopt.nn import functional as FF
from tests.conftest import with_threads

ops = torch.ops.fusedopt

TORCH_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
FUSED_BN = {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}
# Tolerances per dtype (atol, rtol) against torch and against the float64 reference.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (4e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}


def _layout(x, channels_last):
    if not channels_last:
        return x
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if x.dim() == 3:
        return x.transpose(1, 2).contiguous().transpose(1, 2)  # (N, C, L) with channels innermost
    return x.t().contiguous().t()  # (N, C) column-major: neither layout, copied by the op


def _close(a, b, dtype, what, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), atol=atol * scale, rtol=rtol * scale, msg=lambda m: f"{what}: {m}")


def _pair(kind, c, dtype, **kw):
    ref = TORCH_BN[kind](c, **kw)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.uniform_(0.5, 1.5)
        if ref.bias is not None:
            ref.bias.uniform_(-0.5, 0.5)
        if ref.running_mean is not None:
            ref.running_mean.uniform_(-0.3, 0.3)
            ref.running_var.uniform_(0.5, 1.5)
    if dtype == torch.float64:
        ref = ref.double()
    fused = FUSED_BN[kind](c, **kw).to(ref.weight.dtype if ref.weight is not None else torch.float32)
    if dtype == torch.float64:
        fused = fused.double()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


# (kind, shape): 1d (N, C) and (N, C, L), 2d, 3d; a plane size that is not a multiple of 8 and one
# longer than a statistics chunk.
SHAPES = [(1, (16, 5)), (1, (4, 6, 37)), (2, (4, 6, 9, 7)), (2, (2, 3, 48, 48)), (3, (2, 4, 3, 5, 6))]
CONFIGS = [
    dict(affine=True, track_running_stats=True, momentum=0.1),
    dict(affine=False, track_running_stats=True, momentum=None),
    dict(affine=True, track_running_stats=False, momentum=0.1),
]


def _run_parity(kind, shape, channels_last, dtype, cfg):
    torch.manual_seed(hash((kind, shape, channels_last, str(dtype))) % 1000)
    ref, fused = _pair(kind, shape[1], dtype, **cfg)
    for step in range(2):  # two steps: running stats and num_batches_tracked evolve
        x0 = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype)
        x0 = _layout(x0, channels_last)
        dy = _layout(torch.randn(shape, dtype=torch.float64).to(dtype), channels_last)
        xr = x0.clone().requires_grad_()
        xf = x0.clone().requires_grad_()
        rm0 = None if ref.running_mean is None else ref.running_mean.clone()
        rv0 = None if ref.running_var is None else ref.running_var.clone()
        yr, yf = ref(xr), fused(xf)
        assert yf.dtype == yr.dtype and yf.shape == yr.shape
        if channels_last and x0.dim() >= 4:
            assert yf.stride() == x0.stride(), "channels_last input must give a channels_last output"
        yr.backward(dy)
        yf.backward(dy)
        _close(yf, yr, dtype, f"out step {step}")
        _close(xf.grad, xr.grad, dtype, f"grad_input step {step}", scale=4)
        w = None if fused.weight is None else fused.weight.detach()
        b = None if fused.bias is None else fused.bias.detach()
        out64, rm64, rv64 = reference.batch_norm_forward(x0, w, b, rm0, rv0, True, fused.momentum or 1.0 / (step + 1),
                                                          fused.eps)
        _close(yf, out64, dtype, "out vs float64 reference")
        gi64, gw64, gb64, _ = reference.batch_norm_backward(dy, x0, w, True, fused.eps)
        _close(xf.grad, gi64, dtype, "grad_input vs float64 reference", scale=4)
        if fused.weight is not None:
            _close(fused.weight.grad, ref.weight.grad, dtype, "grad_weight", scale=50)
            _close(fused.bias.grad, ref.bias.grad, dtype, "grad_bias", scale=50)
            if step == 0:  # grads accumulate over steps; the first one is the reference's alone
                _close(fused.weight.grad, gw64, dtype, "grad_weight vs reference", scale=50)
                _close(fused.bias.grad, gb64, dtype, "grad_bias vs reference", scale=50)
        if ref.running_mean is not None:
            _close(fused.running_mean, ref.running_mean, dtype, "running_mean")
            _close(fused.running_var, ref.running_var, dtype, "running_var")
            _close(fused.running_mean, rm64, dtype, "running_mean vs reference")
            _close(fused.running_var, rv64, dtype, "running_var vs reference")
            assert int(fused.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
    ref.eval()
    fused.eval()
    x0 = _layout((torch.randn(shape, dtype=torch.float64) + 0.2).to(dtype), channels_last).requires_grad_()
    x1 = x0.detach().clone().requires_grad_()
    yr, yf = ref(x0), fused(x1)
    _close(yf, yr, dtype, "eval out")
    dy = torch.randn(shape, dtype=torch.float64).to(dtype)
    yr.backward(dy)
    yf.backward(dy)
    _close(x1.grad, x0.grad, dtype, "eval grad_input", scale=4)
    if ref.running_mean is not None:
        w = None if fused.weight is None else fused.weight.detach()
        gi64 = reference.batch_norm_backward(dy, x0.detach(), w, False, fused.eps, fused.running_mean, fused.running_var)[0]
        _close(x1.grad, gi64, dtype, "eval grad_input vs reference", scale=4)


@pytest.mark.parametrize("kind,shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["affine", "noaffine-cma", "notrack"])
def test_parity_float32(simd_all, kind, shape, channels_last, cfg):
    _run_parity(kind, shape, channels_last, torch.float32, cfg)


@pytest.mark.parametrize("kind,shape", [SHAPES[1], SHAPES[2], SHAPES[4]])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_parity_dtypes(simd_all, kind, shape, channels_last, dtype):
    _run_parity(kind, shape, channels_last, dtype, CONFIGS[0])


@pytest.mark.parametrize("channels", [300, 125, 61])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_parity_many_channels(simd_all, channels, channels_last, dtype):
    # Rows of 300, 125 or 61 channels, at 8 lanes (AVX2) and at 16 (AVX-512): the row
    # reductions take 16-, 8-, 4-, 2- and 1-vector column groups, the backward sums of
    # float and double rows wider than 16 vectors walk row by row; all end in a scalar
    # tail.
    _run_parity(2, (3, channels, 5, 7), channels_last, dtype, CONFIGS[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_backward_op_wide_rows_with_relu(simd_all, dtype):
    # channels_last rows of 125 channels through the backward op with the relu mask,
    # against the float64 reference.
    torch.manual_seed(13)
    c, eps = 125, 1e-5
    x = (torch.randn(4, c, 6, 5) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(4, c, 6, 5).to(dtype).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    if dtype == torch.float64:
        w, b = w.double(), b.double()
    out, mean, var = ops.batch_norm_train(x, w, b, None, True, eps)
    got = ops.batch_norm_backward(dy, x, w, mean, var, out, True, True, eps, [True, True, True, True])
    want = reference.batch_norm_backward(dy, x, w, True, eps, mean, var, out)
    for i, what in enumerate(("grad_input", "grad_weight", "grad_bias", "grad_residual")):
        _close(got[i], want[i], dtype, what, scale=4 if i < 3 else 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parity_planes_shorter_than_a_vector(simd_all, dtype):
    _run_parity(1, (9, 4, 3), False, dtype, CONFIGS[0])


def test_half_module_weights_in_input_dtype():
    # model.to(bfloat16): weights and buffers in bf16 too.
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6).bfloat16()
    fused = BatchNorm2d(6).bfloat16()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 5, 5).bfloat16()
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xr).float().square().sum().backward()
    fused(xf).float().square().sum().backward()
    _close(fused.running_var, ref.running_var, torch.bfloat16, "running_var")
    _close(xf.grad, xr.grad, torch.bfloat16, "grad_input", scale=4)
    assert fused.weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [4, 300])  # 300: channels_last rows of 16-vector groups and a tail
def test_large_mean_is_stable(simd_all, channels_last, channels):
    torch.manual_seed(1)
    x = _layout(1e4 + torch.randn(8, channels, 33, 31, dtype=torch.float64), channels_last)
    xf = x.float()
    out, mean, var = ops.batch_norm_train(xf, None, None, None, False, 1e-5)
    x64 = xf.double()
    ref_mean = x64.mean((0, 2, 3))
    ref_var = x64.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, atol=1e-3, rtol=0)  # float32 ulp at 1e4 is 1e-3
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=0)
    out64 = reference.batch_norm_forward(xf, training=True)[0]
    torch.testing.assert_close(out.double(), out64, atol=2e-3, rtol=0)
    dy = torch.randn_like(xf)
    gi = ops.batch_norm_backward(dy, xf, None, mean, var, None, False, True, 1e-5, [True, False, False, False])[0]
    torch.testing.assert_close(gi.double(), reference.batch_norm_backward(dy, xf, None, True)[0], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(6, 3, 50, 45), (300, 3, 3, 4), (24, 64, 10, 10), (24, 300, 10, 10)],
                         ids=["large-planes", "small-planes", "many-channels", "wide-rows"])
def test_stats_with_shifting_means(simd_all, channels_last, shape):
    # Samples with very different means and little spread inside each: later chunks are
    # shifted by the mean of earlier ones, so the between-chunk part must merge exactly.
    # Small planes: several samples share a chunk. Many channels: channels_last chunks of
    # 256 rows, then longer shifted ones; wide rows: 16-vector column groups.
    torch.manual_seed(13)
    offsets = torch.tensor([0.0, 300.0, -50.0, 1e3, 7.0, 2e3]).repeat(shape[0] // 6).reshape(-1, 1, 1, 1)
    x = _layout((offsets + 1e-2 * torch.randn(shape)).float(), channels_last)
    _, mean, var = ops.batch_norm_train(x, None, None, None, False, 1e-5)
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(var.double(), x64.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)
    m2, v2 = ops.batch_norm_stats(x)
    torch.testing.assert_close(v2.double(), x64.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", [(16384, 2, 1, 2), (2720, 2, 3, 4)])
def test_stats_when_a_block_starts_far_from_its_mean(simd_all, shape):
    # NCHW planes shorter than a statistics chunk are summed many images at a time around
    # the mean of the first image's plane. Here the first image of every block of images
    # sits 1e4 away from the rest: without the far-shift guard (a second walk around the
    # group's own mean) the float sums cancel and the variance is off by about 1e-4.
    torch.manual_seed(14)
    offsets = torch.zeros(shape[0])
    offsets[:: shape[0] // 16] = 1e4  # 16 blocks of images
    x = (offsets.reshape(-1, 1, 1, 1) + torch.randn(shape)).float()
    _, mean, var = ops.batch_norm_train(x, None, None, None, False, 1e-5)
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(var.double(), x64.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)


def _f64(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)])
def test_gradcheck_and_gradgradcheck(device, channels_last, training, relu, residual):
    torch.manual_seed(2)
    x = _layout(torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device), channels_last).requires_grad_()
    w = (torch.rand(4, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    z = torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    rm = torch.randn(4, dtype=torch.float64, device=device)
    rv = torch.rand(4, dtype=torch.float64, device=device) + 0.5

    def fn(x, w, b, z):
        r = z if residual else None
        if training:
            return FF.batch_norm_relu(x, None, None, w, b, r, training=True) if relu else FF.batch_norm(
                x, None, None, w, b, training=True)
        return FF.batch_norm_relu(x, rm, rv, w, b, r) if relu else FF.batch_norm(x, rm, rv, w, b)

    # Keep relu kinks away from the finite-difference step.
    with torch.no_grad():
        y = fn(x, w, b, z)
        if relu:
            pre = y  # only the sign pattern matters; shift the residual so |pre-relu| is not tiny
            z.add_(torch.where(pre.abs() < 0.05, torch.full_like(z, 0.2), torch.zeros_like(z)))
    assert torch.autograd.gradcheck(fn, (x, w, b, z))
    assert torch.autograd.gradgradcheck(fn, (x, w, b, z))


def test_gradcheck_no_affine_3d():
    torch.manual_seed(3)
    x = _f64(2, 3, 2, 3, 2)
    assert torch.autograd.gradcheck(lambda x: FF.batch_norm(x, None, None, training=True), (x,))
    assert torch.autograd.gradgradcheck(lambda x: FF.batch_norm(x, None, None, training=True), (x,))


# Each of weight, bias, residual: absent, given without grad, or given with grad. The
# autograd kernel (csrc/batchnorm/batchnorm_autograd.cpp) maps the graph's edges, which
# skip absent tensors, back to argument order; a slip would hand one input another's grad.
_GIVEN = [None, False, True]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("w_kind,b_kind,z_kind",
                         [(w, b, z) for w in _GIVEN for b in _GIVEN for z in _GIVEN])
def test_grads_reach_exactly_the_inputs_that_ask(training, x_grad, w_kind, b_kind, z_kind):
    torch.manual_seed(5)
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64).requires_grad_(x_grad)

    def make(kind, *shape):
        return None if kind is None else torch.randn(*shape, dtype=torch.float64).requires_grad_(kind)

    w, b, z = make(w_kind, 4), make(b_kind, 4), make(z_kind, 3, 4, 2, 3)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    leaves = [t for t in (x, w, b, z) if t is not None and t.requires_grad]
    if not leaves:
        pytest.skip("nothing asks for a grad")
    stats = (None, None) if training else (rm, rv)
    if z is None:
        y = FF.batch_norm(x, *stats, w, b, training=training)
    else:
        y = FF.batch_norm_relu(x, *stats, w, b, z, training=training)
    out64, _, _ = reference.batch_norm_forward(x, w, b, rm, rv, training=training, residual=z, relu=z is not None)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(out64, leaves, dy)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_norm_relu_matches_torch(simd_all, dtype):
    torch.manual_seed(4)
    for channels_last in (False, True):
        for with_res in (False, True):
            # 59 channels: channels_last rows take paired vectors, a vector and a scalar
            # tail, at 8 lanes and at 16.
            ref, _ = _pair(2, 59, torch.float32)
            fused = BatchNormReLU2d(59)
            fused.load_state_dict(ref.state_dict())
            x = _layout(torch.randn(4, 59, 7, 5).to(dtype), channels_last)
            z = torch.randn(4, 59, 7, 5).to(dtype) if with_res else None
            # torch on the float32 copy: its bf16 path rounds bn(x) before adding z, which
            # moves a few values across the relu's zero.
            xr, xf = x.float().clone().requires_grad_(), x.clone().requires_grad_()
            zr = z.float().clone().requires_grad_() if with_res else None
            zf = z.clone().requires_grad_() if with_res else None
            yr = ref(xr)
            yr = torch.relu(yr + zr) if with_res else torch.relu(yr)
            yf = fused(xf, zf)
            dy = torch.randn_like(yf)
            yr.backward(dy.float())
            yf.backward(dy)
            _close(yf, yr, dtype, "out")
            _close(xf.grad, xr.grad, dtype, "grad_input", scale=4)
            _close(fused.weight.grad, ref.weight.grad, dtype, "grad_weight", scale=20)
            _close(fused.bias.grad, ref.bias.grad, dtype, "grad_bias", scale=20)
            if with_res:
                _close(zf.grad, zr.grad, dtype, "grad_residual")
            _close(fused.running_var, ref.running_var, dtype, "running_var")
            out64 = reference.batch_norm_forward(x, ref.weight.detach(), ref.bias.detach(), training=True, residual=z,
                                                 relu=True)[0]
            _close(yf, out64, dtype, "out vs reference")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nan_propagates_like_torch(simd_all, channels_last, dtype):
    # One NaN makes its channel's statistics NaN: that channel's outputs and grads are all
    # NaN in torch, the other channels untouched. Planes of 40 reach the paired vector loops.
    torch.manual_seed(9)
    ref, fused = _pair(2, 5, dtype)
    x = torch.randn(3, 5, 8, 5).to(dtype)
    x[1, 2, 3, 4] = float("nan")
    x = _layout(x, channels_last)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fused(xf)
    dy = torch.randn_like(yr)
    yr.backward(dy)
    yf.backward(dy)
    for a, b, what in ((yf, yr, "out"), (xf.grad, xr.grad, "grad_input")):
        assert torch.equal(a.isnan(), b.isnan()), what
        assert a[:, 2].isnan().all(), what
        keep = ~b.isnan()
        _close(a[keep], b[keep], dtype, what, scale=4)
    assert fused.running_mean[2].isnan() and not fused.running_mean[[0, 1, 3, 4]].isnan().any()


def test_functional_matches_torch():
    torch.manual_seed(5)
    x = torch.randn(8, 3, 6)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm_r, rv_r = torch.randn(3), torch.rand(3) + 0.5
    rm_f, rv_f = rm_r.clone(), rv_r.clone()
    yr = F.batch_norm(x, rm_r, rv_r, w, b, training=True, momentum=0.3, eps=1e-3)
    yf = FF.batch_norm(x, rm_f, rv_f, w, b, training=True, momentum=0.3, eps=1e-3)
    _close(yf, yr, torch.float32, "out")
    _close(rm_f, rm_r, torch.float32, "running_mean")
    _close(rv_f, rv_r, torch.float32, "running_var")
    _close(FF.batch_norm(x, rm_f, rv_f, w, b), F.batch_norm(x, rm_r, rv_r, w, b), torch.float32, "eval out")


# The op reads float32 and float64 statistics as they are and casts the rest.
@pytest.mark.parametrize("running_dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mean_dtype,var_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                                  (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float64)])
def test_update_stats_op_reads_every_statistics_dtype(running_dtype, mean_dtype, var_dtype):
    torch.manual_seed(6)
    rm, rv = torch.randn(37, dtype=running_dtype), (torch.rand(37) + 0.5).to(running_dtype)
    mean, var = torch.randn(37, dtype=mean_dtype), torch.rand(37).to(var_dtype)
    rm2, rv2 = rm.clone(), rv.clone()
    ops.batch_norm_update_stats_(rm2, rv2, mean, var, 0.25, None, 7)
    want_m = 0.75 * rm.double() + 0.25 * mean.double()
    want_v = 0.75 * rv.double() + 0.25 * (var.double() * 7 / 6)
    torch.testing.assert_close(rm2, want_m.to(running_dtype))
    torch.testing.assert_close(rv2, want_v.to(running_dtype))


def test_update_stats_op_matches_reference():
    torch.manual_seed(6)
    rm, rv = torch.randn(5), torch.rand(5) + 0.5
    mean, var = torch.randn(5), torch.rand(5)
    rm2, rv2 = rm.clone(), rv.clone()
    ops.batch_norm_update_stats_(rm2, rv2, mean, var, 0.25, None, 7)
    torch.testing.assert_close(rm2, 0.75 * rm + 0.25 * mean)
    torch.testing.assert_close(rv2, 0.75 * rv + 0.25 * var * 7 / 6)
    # momentum=None: the cumulative average, momentum 1 / num_batches_tracked
    rm3, rv3 = rm.clone(), rv.clone()
    ops.batch_norm_update_stats_(rm3, rv3, mean, var, None, torch.tensor(4), 7)
    torch.testing.assert_close(rm3, 0.75 * rm + 0.25 * mean)
    torch.testing.assert_close(rv3, 0.75 * rv + 0.25 * var * 7 / 6)
    with pytest.raises(ValueError, match="momentum=None.*num_batches_tracked"):
        ops.batch_norm_update_stats_(rm3, rv3, mean, var, None, None, 7)


def test_zero_size_batch_matches_torch():
    ref, fused = _pair(2, 3, torch.float32)
    x = torch.randn(0, 3, 4, 4)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fused(xf)
    assert yf.shape == yr.shape
    yr.sum().backward()
    yf.sum().backward()
    torch.testing.assert_close(fused.weight.grad, ref.weight.grad)
    torch.testing.assert_close(fused.running_mean, ref.running_mean)
    torch.testing.assert_close(fused.running_var, ref.running_var)
    assert int(fused.num_batches_tracked) == int(ref.num_batches_tracked)


def test_ops_on_an_empty_batch_give_zero_sums():
    # The ops allocate their per-channel sums uninitialised and write them in the
    # kernels; an empty batch runs no kernel, so the op must zero them itself. Freed
    # NaN-filled blocks first make stale memory likely to come back.
    c = 67
    for _ in range(8):
        torch.full((c,), float("nan"), dtype=torch.float64)  # freed at once
    x = torch.randn(0, c, 3, 3)
    m, v, w = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c)
    gi, gw, gb, _ = ops.batch_norm_backward(x, x, w, m, v, None, False, True, 1e-5, [True, True, True, False])
    assert gi.shape == x.shape
    assert torch.equal(gw, torch.zeros(c)) and torch.equal(gb, torch.zeros(c))
    sdy, sdx = ops.batch_norm_backward_reduce(x, x, m, None)
    assert torch.equal(sdy, torch.zeros(c, dtype=torch.float64)) and torch.equal(sdx, torch.zeros(c, dtype=torch.float64))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_backward_op_small_planes_many_images(simd_all, threads, dtype, training):
    # Small NCHW planes, 37 images and 203 channels: the CPU sums are taken over 16
    # uneven blocks of images, threads split the blocks (and, with 3 threads, none
    # divides them evenly). Each output_mask, with and without relu.
    torch.manual_seed(11)
    c, eps = 203, 1e-5
    x = (torch.randn(37, c, 5, 7) * 2 + 0.5).to(dtype)
    dy = torch.randn(37, c, 5, 7).to(dtype)
    w, b = torch.rand(c) + 0.5, torch.randn(c)

    def run():
        for relu in (False, True):
            out, mean, var = ops.batch_norm_train(x, w, b, None, relu, eps)
            if not training:
                mean, var = torch.randn(c) * 0.3, torch.rand(c) + 0.5
            for mask in ([True, True, True, relu], [False, True, True, False], [True, False, False, False]):
                got = ops.batch_norm_backward(dy, x, w, mean, var, out if relu else None, relu, training, eps, mask)
                want = reference.batch_norm_backward(dy, x, w, training, eps, mean, var, out if relu else None)
                for i, what in enumerate(("grad_input", "grad_weight", "grad_bias", "grad_residual")):
                    if mask[i]:
                        _close(got[i], want[i], dtype, f"{what} (relu={relu}, mask={mask})", scale=4 if i < 3 else 1)

    with_threads(threads, run)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planes_results_do_not_depend_on_thread_count(simd_all, dtype):
    # The NCHW reductions merge fixed blocks of images in block order, so statistics,
    # outputs and gradients are bitwise the same for any number of threads.
    torch.manual_seed(12)
    c = 19
    x = (torch.randn(40, c, 9, 9) * 3 + 2).to(dtype)
    dy = torch.randn(40, c, 9, 9).to(dtype)
    w, b = torch.rand(c) + 0.5, torch.randn(c)

    def run():
        y, mean, var = ops.batch_norm_train(x, w, b, None, True, 1e-5)
        grads = ops.batch_norm_backward(dy, x, w, mean, var, y, True, True, 1e-5, [True, True, True, False])
        return (y, mean, var) + tuple(grads[:3])

    one = with_threads(1, run)
    for threads in (2, 3):
        for got, want, what in zip(with_threads(threads, run), one, ("y", "mean", "var", "dx", "dw", "db")):
            assert torch.equal(got, want), f"{what} with {threads} threads differs from 1 thread"


def test_non_contiguous_input():
    torch.manual_seed(7)
    base = torch.randn(4, 6, 10, 12)
    x = base[:, ::2, :, ::3]  # neither NCHW- nor channels_last-contiguous
    ref, fused = _pair(2, 3, torch.float32)
    _close(fused(x), ref(x), torch.float32, "out")


def test_state_dict_round_trip_and_from_torch():
    torch.manual_seed(8)
    ref = nn.BatchNorm2d(5, momentum=None)
    ref(torch.randn(4, 5, 3, 3))
    fused = BatchNorm2d(5, momentum=None)
    fused.load_state_dict(ref.state_dict())
    assert list(fused.state_dict().keys()) == list(ref.state_dict().keys())
    back = nn.BatchNorm2d(5, momentum=None)
    back.load_state_dict(fused.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    ref.eval()
    conv = BatchNorm2d.from_torch(ref)
    assert type(conv) is BatchNorm2d and not conv.training
    assert conv.weight is ref.weight and conv.running_mean is ref.running_mean
    assert conv.momentum is None and conv.eps == ref.eps
    x = torch.randn(2, 5, 4, 4)
    _close(conv(x), ref(x), torch.float32, "from_torch eval out")
    nb = nn.BatchNorm1d(4, affine=False, track_running_stats=False, dtype=torch.float64)
    f = BatchNorm1d.from_torch(nb)
    assert f.weight is None and f.running_mean is None and f.training
    x = torch.randn(6, 4, dtype=torch.float64)
    _close(f(x), nb(x), torch.float64, "from_torch no affine")
    nobias = BatchNorm2d.from_torch(nn.BatchNorm2d(3, bias=False))
    assert nobias.bias is None and nobias.weight is not None
    nobias(torch.randn(2, 3, 2, 2)).sum().backward()
    assert nobias.weight.grad is not None


def test_fold_bn_into_conv():
    torch.manual_seed(9)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True)
    bn = BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    with pytest.raises(ValueError, match="training mode"):
        fold_bn_into_conv(conv, bn)
    bn.eval()
    folded = fold_bn_into_conv(conv, bn)
    x = torch.randn(2, 3, 8, 8)
    ref = bn(conv(x))
    torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-5)
    xd = x.double()
    ref64 = reference.batch_norm_forward(F.conv2d(xd, conv.weight.double(), conv.bias.double(), padding=1),
                                         bn.weight, bn.bias, bn.running_mean, bn.running_var, training=False)[0]
    torch.testing.assert_close(folded(x).double(), ref64, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="output channels"):
        fold_bn_into_conv(nn.Conv2d(3, 4, 1), bn)
    tbn = nn.BatchNorm2d(5, affine=False).eval()
    torch.testing.assert_close(fold_bn_into_conv(nn.Conv2d(3, 5, 1, bias=False), tbn)(x).shape, torch.Size([2, 5, 8, 8]))


def test_errors():
    bn = BatchNorm2d(4)
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(torch.randn(1, 4, 1, 1))
    with pytest.raises(ValueError, match="should contain 3 elements"):
        bn(torch.randn(2, 3, 2, 2))  # wrong number of channels
    with pytest.raises(TypeError, match="weight must be"):
        ops.batch_norm_train(torch.randn(2, 4, 3), torch.randn(4, dtype=torch.float64), None, None, False, 1e-5)
    with pytest.raises(TypeError, match="input must be float32"):
        ops.batch_norm_train(torch.randint(0, 3, (2, 4, 3)), None, None, None, False, 1e-5)
    with pytest.raises(ValueError, match="residual must have the input's shape"):
        ops.batch_norm_train(torch.randn(2, 4, 3), None, None, torch.randn(2, 4, 2), True, 1e-5)
    with pytest.raises(ValueError, match="relu=True needs the forward output"):
        x = torch.randn(2, 4, 3)
        ops.batch_norm_backward(x, x, None, torch.zeros(4), torch.ones(4), None, True, True, 1e-5, [True] * 4)
    with pytest.raises(ValueError, match="running_mean should contain 4 elements"):
        FF.batch_norm(torch.randn(2, 4, 3), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError, match="running_var should contain 4 elements"):
        FF.batch_norm(torch.randn(2, 4, 3), torch.zeros(4), torch.ones(5), training=False)
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        FF.batch_norm(torch.randn(2, 4, 3), None, None, training=False)
    with pytest.raises(ValueError, match="residual must have the input's shape"):
        FF.batch_norm_relu(torch.randn(2, 4, 3), None, None, residual=torch.randn(2, 4), training=True)
    with pytest.raises(ValueError, match="eps must be non-negative"):
        ops.batch_norm_eval(torch.randn(2, 4), torch.zeros(4), torch.ones(4), None, None, None, False, -1.0)


@pytest.mark.parametrize("momentum", [0.3, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_train_op_updates_running_stats_as_the_update_op(channels_last, momentum):
    """batch_norm_train with the running buffers counts the batch and moves the buffers
    exactly as batch_norm_train then batch_norm_update_stats_ (the SyncBatchNorm path)."""
    torch.manual_seed(14)
    x = _layout(torch.randn(5, 6, 7, 3) * 3 + 1, channels_last)
    rm, rv, n = torch.randn(6), torch.rand(6) + 0.5, torch.tensor(4)
    rm2, rv2, n2 = rm.clone(), rv.clone(), n.clone()
    rm0, rv0 = rm.clone(), rv.clone()
    out, mean, var = ops.batch_norm_train(x, None, None, None, False, 1e-5, rm, rv, momentum, n)
    out2, mean2, var2 = ops.batch_norm_train(x, None, None, None, False, 1e-5)
    n2.add_(1)
    ops.batch_norm_update_stats_(rm2, rv2, mean2, var2, momentum, n2, 5 * 7 * 3)
    assert int(n) == 5
    for got, want in ((out, out2), (mean, mean2), (var, var2), (rm, rm2), (rv, rv2)):
        assert torch.equal(got, want)
    assert not torch.equal(rm, rm0) and not torch.equal(rv, rv0)  # the buffers did move


def test_train_op_rejects_bad_running_buffers_before_writing():
    x = torch.randn(2, 4, 3)
    rm, rv, n = torch.randn(4), torch.rand(4) + 0.5, torch.tensor(7)
    before = [t.clone() for t in (rm, rv, n)]
    cases = [
        ((torch.randn(3), torch.rand(3), 0.1, n), ValueError, "running_mean should contain 4 elements"),
        ((rm, None, 0.1, n), ValueError, "running_mean and running_var must both be given"),
        ((rm, rv.double(), 0.1, n), TypeError, "running_mean and running_var must have one dtype"),
        ((rm, rv, None, None), ValueError, "momentum=None .* needs num_batches_tracked"),
        ((rm, rv, 0.1, torch.tensor(7.0)), ValueError, "num_batches_tracked must be a one-element int64"),
    ]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg):
            ops.batch_norm_train(x, None, None, None, False, 1e-5, *args)
        for t, b in zip((rm, rv, n), before):
            assert torch.equal(t, b)


def _opcheck_cases():
    torch.manual_seed(10)
    x = torch.randn(3, 4, 5, 2)
    xcl = x.contiguous(memory_format=torch.channels_last)
    w, b, z = torch.rand(4) + 0.5, torch.randn(4), torch.randn(3, 4, 5, 2)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    dy = torch.randn_like(x)
    out = ops.batch_norm_train(x, w, b, z, True, 1e-5)[0]
    return [
        (ops.batch_norm_train, (x.requires_grad_(), w.requires_grad_(), b, z, True, 1e-5)),
        (ops.batch_norm_train, (xcl, None, None, None, False, 1e-3)),
        (ops.batch_norm_train, (x, w, b, None, False, 1e-5, torch.randn(4), torch.rand(4) + 0.5, 0.1, None)),
        (ops.batch_norm_train, (xcl, w, None, None, False, 1e-5, torch.randn(4), torch.rand(4) + 0.5, None,
                                torch.tensor(2))),
        (ops.batch_norm_eval, (x, mean, var, w, b, None, False, 1e-5)),
        (ops.batch_norm_eval, (xcl, mean, var, w, b, z, True, 1e-5)),
        (ops.batch_norm_update_stats_, (torch.randn(4), torch.rand(4), mean, var, 0.1, None, 30)),
        (ops.batch_norm_update_stats_, (torch.randn(4), torch.rand(4), mean, var, None, torch.tensor(3), 30)),
        (ops.batch_norm_backward, (dy, x.detach(), w.detach(), mean, var, out, True, True, 1e-5, [True, True, True, True])),
        (ops.batch_norm_backward, (dy, xcl, None, mean, var, None, False, False, 1e-5, [True, False, True, False])),
        (ops.batch_norm_stats, (xcl,)),
        (ops.batch_norm_backward_reduce, (dy, x.detach(), mean, out)),
        (ops.batch_norm_backward_elemt, (dy, x.detach(), w.detach(), mean, var, None, mean.double(), var.double(), 30.0, 1e-5)),
    ]


@pytest.mark.parametrize("i", range(13))
def test_opcheck(i):
    op, args = _opcheck_cases()[i]
    torch.library.opcheck(op, args)


def test_compile_conv_bn_relu_matches_eager():
    torch.manual_seed(11)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = BatchNormReLU2d(8)
            self.bn2 = BatchNorm2d(8)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return self.bn2(y)

    eager = Net()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net, fullgraph=True)
    x = torch.randn(4, 3, 8, 8)
    ye = eager(x)
    yc = compiled(x)
    ye.square().sum().backward()
    yc.square().sum().backward()
    torch.testing.assert_close(yc, ye, atol=1e-5, rtol=1e-5)
    for (n, pe), pc in zip(eager.named_parameters(), compiled_net.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, atol=1e-4, rtol=1e-4, msg=n)
    torch.testing.assert_close(compiled_net.bn.running_var, eager.bn.running_var)
    assert int(compiled_net.bn2.num_batches_tracked) == 1


# The second shape gives the CUDA kernels planes longer than a block (256 threads), two
# plane slices per channel with the cut inside a plane, many row slices per channel
# tile, and a partial 32-channel tile.
@pytest.mark.parametrize("shape", [(6, 5, 7, 9), (5, 37, 31, 29)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_device_parity_with_torch(device, channels_last, dtype, shape):
    """The module on `device` (the CUDA kernels where a GPU is present) against torch on
    the same device: train step (outputs, grads, running stats) then eval."""
    torch.manual_seed(12)
    c = shape[1]
    ref, fused = _pair(2, c, dtype)
    ref, fused = ref.to(device), fused.to(device)
    relu_ref = nn.ReLU()
    fused_relu = BatchNormReLU2d(c).to(device=device, dtype=fused.weight.dtype)
    fused_relu.load_state_dict(ref.state_dict())
    x = _layout((torch.randn(shape, dtype=torch.float64) * 2 + 1).to(dtype), channels_last).to(device)
    z = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    dy = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    xr, xf, xg = (x.clone().requires_grad_() for _ in range(3))
    yr, yf = ref(xr), fused(xf)
    yr.backward(dy)
    yf.backward(dy)
    _close(yf.cpu(), yr.cpu(), dtype, "out")
    _close(xf.grad.cpu(), xr.grad.cpu(), dtype, "grad_input", scale=4)
    _close(fused.weight.grad.cpu(), ref.weight.grad.cpu(), dtype, "grad_weight", scale=50)
    _close(fused.bias.grad.cpu(), ref.bias.grad.cpu(), dtype, "grad_bias", scale=50)
    _close(fused.running_var.cpu(), ref.running_var.cpu(), dtype, "running_var")
    yg = fused_relu(xg, z)
    _close(yg.cpu(), relu_ref(yr.detach() + z).cpu(), dtype, "bn+residual+relu out")
    ref.eval()
    fused.eval()
    _close(fused(x).cpu(), ref(x).cpu(), dtype, "eval out")
