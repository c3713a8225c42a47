"""Fused layers: drop-in replacements for torch.nn modules, backed by fusedopt's kernels."""
# BATCHNORM-EXPORTS

from .depthwise import DepthwiseConv2d, DepthwiseSeparableConv2d  # noqa: E402,F401

from . import functional  # noqa: E402,F401
