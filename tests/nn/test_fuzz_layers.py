"""hypothesis fuzzes the layer ops against their float64 references: random shapes,
layouts, dtypes and options, forward and backward."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusedopt import reference
from fusedopt.nn import functional as F

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-10)}


def _layout(t, channels_last):
    if channels_last and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if channels_last and t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


@st.composite
def _bn_case(draw):
    spatial = draw(st.lists(st.integers(1, 6), min_size=0, max_size=3))
    n = draw(st.integers(1 if spatial else 2, 5))
    return dict(shape=(n, draw(st.integers(1, 6)), *spatial), channels_last=draw(st.booleans()),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])), training=draw(st.booleans()),
                affine=draw(st.booleans()), relu=draw(st.booleans()), residual=draw(st.booleans()),
                momentum=draw(st.sampled_from([0.1, 0.5])), eps=draw(st.sampled_from([1e-5, 1e-3])),
                seed=draw(st.integers(0, 2**16)), offset=draw(st.sampled_from([0.0, 100.0])))


def _close_or_as_good_as_torch(actual, by_torch, ref, dt, what):
    """Close to the float64 reference; or, where the input dtype itself cannot resolve the
    answer (a large mean over a tiny spread, in float32), at most twice torch's own error."""
    tol = TOL[dt]
    try:
        torch.testing.assert_close(actual.double(), ref, **tol)
        return
    except AssertionError:
        err = (actual.double() - ref).abs().max().item()
        err_torch = (by_torch.double() - ref).abs().max().item()
        assert err <= 2 * err_torch + tol["atol"], f"{what}: error {err:.3g}, torch's {err_torch:.3g}"


def _torch_batch_norm(x, rm, rv, w, b, z, relu, kw):
    """torch's own float32 answer on the same inputs (torch.nn.functional)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, w, b, z)]
    xt, wt, bt, zt = leaves
    out = torch.nn.functional.batch_norm(xt, rm.clone(), rv.clone(), wt, bt, **kw)
    out = out + zt if zt is not None else out
    return (torch.relu(out) if relu else out), leaves


@SETTINGS
@given(_bn_case())
def test_batch_norm_matches_float64_reference_on_random_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    shape, dt, c = case["shape"], case["dtype"], case["shape"][1]
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = _layout((rnd(*shape) * 2 + case["offset"]).to(dt), case["channels_last"]).requires_grad_()
    w = (rnd(c) + 1).to(dt).requires_grad_() if case["affine"] else None
    b = rnd(c).to(dt).requires_grad_() if case["affine"] else None
    z = _layout(rnd(*shape).to(dt), case["channels_last"]).requires_grad_() if case["residual"] else None
    rm, rv = rnd(c).to(dt), (rnd(c).abs() + 0.5).to(dt)
    rm0, rv0 = rm.clone(), rv.clone()
    if case["training"] and x.numel() // c == 1:  # torch's error for one value per channel
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            F.batch_norm(x, rm, rv, w, b, training=True)
        return
    fn = F.batch_norm_relu if case["relu"] or z is not None else None
    kw = dict(training=case["training"], momentum=case["momentum"], eps=case["eps"])
    if fn is None:
        out = F.batch_norm(x, rm, rv, w, b, **kw)
    else:
        out = fn(x, rm, rv, w, b, residual=z, **kw) if case["relu"] else None
        if not case["relu"]:  # residual without relu: not a fused form; add it outside
            out = F.batch_norm(x, rm, rv, w, b, **kw) + z
    ref_out, ref_rm, ref_rv = reference.batch_norm_forward(x.detach(), w, b, rm0, rv0, residual=z, relu=case["relu"],
                                                           **kw)
    assert out.shape == x.shape and out.dtype == dt
    if case["channels_last"] and x.dim() >= 4 and c > 1:
        assert out.stride() == x.stride()
    by_torch, torch_leaves = _torch_batch_norm(x, rm0, rv0, w, b, z, case["relu"], kw)
    _close_or_as_good_as_torch(out, by_torch, ref_out, dt, "out")
    if case["training"]:
        torch.testing.assert_close(rm.double(), ref_rm, **TOL[dt])
        torch.testing.assert_close(rv.double(), ref_rv, **TOL[dt])
    else:
        assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
    dy = rnd(*shape).to(dt)
    out.backward(dy)
    gx, gw, gb, gz = reference.batch_norm_backward(dy, x.detach(), w, case["training"], case["eps"], rm0, rv0,
                                                   out=ref_out if case["relu"] else None)
    by_torch.backward(dy)
    for name, ours, theirs, ref in zip(("x", "weight", "bias", "residual"), (x, w, b, z), torch_leaves,
                                       (gx, gw, gb, gz)):
        if ours is not None:
            _close_or_as_good_as_torch(ours.grad, theirs.grad, ref, dt, f"grad of {name}")


@st.composite
def _dw_case(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad = [draw(st.integers(0, 3)) for _ in range(4)]
    # input at least as large as the dilated kernel minus the padding
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pad[0] - pad[1]), 12))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pad[2] - pad[3]), 12))
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 6)), m=draw(st.integers(1, 3)), h=h, w=w,
                kernel=(kh, kw), stride=(sh, sw), dilation=(dh, dw), padding=pad, bias=draw(st.booleans()),
                channels_last=draw(st.booleans()), dtype=draw(st.sampled_from([torch.float32, torch.float64])),
                seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(_dw_case())
def test_depthwise_conv_matches_float64_reference_on_random_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    dt = case["dtype"]
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dt)  # noqa: E731
    x = _layout(rnd(case["n"], case["c"], case["h"], case["w"]), case["channels_last"]).requires_grad_()
    wt = rnd(case["c"] * case["m"], 1, *case["kernel"]).requires_grad_()
    b = rnd(case["c"] * case["m"]).requires_grad_() if case["bias"] else None
    geo = dict(stride=case["stride"], padding=tuple(case["padding"]), dilation=case["dilation"])
    out = F.depthwise_conv2d(x, wt, b, **geo)
    ref = reference.depthwise.depthwise_conv2d(x.detach(), wt.detach(), None if b is None else b.detach(), **geo)
    assert out.shape == ref.shape and out.dtype == dt
    unambiguous = case["c"] > 1 and case["h"] * case["w"] > 1 and out.shape[2] * out.shape[3] > 1
    if case["channels_last"] and unambiguous:  # else channels_last and NCHW are the same strides
        assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, **TOL[dt])
    dy = rnd(*out.shape)
    out.backward(dy)
    gx, gw, gb = reference.depthwise.depthwise_conv2d_grads(dy, x, wt, b, **geo)
    torch.testing.assert_close(x.grad.double(), gx, **TOL[dt])
    torch.testing.assert_close(wt.grad.double(), gw, **TOL[dt])
    if b is not None:
        torch.testing.assert_close(b.grad.double(), gb, **TOL[dt])


@st.composite
def _sync_case(draw):
    spatial = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))
    return dict(shape=(draw(st.integers(2, 4)), draw(st.integers(1, 5)), *spatial), channels_last=draw(st.booleans()),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])), relu=draw(st.booleans()),
                affine=draw(st.booleans()), count_scale=draw(st.sampled_from([1, 3])),
                momentum=draw(st.sampled_from([None, 0.1, 0.7])), seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(_sync_case())
def test_sync_batch_norm_pieces_match_float64_formulas(case):
    """batch_norm_stats, batch_norm_backward_reduce, batch_norm_backward_elemt and
    batch_norm_update_stats_ (SyncBatchNorm's building blocks) against the formulas."""
    ops = torch.ops.fusedopt
    g = torch.Generator().manual_seed(case["seed"])
    shape, dt = case["shape"], case["dtype"]
    c = shape[1]
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = _layout(rnd(*shape).to(dt), case["channels_last"])
    xf = x.double().movedim(1, 0).reshape(c, -1)
    n = xf.shape[1]
    mean, var = ops.batch_norm_stats(x)
    torch.testing.assert_close(mean.double(), xf.mean(1), **TOL[dt])
    torch.testing.assert_close(var.double(), xf.var(1, unbiased=False), **TOL[dt])

    dy = _layout(rnd(*shape).to(dt), case["channels_last"])
    out = _layout(rnd(*shape).to(dt), case["channels_last"]) if case["relu"] else None
    dyf = dy.double().movedim(1, 0).reshape(c, -1)
    if out is not None:
        dyf = dyf * (out.double().movedim(1, 0).reshape(c, -1) > 0)
    sum_dy, sum_dy_xmu = ops.batch_norm_backward_reduce(dy, x, mean, out)
    xmu = xf - mean.double()[:, None]
    torch.testing.assert_close(sum_dy.double(), dyf.sum(1), **TOL[dt])
    torch.testing.assert_close(sum_dy_xmu.double(), (dyf * xmu).sum(1), **TOL[dt])

    # The element pass over a "global" batch count_scale times this one (as across ranks).
    count, eps = n * case["count_scale"], 1e-5
    w = (rnd(c) + 1).to(mean.dtype) if case["affine"] else None
    gx = ops.batch_norm_backward_elemt(dy, x, w, mean, var, out, sum_dy, sum_dy_xmu, float(count), eps)
    istd = 1 / (var.double() + eps).sqrt()
    scale = (w.double() if w is not None else torch.ones(c, dtype=torch.float64)) * istd
    ref = (dyf - (sum_dy.double() / count)[:, None]
           - xmu * (sum_dy_xmu.double() / count * istd**2)[:, None]) * scale[:, None]
    torch.testing.assert_close(gx.double().movedim(1, 0).reshape(c, -1), ref, **TOL[dt])

    rm, rv = rnd(c).to(mean.dtype), (rnd(c).abs() + 0.5).to(mean.dtype)
    rm0, rv0 = rm.double().clone(), rv.double().clone()
    tracked = torch.tensor(int(case["seed"]) % 7 + 1)
    ops.batch_norm_update_stats_(rm, rv, mean, var, case["momentum"], tracked if case["momentum"] is None else None, n)
    m = 1 / tracked.item() if case["momentum"] is None else case["momentum"]
    torch.testing.assert_close(rm.double(), (1 - m) * rm0 + m * mean.double(), **TOL[dt])
    torch.testing.assert_close(rv.double(), (1 - m) * rv0 + m * var.double() * n / (n - 1), **TOL[dt])
