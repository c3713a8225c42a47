"""Timing and bandwidth measurement shared by every benchmark.

Candidates are timed interleaved (one run of each per round, in rotating order), so
that drift in clock speed or memory contention hits torch and fusedopt alike; the
median over rounds is reported. On CUDA each run is bracketed by CUDA events.
"""
import statistics
import time

import torch


def _timer(device):
    if device == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return run


def time_interleaved(fns, device="cpu", warmup=3, rounds=15, max_seconds=None):
    """fns: {name: zero-argument callable}. Returns {name: median seconds}.

    Stops early (but after at least 3 rounds) once max_seconds have passed."""
    run = _timer(device)
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    if device == "cuda":
        torch.cuda.synchronize()
    samples = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            samples[n].append(run(fns[n]))
        if max_seconds is not None and r >= 2 and time.perf_counter() - t_start > max_seconds:
            break
    return {n: statistics.median(s) for n, s in samples.items()}


def stream_bandwidth(device="cpu", numel=1 << 26):
    """The machine's in-place streaming bandwidth in GB/s, measured now: the best of
    a.add_(c) (12 bytes per element: two reads, one write) and a.mul_(s) (8 bytes),
    and on CUDA also b.copy_(a) (8 bytes). Returns (GB/s, how it was measured)."""
    a = torch.rand(numel, device=device)
    c = torch.rand(numel, device=device)
    b = torch.empty_like(a)
    candidates = {
        "a.add_(c)": (lambda: a.add_(c), 12),
        "a.mul_(s)": (lambda: a.mul_(1.0000001), 8),
    }
    if device == "cuda":
        candidates["b.copy_(a)"] = (lambda: b.copy_(a), 8)
    times = time_interleaved({k: v[0] for k, v in candidates.items()}, device=device, warmup=2, rounds=9)
    rates = {k: candidates[k][1] * numel / times[k] / 1e9 for k in candidates}
    best = max(rates, key=rates.get)
    return rates[best], f"{best} on {numel} float32 ({', '.join(f'{k} {v:.1f}' for k, v in rates.items())} GB/s)"
