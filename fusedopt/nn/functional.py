"""Functional forms of the fused layers, mirroring torch.nn.functional."""
from .batchnorm import batch_norm_impl as _batch_norm_impl  # noqa: E402


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm on fusedopt's kernels (running buffers updated in
    place in training mode)."""
    return _batch_norm_impl(input, running_mean, running_var, weight, bias, None, False, training, momentum, eps)


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, residual=None, training=False,
                    momentum=0.1, eps=1e-5):
    """relu(batch_norm(input) + residual) in one kernel (residual optional)."""
    return _batch_norm_impl(input, running_mean, running_var, weight, bias, residual, True, training, momentum, eps)

from .depthwise import depthwise_conv2d, depthwise_separable_conv2d  # noqa: E402,F401
