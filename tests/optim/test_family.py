"""SGD, RMSprop, Adagrad and Adadelta (and Adam/AdamW where generic) against torch.optim
(foreach=False) and the float64 references, across each optimizer's option grid."""
import copy
import itertools

import pytest
import torch

import fusedopt
from fusedopt import reference

from .helpers import SHAPES, assert_params_close, clone_params, make_params, set_grads

STEPS = 20

GRIDS = {
    "SGD": dict(lr=[0.05], momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                weight_decay=[0.0, 0.1], maximize=[False, True]),
    "RMSprop": dict(lr=[1e-2], alpha=[0.99, 0.8], weight_decay=[0.0, 0.1], momentum=[0.0, 0.9],
                    centered=[False, True], maximize=[False, True]),
    "Adagrad": dict(lr=[0.1], lr_decay=[0.0, 0.05], weight_decay=[0.0, 0.1], initial_accumulator_value=[0.0, 0.2],
                    maximize=[False, True]),
    "Adadelta": dict(lr=[1.0], rho=[0.9, 0.4], weight_decay=[0.0, 0.1], maximize=[False, True]),
}
REFERENCE = {"SGD": reference.sgd_step, "RMSprop": reference.rmsprop_step, "Adagrad": reference.adagrad_step,
             "Adadelta": reference.adadelta_step}
# One representative configuration per optimizer, with every state buffer in use.
RICH = {
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    "RMSprop": dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1),
    "Adagrad": dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2),
    "Adadelta": dict(lr=1.0, weight_decay=0.1),
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=1e-2, amsgrad=True),
}


def _grid(kind):
    keys = list(GRIDS[kind])
    out = []
    for combo in itertools.product(*GRIDS[kind].values()):
        kw = dict(zip(keys, combo))
        try:  # keep only what torch accepts (e.g. nesterov needs momentum and no dampening)
            getattr(torch.optim, kind)([torch.nn.Parameter(torch.zeros(1))], **kw)
        except (ValueError, RuntimeError):
            continue
        out.append(pytest.param(kind, kw, id=f"{kind}-" + "-".join(f"{k}={v}" for k, v in kw.items() if k != "lr")))
    return out


def _pair(kind, params, **kw):
    twin = clone_params(params)
    return getattr(fusedopt.optim, kind)(params, **kw), twin, getattr(torch.optim, kind)(twin, foreach=False, **kw)


def _run(a, pa, b, pb, steps=STEPS, seed=100):
    for s in range(steps):
        set_grads([pa, pb], seed=seed + s)
        a.step()
        b.step()


@pytest.mark.parametrize("kind,options", [p for k in GRIDS for p in _grid(k)])
def test_matches_torch_across_options(kind, options, device, simd):
    params = make_params(SHAPES, torch.float32, device, seed=21)
    fo, twin, to = _pair(kind, params, **options)
    _run(fo, params, to, twin)
    # Centered RMSprop divides by sqrt(E[g^2] - E[g]^2), which amplifies last-bit
    # differences (torch's kernels contract to FMA, ours do not); 1e-5 absolute still
    # pins every formula.
    assert_params_close(params, twin, torch.float32, atol=1e-5)
    for p, q in zip(params, twin):
        assert set(fo.state[p]) == set(to.state[q])
        for k, v in to.state[q].items():
            torch.testing.assert_close(fo.state[p][k].cpu().double(), v.cpu().double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(GRIDS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_matches_torch_across_dtypes(kind, dtype, device, simd):
    """float64 against torch in float64; fp16/bf16 params (float32 state) against torch
    run on float32 copies: they must follow the float32 run to within the rounding of
    the stored half-precision params."""
    params = make_params(SHAPES, dtype, device, seed=22)
    twin = [torch.nn.Parameter(p.detach().to(torch.float64 if dtype == torch.float64 else torch.float32))
            for p in params]
    fo = getattr(fusedopt.optim, kind)(params, **RICH[kind])
    to = getattr(torch.optim, kind)(twin, foreach=False, **RICH[kind])
    _run(fo, params, to, twin)
    tol = {torch.float64: {}, torch.bfloat16: dict(atol=4e-2, rtol=4e-2), torch.float16: dict(atol=5e-3, rtol=5e-3)}
    assert_params_close(params, twin, dtype, **tol[dtype])
    if dtype != torch.float64:
        assert all(v.dtype == torch.float32 for k, v in fo.state[params[-1]].items() if k != "step")


@pytest.mark.parametrize("kind", list(GRIDS))
def test_matches_float64_reference(kind, device, simd):
    params = make_params(SHAPES, torch.float64, device, seed=23)
    opt = getattr(fusedopt.optim, kind)(params, **RICH[kind])
    ref = [p.detach().clone().cpu() for p in params]
    ref_state = [{} for _ in ref]
    for s in range(STEPS):
        set_grads([params], seed=300 + s)
        opt.step()
        for r, st, p in zip(ref, ref_state, params):
            REFERENCE[kind](r, p.grad.detach().cpu(), st, **RICH[kind])
    assert_params_close(params, ref, torch.float64)


# Sizes around the CUDA launch planner's limits (multi_tensor_apply.cuh): tensors of one
# 65536-element chunk and just over, more tensors than one launch's table holds (28),
# and on CUDA one tensor of more chunks than one launch's 320 blocks.
BOUNDARY_SHAPES = [(65536,), (65537,), (3, 70001), (2 * 65536 + 5,)] + [(i * 37 + 1,) for i in range(40)]


@pytest.mark.parametrize("kind", list(RICH))
def test_matches_torch_across_launch_boundaries(kind, device):
    shapes = BOUNDARY_SHAPES + ([(321 * 65536 + 17,)] if device == "cuda" else [])
    params = make_params(shapes, torch.float32, device, seed=27)
    fo, twin, to = _pair(kind, params, **RICH[kind])
    _run(fo, params, to, twin, steps=3)
    assert_params_close(params, twin, torch.float32, atol=1e-5)


@pytest.mark.parametrize("kind", list(RICH))
def test_state_dict_round_trip(kind, device):
    """torch -> fusedopt -> torch in mid-training, checked against an uninterrupted torch run."""
    params = make_params(SHAPES, torch.float32, device, seed=24)
    kw = RICH[kind]
    ref = clone_params(params)
    t_ref = getattr(torch.optim, kind)(ref, foreach=False, **kw)
    t1 = getattr(torch.optim, kind)(params, foreach=False, **kw)
    _run(t1, params, t_ref, ref, steps=4)
    mine = clone_params(params)
    fo = getattr(fusedopt.optim, kind)(mine, **kw)
    fo.load_state_dict(copy.deepcopy(t1.state_dict()))
    _run(fo, mine, t_ref, ref, steps=4, seed=200)
    back = clone_params(mine)
    t2 = getattr(torch.optim, kind)(back, foreach=False, **kw)
    t2.load_state_dict(copy.deepcopy(fo.state_dict()))
    _run(t2, back, t_ref, ref, steps=4, seed=300)
    assert_params_close(back, ref, torch.float32)


@pytest.mark.parametrize("kind", list(RICH))
def test_grad_scaler_skips_inf_steps(kind, device):
    params = make_params([(8,), (3, 3)], torch.float32, device, seed=25)
    fo, twin, to = _pair(kind, params, **RICH[kind])
    scalers = [torch.amp.GradScaler(device, init_scale=256.0) for _ in range(2)]
    for s in range(6):
        set_grads([params, twin], seed=60 + s)
        for plist, scaler in zip((params, twin), scalers):
            scale = scaler.scale(torch.ones((), device=device)).item()
            for p in plist:
                p.grad.mul_(scale)
            if s in (0, 3):
                plist[0].grad[1] = float("nan") if s == 3 else float("inf")
        before = [p.detach().clone() for p in params]
        scalers[0].step(fo)
        scalers[1].step(to)
        for sc in scalers:
            sc.update()
        if s in (0, 3):
            assert all(torch.equal(b, p) for b, p in zip(before, params)), f"step {s} was not skipped"
    assert_params_close(params, twin, torch.float32)


@pytest.mark.parametrize("kind", list(RICH))
def test_compiles_fullgraph_with_tensor_lr(kind):
    torch._dynamo.reset()
    model = torch.nn.Linear(6, 3)
    twin = copy.deepcopy(model)
    kw = dict(RICH[kind])
    lr = kw.pop("lr")
    opt = getattr(fusedopt.optim, kind)(model.parameters(), lr=torch.tensor(lr), **kw)
    ref = getattr(torch.optim, kind)(twin.parameters(), lr=lr, foreach=False, **kw)
    x = torch.randn(8, 6)

    @torch.compile(fullgraph=True)
    def compiled_step():
        opt.step()

    def train_step():
        for m in (model, twin):
            m.zero_grad()
            m(x).square().mean().backward()
        compiled_step()
        ref.step()

    # The first step creates state, so the second may compile once more; after that, an
    # lr changed in place (a scheduler) must not recompile.
    for _ in range(2):
        train_step()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for s in range(3):
            opt.param_groups[0]["lr"].mul_(0.5)
            ref.param_groups[0]["lr"] *= 0.5
            train_step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _op_args(kind):
    g = torch.Generator().manual_seed(26)
    n = [5, 70]
    r = lambda: [torch.randn(k, generator=g) for k in n]  # noqa: E731
    pos = lambda: [torch.rand(k, generator=g) + 0.1 for k in n]  # noqa: E731
    steps = [torch.tensor(2.0) for _ in n]
    lr = torch.tensor(0.01, dtype=torch.float64)
    return {
        "sgd_": (r(), r(), r(), lr, 0.9, 0.1, 0.01, False, False, False, [], None, None, None),
        "rmsprop_": (r(), r(), [x + 1 for x in pos()], r(), [0.1 * x for x in r()], steps, lr, 0.9, 1e-8, 0.01, 0.9,
                     True, False, [], None, None, None),
        "adagrad_": (r(), r(), pos(), steps, lr, 0.01, 0.01, 1e-10, False, [], None, None, None),
        "adadelta_": (r(), r(), pos(), pos(), steps, lr, 0.9, 1e-6, 0.01, True, [], None, None, None),
    }[kind]


@pytest.mark.parametrize("op", ["sgd_", "rmsprop_", "adagrad_", "adadelta_"])
def test_op_passes_opcheck(op):
    torch.library.opcheck(getattr(torch.ops.fusedopt, op).default, _op_args(op))


@pytest.mark.parametrize("op", ["sgd_", "rmsprop_", "adagrad_", "adadelta_"])
def test_fast_entry_matches_torch_ops(op):
    a = _op_args(op)
    b = copy.deepcopy(a)
    getattr(torch.ops.fusedopt, op)(*a)
    fusedopt._C.fast_call(op, *b)
    for x, y in zip(a, b):
        if isinstance(x, list):
            assert all(torch.equal(u, v) for u, v in zip(x, y))


ADAM_BAD = [dict(lr=-1.0), dict(eps=-1e-8), dict(betas=(1.0, 0.999)), dict(betas=(0.9, -0.1)),
            dict(weight_decay=-0.1), dict(lr=torch.tensor([1e-3, 1e-3])), dict(foreach=True, fused=True)]
BAD = {
    "Adam": ADAM_BAD,
    "AdamW": ADAM_BAD,
    "SGD": [dict(lr=-0.1), dict(lr=0.1, momentum=-0.5), dict(lr=0.1, weight_decay=-1.0),
            dict(lr=0.1, nesterov=True), dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)],
    "RMSprop": [dict(lr=-1.0), dict(eps=-1.0), dict(momentum=-1.0), dict(weight_decay=-1.0), dict(alpha=-0.1)],
    "Adagrad": [dict(lr=-1.0), dict(lr_decay=-1.0), dict(weight_decay=-1.0), dict(initial_accumulator_value=-1.0),
                dict(eps=-1.0)],
    "Adadelta": [dict(lr=-1.0), dict(rho=1.5), dict(eps=-1.0), dict(weight_decay=-1.0)],
}


@pytest.mark.parametrize("kind,bad", [(k, b) for k, bs in BAD.items() for b in bs],
                         ids=lambda x: x if isinstance(x, str) else ",".join(f"{k}={v}" for k, v in x.items()))
def test_rejects_bad_hyperparameters_like_torch(kind, bad):
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(Exception) as expected:
        getattr(torch.optim, kind)(p, **bad)
    with pytest.raises(type(expected.value)) as actual:
        getattr(fusedopt.optim, kind)(p, **bad)
    assert str(actual.value) == str(expected.value)


@pytest.mark.parametrize("kind", list(RICH))
def test_rejects_differentiable(kind):
    with pytest.raises(RuntimeError, match="differentiable=True"):
        getattr(fusedopt.optim, kind)([torch.nn.Parameter(torch.randn(3))], lr=0.1, differentiable=True)


def test_sgd_first_step_buffer_for_params_that_join_late(simd):
    # Param 1 gets its first grad at step 3: its buffer must start from that grad.
    params = make_params([(6,), (4,)], torch.float32, "cpu", seed=27)
    fo, twin, to = _pair("SGD", params, lr=0.1, momentum=0.9, dampening=0.5)
    for s in range(6):
        set_grads([params, twin], seed=400 + s, skip={1} if s < 3 else ())
        fo.step()
        to.step()
    assert_params_close(params, twin, torch.float32)


def test_adagrad_param_group_added_later_gets_state():
    a = make_params([(5,)], torch.float32, "cpu", seed=28)
    opt = fusedopt.optim.Adagrad(a, lr=0.1, initial_accumulator_value=0.3)
    b = make_params([(4,)], torch.float32, "cpu", seed=29)
    opt.add_param_group({"params": b})
    set_grads([a + b], seed=1)
    opt.step()
    assert opt.state[b[0]]["step"].item() == 1.0


@pytest.mark.parametrize("entry", ["torch.ops", "fast_call"])
def test_in_place_update_bumps_version_counters(entry):
    """A step must invalidate graphs that saved the params, as torch's in-place ops do."""
    w = torch.randn(4, requires_grad=True)
    y = (w * w).sum()  # saves w for backward
    args = ([w.detach()], [torch.randn(4)], [], torch.tensor(0.1, dtype=torch.float64), 0.0, 0.0, 0.0, False, False,
            False, [], None, None, None)
    before = w._version
    with torch.no_grad():
        if entry == "torch.ops":
            torch.ops.fusedopt.sgd_(*args)
        else:
            fusedopt._C.fast_call("sgd_", *args)
    assert w._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
