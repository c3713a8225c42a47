"""Shared fixtures: devices (CUDA skipped with a reason where absent) and the CPU
kernel variants (AVX-512, AVX2 and scalar), so one machine checks each one it can run."""
import os

import pytest
import torch
from hypothesis import settings

import fusedopt

# CI replays the same fuzz examples on every run (a failure there is reproducible);
# local runs draw fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

CUDA_SKIP_REASON = (
    "no CUDA device here: the CUDA kernels were compiled but this run did not execute them "
    "(see benchmarks/gpu_check.sh and benchmarks/results/ for GPU runs)"
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)]),
]

def with_threads(threads, fn):
    """fn() with torch's intra-op thread count set to threads, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


# CPU kernel variants, narrowest first. AVX-512 has kernels of its own in the depthwise
# and batch norm families (the optimizers run their AVX2 kernels there), whose tests ask
# for it (simd_all).
SIMD_RANK = {"scalar": 0, "avx2": 1, "avx512": 2}


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def _run_with_simd(level):
    if SIMD_RANK[level] > SIMD_RANK[fusedopt.build_info()["simd_available"]]:
        pytest.skip(f"this CPU or build has no {level} kernels")
    previous = fusedopt._C._set_cpu_simd(level)
    yield level
    fusedopt._C._set_cpu_simd(previous)


@pytest.fixture(params=["avx2", "scalar"])
def simd(request):
    """Runs the test once per CPU kernel variant of the optimizers."""
    yield from _run_with_simd(request.param)


@pytest.fixture(params=["avx512", "avx2", "scalar"])
def simd_all(request):
    """Runs the test once per CPU kernel variant, AVX-512 included (depthwise, batch norm)."""
    yield from _run_with_simd(request.param)


def pytest_collection_modifyitems(config, items):
    """CUDA runs of a test that also takes a CPU kernel variant run once: the variant
    does not reach the GPU kernels, so its other values would repeat the same run."""
    best = fusedopt.build_info()["simd_available"]
    first = {"simd": "avx2" if best != "scalar" else "scalar", "simd_all": best}
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        repeat = params.get("device") == "cuda" and any(
            name in params and params[name] != value for name, value in first.items())
        (drop if repeat else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
