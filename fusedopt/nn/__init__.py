"""Fused layers: drop-in replacements for torch.nn modules, backed by fusedopt's kernels."""
from .batchnorm import (  # noqa: E402,F401
    BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormReLU2d, fold_bn_into_conv,
)
from .sync_batchnorm import SyncBatchNorm  # noqa: E402,F401

from .depthwise import DepthwiseConv2d, DepthwiseSeparableConv2d  # noqa: E402,F401

from . import functional  # noqa: E402,F401
