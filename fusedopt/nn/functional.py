"""Functional forms of the fused layers, mirroring torch.nn.functional."""
# BATCHNORM-FUNCTIONAL

# DEPTHWISE-FUNCTIONAL
