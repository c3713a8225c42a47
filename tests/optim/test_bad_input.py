"""Bad input to the optimizers: a clear exception that names the problem, and params
and optimizer state left exactly as they were."""
import contextlib
import copy

import pytest
import torch

import fusedopt

KINDS = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.1), "AdamW": dict(lr=0.1), "RMSprop": dict(lr=0.1),
         "Adagrad": dict(lr=0.1), "Adadelta": dict(lr=1.0)}


def _stepped(kind, shapes=((4, 3), (5,)), seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    opt = getattr(fusedopt.optim, kind)(params, **KINDS[kind])
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    return params, opt


def _snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _assert_unchanged(params, opt, snap):
    before_params, before_state = snap
    for p, b in zip(params, before_params):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)
    after = opt.state_dict()
    for pid, st in before_state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(after["state"][pid][k], v, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_of_another_optimizer_is_refused_before_loading(kind):
    other = "Adagrad" if kind != "Adagrad" else "Adam"
    params, opt = _stepped(kind)
    _, foreign = _stepped(other)
    snap = _snapshot(params, opt)
    with pytest.raises(ValueError, match=r"lacks \[.*another optimizer"):
        opt.load_state_dict(foreign.state_dict())
    _assert_unchanged(params, opt, snap)


# SGD is left out: its only state key removed leaves an empty state, which is a fresh
# param's state, not an error (torch starts the buffer from the next grad).
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "SGD"])
def test_state_dict_with_missing_key_is_refused(kind):
    params, opt = _stepped(kind)
    sd = copy.deepcopy(opt.state_dict())
    victim = next(k for k in sd["state"][0] if k != "step")
    del sd["state"][0][victim]
    snap = _snapshot(params, opt)
    with pytest.raises(ValueError, match=f"lacks \\['{victim}'\\]"):
        opt.load_state_dict(sd)
    _assert_unchanged(params, opt, snap)


def test_state_dict_with_wrongly_shaped_state_is_refused():
    params, opt = _stepped("Adam")
    _, other = _stepped("Adam", shapes=((3, 4), (5,)))
    snap = _snapshot(params, opt)
    with pytest.raises(ValueError, match=r"'exp_avg' of param 0 has shape \(3, 4\) but the param has shape \(4, 3\)"):
        opt.load_state_dict(other.state_dict())
    _assert_unchanged(params, opt, snap)


@pytest.mark.parametrize("kind", list(KINDS))
def test_grad_of_wrong_shape_or_dtype_raises_and_changes_nothing(kind):
    params, opt = _stepped(kind)
    snap = _snapshot(params, opt)
    params[0].grad = torch.randn(4, 3)
    # Assigning a mismatched .grad is refused by torch itself; smuggle it in through .data.
    params[1].grad.data = torch.randn(6)
    with pytest.raises((RuntimeError, ValueError), match="(?i)shape|size|numel"):
        opt.step()
    _assert_unchanged(params, opt, snap)
    params[1].grad.data = torch.randn(5, dtype=torch.float64)
    with pytest.raises((RuntimeError, ValueError, TypeError), match="(?i)dtype|Double|Float"):
        opt.step()
    _assert_unchanged(params, opt, snap)


@pytest.mark.parametrize("kind", list(KINDS))
def test_integer_params_are_refused_like_torch(kind):
    p = torch.zeros(3, dtype=torch.int64)
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        opt = getattr(fusedopt.optim, kind)([p], **KINDS[kind])
        p.grad = torch.ones(3, dtype=torch.int64)
        opt.step()


@pytest.mark.parametrize("kind", list(KINDS))
def test_nan_and_inf_grads_propagate_like_torch(kind):
    """Without a GradScaler, non-finite grads are not an error in torch.optim: the update
    propagates them. fusedopt does the same, element for element."""
    g = torch.Generator().manual_seed(3)
    init = torch.randn(8, generator=g)
    grad = torch.randn(8, generator=g)
    grad[1], grad[5] = float("nan"), float("inf")
    results = []
    for lib in (torch.optim, fusedopt.optim):
        p = torch.nn.Parameter(init.clone())
        opt = getattr(lib, kind)([p], **KINDS[kind])
        p.grad = grad.clone()
        opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[1], results[0], equal_nan=True)
    assert not results[1][1].isfinite()


@pytest.mark.parametrize("make", ["duplicate", "overlapping views"])
def test_params_sharing_memory_are_refused(make):
    base = torch.randn(10)
    if make == "duplicate":
        p = torch.nn.Parameter(base.clone())
        params = [p, p]
    else:
        params = [torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:])]
    with pytest.warns(UserWarning) if make == "duplicate" else contextlib.nullcontext():
        opt = fusedopt.optim.Adam(params, lr=0.1)
    before = base.clone() if make != "duplicate" else params[0].detach().clone()
    for q in params:
        q.grad = torch.randn(q.shape)
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    after = base if make != "duplicate" else params[0].detach()
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not opt.state_dict()["state"]


def test_disjoint_views_of_one_buffer_are_fine():
    base = torch.randn(10)
    params = [torch.nn.Parameter(base[:5]), torch.nn.Parameter(base[5:])]
    ref = [torch.nn.Parameter(base[:5].clone()), torch.nn.Parameter(base[5:].clone())]
    ours, theirs = fusedopt.optim.Adam(params, lr=0.1), torch.optim.Adam(ref, lr=0.1)
    g = torch.randn(10)
    for ps, o in ((params, ours), (ref, theirs)):
        ps[0].grad, ps[1].grad = g[:5].clone(), g[5:].clone()
        o.step()
    for a, b in zip(params, ref):
        torch.testing.assert_close(a.detach(), b.detach())
