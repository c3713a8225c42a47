"""Functional forms of the fused layers, mirroring torch.nn.functional."""
# BATCHNORM-FUNCTIONAL

from .depthwise import depthwise_conv2d, depthwise_separable_conv2d  # noqa: E402,F401
