"""Optimizer microbenchmarks: fusedopt against torch's for-loop, foreach and fused steps.

Each case builds identical params and grads for every candidate and times one
optimizer.step(). Bytes moved per param element (the model behind GB/s):
    param read+write, grad read, and each state buffer read+write,
with fusedopt's state sizes (float32 state for fp16/bf16 params): fp32 Adam moves
28 bytes per param, bf16 Adam 22. torch keeps bf16 state for bf16 params, so on bf16
rows it moves fewer bytes than this model counts for fusedopt.
"""
import torch

import fusedopt

# name -> (fusedopt class, torch class, constructor kwargs, state buffers, torch has fused)
OPTIMIZERS = {
    "sgd-momentum": (fusedopt.optim.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9), 1, True),
    "adam": (fusedopt.optim.Adam, torch.optim.Adam, dict(lr=1e-3), 2, True),
    "adamw": (fusedopt.optim.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=1e-2), 2, True),
    "rmsprop": (fusedopt.optim.RMSprop, torch.optim.RMSprop, dict(lr=1e-2), 1, False),
    "adagrad": (fusedopt.optim.Adagrad, torch.optim.Adagrad, dict(lr=1e-2), 1, True),
    "adadelta": (fusedopt.optim.Adadelta, torch.optim.Adadelta, dict(lr=1.0), 2, False),
}

# (tensors, elements per tensor); the full run adds one very large tensor and 100k tiny ones.
QUICK_SHAPES = [(16, 1 << 20), (10_000, 1024)]
FULL_SHAPES = [(16, 1 << 20), (1, 1 << 26), (10_000, 1024), (100_000, 100)]
FOR_LOOP_MAX_TENSORS = 10_000  # torch's for-loop step over 100k tensors takes seconds
# On CUDA the 100k-tensor case is left out: building and stepping it costs about a
# minute per optimizer, nearly all of it host time that the CPU run already measures.
CUDA_MAX_TENSORS = 10_000


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
    """Every optimizer on 16 x 1M (float32 and bf16); Adam/AdamW also on the many-tensor
    and (full runs) single-huge-tensor shapes, where per-tensor overhead shows. --quick
    keeps bf16 for Adam only and Adam alone on the many-tensor shape."""
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    wide = ("adam",) if quick else ("adam", "adamw")
    for name in OPTIMIZERS:
        for n, size in shapes:
            if n != 16 and name not in wide or device == "cuda" and n > CUDA_MAX_TENSORS:
                continue
            dtypes = (torch.float32, torch.bfloat16) if n == 16 and (name in wide or not quick) else (torch.float32,)
            for dtype in dtypes:
                yield dict(family="optim", op=name, n=n, size=size, dtype=dtype, device=device, quick=quick,
                           shape=f"{n}x{size}")


def run_case(case, timer):
    """Returns a result row: times of every candidate, or the reason one was skipped."""
    fo_cls, torch_cls, kw, n_states, torch_fused = OPTIMIZERS[case["op"]]
    n, size, dtype, device = case["n"], case["size"], case["dtype"], case["device"]
    candidates, skipped = {}, {}
    variants = {"torch for-loop": dict(foreach=False), "torch foreach": dict(foreach=True)}
    if torch_fused:
        variants["torch fused"] = dict(fused=True)
    else:
        skipped["torch fused"] = f"torch has no fused {torch_cls.__name__}"
    for label, extra in variants.items():
        if label == "torch for-loop" and n > FOR_LOOP_MAX_TENSORS:
            skipped[label] = f"not timed above {FOR_LOOP_MAX_TENSORS} tensors (seconds per step)"
            continue
        if label == "torch for-loop" and case.get("quick"):
            skipped[label] = "not timed in --quick"
            continue
        opt = torch_cls(_make(n, size, dtype, device), **kw, **extra)
        if label == "torch fused":
            try:  # torch checks the device only at the first step (no fused Adagrad on CUDA)
                opt.step()
            except RuntimeError as e:
                skipped[label] = f"torch has no fused {torch_cls.__name__} on {device}: {str(e)[:60]}"
                continue
        candidates[label] = opt.step
    opt = fo_cls(_make(n, size, dtype, device), **kw)
    candidates["fusedopt"] = opt.step
    budget = 20.0 if n * size >= (1 << 26) or n >= 100_000 else 8.0
    if device == "cuda":  # 15 rounds of a GPU step take well under this
        budget /= 4
    times = timer(candidates, max_seconds=budget)
    return dict(
        family="optim", op=case["op"], shape=f"{n}x{size}", dtype=str(dtype).replace("torch.", ""),
        layout="-", device=device, times=times, skipped=skipped, fusedopt="fusedopt",
        bytes=n * size * bytes_per_element(dtype, n_states), bytes_per_param=bytes_per_element(dtype, n_states),
    )
