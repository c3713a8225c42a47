"""Helpers for optimizer parity tests: twin models, fresh random grads, comparisons."""
import torch

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=2e-6),
    # torch keeps bf16/fp16 state in the param dtype; fusedopt keeps float32 state, so
    # the two drift apart by a few half-precision ulps over 20 steps.
    torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
}

SHAPES = [(), (0,), (1,), (7,), (33,), (5, 3), (1031,), (64, 67)]


def make_params(shapes, dtype, device, seed=0, noncontiguous=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        t = torch.randn(s, generator=g, dtype=torch.float64)
        if noncontiguous and t.dim() == 2:
            t = t.t().contiguous().t()  # a dense, transposed (non-contiguous) leaf
        out.append(torch.nn.Parameter(t.to(device=device, dtype=dtype)))
    return out


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def set_grads(param_lists, seed, skip=()):
    """Gives every list the same fresh random grads; params whose index is in skip get none."""
    g = torch.Generator().manual_seed(seed)
    base = param_lists[0]
    for i, p in enumerate(base):
        grad = None if i in skip else torch.randn(p.shape, generator=g, dtype=torch.float64)
        for plist in param_lists:
            q = plist[i]
            if grad is None:
                q.grad = None
            else:
                q.grad = grad.to(dtype=q.dtype, device=q.device)
                if q.dim() == 2 and not q.is_contiguous():
                    q.grad = q.grad.t().contiguous().t()


def assert_params_close(actual, expected, dtype, **override):
    tol = {**TOL[dtype], **override}
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.detach().to(torch.float64).cpu(), e.detach().to(torch.float64).cpu(), **tol)
