"""Optimizer microbenchmarks: fusedopt against torch's for-loop, foreach and fused steps.

Each case builds identical params and grads for every candidate and times one
optimizer.step(). Bytes moved per element (the model behind GB/s):
    param read+write, grad read, and each state buffer read+write,
with fusedopt's state sizes (float32 state for fp16/bf16 params).
"""
import torch

import fusedopt

# name -> (fusedopt class, torch class, constructor kwargs, state buffers, torch has fused)
OPTIMIZERS = {
    "adam": (fusedopt.optim.Adam, torch.optim.Adam, dict(lr=1e-3), 2, True),
    "adamw": (fusedopt.optim.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=1e-2), 2, True),
}

# (tensors, elements per tensor); the full run adds one very large tensor.
QUICK_SHAPES = [(16, 1 << 20), (10_000, 1024), (100_000, 100)]
FULL_SHAPES = [(16, 1 << 20), (1, 1 << 26), (10_000, 1024), (100_000, 100)]
FOR_LOOP_MAX_TENSORS = 10_000  # torch's for-loop step over 100k tensors takes seconds


def bytes_per_element(dtype, n_states):
    p = torch.empty((), dtype=dtype).element_size()
    s = 4 if dtype in (torch.float16, torch.bfloat16) else p
    return 3 * p + 2 * s * n_states


def _make(n, size, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(size, generator=g, device=device, dtype=dtype)) for _ in range(n)]
    for p in params:
        p.grad = torch.randn(size, generator=g, device=device, dtype=dtype)
    return params


def cases(quick, device):
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    for name in OPTIMIZERS:
        for n, size in shapes:
            for dtype in dtypes:
                if dtype != torch.float32 and n > 16:
                    continue
                yield dict(family="optim", op=name, n=n, size=size, dtype=dtype, device=device)


def run_case(case, timer):
    """Returns a result row: times of every candidate, or the reason one was skipped."""
    fo_cls, torch_cls, kw, n_states, torch_fused = OPTIMIZERS[case["op"]]
    n, size, dtype, device = case["n"], case["size"], case["dtype"], case["device"]
    candidates, skipped = {}, {}
    variants = {"torch for-loop": dict(foreach=False), "torch foreach": dict(foreach=True)}
    if torch_fused:
        variants["torch fused"] = dict(fused=True)
    for label, extra in variants.items():
        if label == "torch for-loop" and n > FOR_LOOP_MAX_TENSORS:
            skipped[label] = f"not timed above {FOR_LOOP_MAX_TENSORS} tensors (seconds per step)"
            continue
        opt = torch_cls(_make(n, size, dtype, device), **kw, **extra)
        candidates[label] = opt.step
    opt = fo_cls(_make(n, size, dtype, device), **kw)
    candidates["fusedopt"] = opt.step
    budget = 20.0 if n * size >= (1 << 26) or n >= 100_000 else 8.0
    times = timer(candidates, max_seconds=budget)
    return dict(
        family="optim", op=case["op"], shape=f"{n}x{size}", dtype=str(dtype).replace("torch.", ""),
        layout="-", device=device, times=times, skipped=skipped, fusedopt="fusedopt",
        bytes=n * size * bytes_per_element(dtype, n_states),
    )
