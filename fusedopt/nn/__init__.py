"""Fused layers: drop-in replacements for torch.nn modules, backed by fusedopt's kernels."""
# BATCHNORM-EXPORTS

# DEPTHWISE-EXPORTS

from . import functional  # noqa: E402,F401
