"""Shared fixtures: devices (CUDA skipped with a reason where absent) and the CPU
kernel variants (AVX2 and scalar), so one machine checks both."""
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

SIMD_LEVELS = ["avx2", "scalar"]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    """Runs the test once per CPU kernel variant (avx2 is clamped to scalar where unsupported)."""
    if request.param == "avx2" and fusedopt.build_info()["simd_available"] != "avx2":
        pytest.skip("this CPU or build has no AVX2 kernels")
    previous = fusedopt._C._set_cpu_simd(request.param)
    yield request.param
    fusedopt._C._set_cpu_simd(previous)
