"""Float64 reference implementations: the oracles of the test suite.

Written from the textbook formulas with plain float64 tensor arithmetic. They never call
fusedopt's kernels or torch.optim, so agreement with both is evidence, not an echo.
"""
from .optim import adadelta_step, adagrad_step, adam_step, rmsprop_step, sgd_step

__all__ = ["adam_step", "sgd_step", "rmsprop_step", "adagrad_step", "adadelta_step"]

from .batchnorm import batch_norm_backward, batch_norm_forward  # noqa: E402

__all__ += ["batch_norm_forward", "batch_norm_backward"]

from . import depthwise  # noqa: E402,F401  (depthwise.depthwise_conv2d, ...: float64 depthwise conv)

__all__ += ["depthwise"]
