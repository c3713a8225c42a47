"""How an Adam step's cost grows with the work: step time against parameter count, from
1K to 256M elements (or as far as memory allows), as one tensor and as many tensors of
1K elements each. fusedopt against torch's fused Adam (the fastest torch variant), both
float32. The rows feed the scaling plot; they are not part of the summary table.
"""
import torch

import fusedopt

TENSOR_SIZE = 1024  # elements per tensor in the "many tensors" series
# Bytes held per param element while both candidates exist: param, grad, exp_avg,
# exp_avg_sq in float32, for torch and for fusedopt.
BYTES_HELD_PER_ELEMENT = 2 * 4 * 4


def _memory_budget(device):
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free // 2
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024 // 2


def sizes(quick, device):
    """Powers of 4 from 1K to 256M (16M in quick mode), cut where memory would run out."""
    top = 1 << (24 if quick else 28)
    budget = _memory_budget(device)
    n, out = 1 << 10, []
    while n <= top and n * BYTES_HELD_PER_ELEMENT <= budget:
        out.append(n)
        n <<= 2
    return out


def cases(quick, device):
    for numel in sizes(quick, device):
        for series in ("one tensor", "many tensors"):
            tensors = 1 if series == "one tensor" else max(numel // TENSOR_SIZE, 1)
            yield dict(family="scaling", op="adam", series=series, numel=numel, tensors=tensors,
                       shape=f"{tensors}x{numel // tensors}", dtype="float32", layout=series, device=device)


def _params(tensors, size, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    flat = torch.randn(tensors * size, generator=g, device=device)
    grads = torch.randn(tensors * size, generator=g, device=device)
    params = [torch.nn.Parameter(t.clone()) for t in flat.view(tensors, size)]
    for p, gr in zip(params, grads.view(tensors, size)):
        p.grad = gr.clone()
    return params


def run_case(case, timer):
    tensors, size, device = case["tensors"], case["numel"] // case["tensors"], case["device"]
    ours = fusedopt.optim.Adam(_params(tensors, size, device, 0), lr=1e-3)
    theirs = torch.optim.Adam(_params(tensors, size, device, 0), lr=1e-3, fused=True)
    times = timer({"torch fused": theirs.step, "fusedopt": ours.step}, max_seconds=10.0)
    return dict(case, times=times, fusedopt="fusedopt", bytes=case["numel"] * 28)
