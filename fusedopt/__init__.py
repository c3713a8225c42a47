"""fusedopt: fused optimizers and layers for PyTorch, with hand-written CPU and CUDA kernels.

Change one import (torch.optim.Adam -> fusedopt.optim.Adam); the numbers stay torch's.
"""
from ._build_check import load_extension as _load_extension

_C = _load_extension()  # raises ImportError with instructions if missing or stale

from . import _registrations  # noqa: E402,F401  (fake implementations of the ops)
from . import nn, optim, reference  # noqa: E402,F401
from .convert import convert_model  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """How this fusedopt was built and what it runs on: CUDA kernels and archs, the torch
    it was built against, the CPU SIMD level in use, and the intra-op thread count."""
    return dict(_C.build_info())


__all__ = ["nn", "optim", "reference", "build_info", "convert_model"]
