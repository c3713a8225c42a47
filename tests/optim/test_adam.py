"""fusedopt.optim.Adam/AdamW against torch.optim (foreach=False) and the float64 reference.

What every optimizer shares (checkpoint round trips, GradScaler, torch.compile) is tested
for Adam and AdamW too, in test_family.py."""
import copy
import itertools

import pytest
import torch

import fusedopt
from fusedopt.reference import adam_step

from .helpers import SHAPES, assert_params_close, clone_params, make_params, set_grads

STEPS = 20
OPTIONS = [
    dict(zip(("amsgrad", "maximize", "weight_decay"), combo))
    for combo in itertools.product([False, True], [False, True], [0.0, 0.1])
]


def _pair(kind, params, **kw):
    fused_cls = getattr(fusedopt.optim, kind)
    torch_cls = getattr(torch.optim, kind)
    twin = clone_params(params)
    torch_kw = dict(kw)
    torch_kw.pop("capturable", None)  # torch has no capturable path on the CPU
    return fused_cls(params, **kw), twin, torch_cls(twin, foreach=False, **torch_kw)


def _run(opt_a, pa, opt_b, pb, steps=STEPS, skip=()):
    for s in range(steps):
        set_grads([pa, pb], seed=100 + s, skip=skip)
        opt_a.step()
        opt_b.step()


@pytest.mark.parametrize("kind", ["Adam", "AdamW"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_adam_matches_torch_across_options(kind, options, device, simd):
    params = make_params(SHAPES, torch.float32, device)
    fo, twin, to = _pair(kind, params, lr=1e-2, **options)
    _run(fo, params, to, twin)
    assert_params_close(params, twin, torch.float32)
    for p, q in zip(params, twin):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fo.state[p][key], to.state[q][key], rtol=1e-5, atol=1e-6)
        assert fo.state[p]["step"].item() == to.state[q]["step"].item() == STEPS


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_adam_matches_torch_across_dtypes(dtype, device, simd):
    params = make_params(SHAPES, dtype, device, seed=1)
    # eps must be representable in fp16, or torch's fp16-state Adam divides by zero.
    fo, twin, to = _pair("AdamW", params, lr=1e-3, eps=1e-3, weight_decay=0.05, amsgrad=True)
    _run(fo, params, to, twin)
    assert_params_close(params, twin, dtype)
    # Half params keep float32 moments.
    expected = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    assert fo.state[params[-1]]["exp_avg"].dtype == expected


def test_adam_matches_float64_reference(device, simd):
    for decoupled, amsgrad, maximize in itertools.product([False, True], repeat=3):
        params = make_params(SHAPES, torch.float64, device, seed=2)
        opt = fusedopt.optim.Adam(params, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2, amsgrad=amsgrad,
                                  maximize=maximize, decoupled_weight_decay=decoupled)
        ref = [p.detach().clone().cpu() for p in params]
        ref_state = [{} for _ in ref]
        for s in range(STEPS):
            set_grads([params], seed=7 + s)
            opt.step()
            for r, st, p in zip(ref, ref_state, params):
                adam_step(r, p.grad.detach().cpu().double(), st, lr=3e-3, betas=(0.8, 0.99), eps=1e-6,
                          weight_decay=0.2, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled)
        assert_params_close(params, ref, torch.float64)


def test_adam_float32_close_to_float64_reference(device):
    params = make_params(SHAPES, torch.float32, device, seed=3)
    opt = fusedopt.optim.Adam(params, lr=1e-2, weight_decay=0.1, amsgrad=True)
    ref = [p.detach().double().cpu() for p in params]
    ref_state = [{} for _ in ref]
    for s in range(STEPS):
        set_grads([params], seed=40 + s)
        opt.step()
        for r, st, p in zip(ref, ref_state, params):
            adam_step(r, p.grad.detach().double().cpu(), st, lr=1e-2, weight_decay=0.1, amsgrad=True)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach().double().cpu(), r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("capturable", [False, True])
def test_adam_tensor_lr_and_capturable(capturable, device, simd):
    params = make_params(SHAPES, torch.float32, device, seed=4)
    lr = torch.tensor(5e-3, device=device if capturable else "cpu")
    fo = fusedopt.optim.Adam(params, lr=lr, capturable=capturable)
    twin = clone_params(params)
    to = torch.optim.Adam(twin, lr=5e-3, foreach=False)
    _run(fo, params, to, twin)
    assert_params_close(params, twin, torch.float32)


def test_adam_param_groups_and_noncontiguous(device, simd):
    a = make_params([(6, 4), (9,)], torch.float32, device, seed=5, noncontiguous=True)
    b = make_params([(3, 8), (2,)], torch.float32, device, seed=6, noncontiguous=True)
    assert not a[0].is_contiguous()
    fo = fusedopt.optim.Adam([{"params": a}, {"params": b, "lr": 3e-2, "amsgrad": True}], lr=1e-2)
    ta, tb = clone_params(a), clone_params(b)
    to = torch.optim.Adam([{"params": ta}, {"params": tb, "lr": 3e-2, "amsgrad": True}], lr=1e-2, foreach=False)
    _run(fo, a + b, to, ta + tb)
    assert_params_close(a + b, ta + tb, torch.float32)
    assert not a[0].is_contiguous()


def test_adam_mismatched_layouts_are_staged(simd):
    # A transposed param with a contiguous grad: walked through contiguous temporaries.
    p = torch.nn.Parameter(torch.randn(5, 7).t())
    q = torch.nn.Parameter(p.detach().clone())
    fo, to = fusedopt.optim.Adam([p], lr=1e-2), torch.optim.Adam([q], lr=1e-2, foreach=False)
    for s in range(5):
        g = torch.randn(7, 5)
        p.grad, q.grad = g.clone(), g.clone()
        fo.step()
        to.step()
    assert_params_close([p], [q], torch.float32)


def test_adam_skips_params_without_grad(device):
    params = make_params(SHAPES, torch.float32, device, seed=8)
    fo, twin, to = _pair("Adam", params, lr=1e-2)
    _run(fo, params, to, twin, steps=6, skip={1, 4})
    _run(fo, params, to, twin, steps=6)
    assert_params_close(params, twin, torch.float32)
    assert fo.state[params[1]]["step"].item() == to.state[twin[1]]["step"].item() == 6


def test_adam_complex_params_match_torch(device):
    g = torch.Generator().manual_seed(9)
    p = torch.nn.Parameter(torch.randn(17, dtype=torch.complex64, generator=g).to(device))
    q = torch.nn.Parameter(p.detach().clone())
    fo = fusedopt.optim.Adam([p], lr=1e-2, amsgrad=True, weight_decay=0.1)
    to = torch.optim.Adam([q], lr=1e-2, amsgrad=True, weight_decay=0.1, foreach=False)
    for s in range(10):
        grad = torch.randn(17, dtype=torch.complex64, generator=g).to(device)
        p.grad, q.grad = grad.clone(), grad.clone()
        fo.step()
        to.step()
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adam_many_small_tensors(simd):
    # Hundreds of tensors: the flat plan splits work across tensor boundaries and threads.
    g = torch.Generator().manual_seed(10)
    sizes = torch.randint(1, 3000, (300,), generator=g).tolist()
    params = make_params([(n,) for n in sizes], torch.float32, "cpu", seed=11)
    fo, twin, to = _pair("Adam", params, lr=1e-2, amsgrad=True)
    _run(fo, params, to, twin, steps=5)
    assert_params_close(params, twin, torch.float32)


def test_adam_bf16_state_dict_loads_into_float32_state():
    p = torch.nn.Parameter(torch.randn(10, dtype=torch.bfloat16))
    t = torch.optim.Adam([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    t.step()
    fo = fusedopt.optim.Adam([p], lr=1e-2)
    fo.load_state_dict(t.state_dict())
    assert fo.state[p]["exp_avg"].dtype == torch.float32
    p.grad = torch.randn_like(p)
    fo.step()
    assert fo.state[p]["step"].item() == 2


def test_adam_works_with_schedulers_hooks_and_zero_grad(device):
    params = make_params([(10,)], torch.float32, device, seed=14)
    twin = clone_params(params)
    fo = fusedopt.optim.Adam(params, lr=0.1)
    to = torch.optim.Adam(twin, lr=0.1, foreach=False)
    s1 = torch.optim.lr_scheduler.StepLR(fo, step_size=2, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(to, step_size=2, gamma=0.5)
    calls = []
    fo.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    fo.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    for s in range(6):
        set_grads([params, twin], seed=80 + s)
        fo.step()
        to.step()
        s1.step()
        s2.step()
        fo.zero_grad()
        assert params[0].grad is None
    assert calls == ["pre", "post"] * 6
    assert fo.param_groups[0]["lr"] == to.param_groups[0]["lr"]
    assert_params_close(params, twin, torch.float32)


def test_adam_add_param_group_after_steps(device):
    a = make_params([(5,)], torch.float32, device, seed=15)
    b = make_params([(4,)], torch.float32, device, seed=16)
    ta, tb = clone_params(a), clone_params(b)
    fo = fusedopt.optim.Adam(a, lr=1e-2)
    to = torch.optim.Adam(ta, lr=1e-2, foreach=False)
    _run(fo, a, to, ta, steps=3)
    fo.add_param_group({"params": b, "lr": 2e-2})
    to.add_param_group({"params": tb, "lr": 2e-2})
    _run(fo, a + b, to, ta + tb, steps=3)
    assert_params_close(a + b, ta + tb, torch.float32)


def test_adam_closure_returns_loss():
    p = torch.nn.Parameter(torch.randn(4))
    opt = fusedopt.optim.Adam([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0


def test_adam_op_passes_opcheck():
    g = torch.Generator().manual_seed(17)
    n = [5, 130]
    params = [torch.randn(k, generator=g) for k in n]
    grads = [torch.randn(k, generator=g) for k in n]
    m = [torch.randn(k, generator=g) for k in n]
    v = [torch.rand(k, generator=g) for k in n]
    vmax = [vv + 0.1 for vv in v]
    steps = [torch.tensor(3.0) for _ in n]
    args = (params, grads, m, v, vmax, steps, torch.tensor(1e-2, dtype=torch.float64), 0.9, 0.999, 0.01, 1e-8,
            True, False, True, [], None, None, None)
    torch.library.opcheck(torch.ops.fusedopt.adam_.default, args)


# -- errors (bad hyperparameters and differentiable=True: test_family.py) ---------------
def test_adam_accepts_foreach_and_fused_flags():
    p = torch.nn.Parameter(torch.randn(3))
    for kw in (dict(foreach=True), dict(fused=True), dict(foreach=False, fused=False)):
        opt = fusedopt.optim.Adam([p], **kw)
        p.grad = torch.randn(3)
        opt.step()


def test_adam_sparse_grad_raises_and_leaves_state_alone():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = fusedopt.optim.Adam([p], lr=1e-2)
    p.grad = torch.randn(4, 3)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p_before = p.detach().clone()
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(p, p_before)
    assert all(torch.equal(before[k], opt.state[p][k]) for k in before)


def test_adam_op_rejects_mismatched_lists_before_writing():
    params = [torch.randn(4), torch.randn(5)]
    snapshot = [t.clone() for t in params]
    grads = [torch.randn(4), torch.randn(6)]
    states = lambda: [torch.zeros(4), torch.zeros(5)]  # noqa: E731
    steps = [torch.tensor(0.0), torch.tensor(0.0)]
    lr = torch.tensor(1e-2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape"):
        torch.ops.fusedopt.adam_(params, grads, states(), states(), [], steps, lr, 0.9, 0.999, 0.0, 1e-8, False, False,
                                 False, [], None)
    with pytest.raises(ValueError, match="1 exp_avgs"):
        torch.ops.fusedopt.adam_(params, [torch.randn(4), torch.randn(5)], [torch.zeros(4)], states(), [], steps, lr,
                                 0.9, 0.999, 0.0, 1e-8, False, False, False, [], None)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype Double"):
        torch.ops.fusedopt.adam_(params, [torch.randn(4, dtype=torch.float64), torch.randn(5)], states(), states(), [],
                                 steps, lr, 0.9, 0.999, 0.0, 1e-8, False, False, False, [], None)
    with pytest.raises(TypeError, match=r"exp_avgs\[1\] has dtype Half"):
        torch.ops.fusedopt.adam_(params, [torch.randn(4), torch.randn(5)], [torch.zeros(4), torch.zeros(5).half()],
                                 states(), [], steps, lr, 0.9, 0.999, 0.0, 1e-8, False, False, False, [], None)
    with pytest.raises(TypeError, match="supported are float32"):
        torch.ops.fusedopt.adam_([torch.zeros(3, dtype=torch.int32)], [torch.zeros(3, dtype=torch.int32)],
                                 [torch.zeros(3)], [torch.zeros(3)], [], [torch.tensor(0.0)], lr, 0.9, 0.999, 0.0,
                                 1e-8, False, False, False, [], None)
    assert all(torch.equal(a, b) for a, b in zip(params, snapshot))
    assert all(s.item() == 0.0 for s in steps)


def test_adam_rejects_expanded_params():
    p = torch.nn.Parameter(torch.randn(1, 3).expand(4, 3))
    opt = fusedopt.optim.Adam([p], lr=1e-2)
    p.grad = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="overlapping memory"):
        opt.step()
