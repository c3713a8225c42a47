"""fusedopt.convert_model: swap torch layers for their fusedopt twins in a built model."""
from torch import nn


def _converters():
    from . import nn as fnn

    # Exact types only: subclasses (including fusedopt's own, which subclass torch's)
    # may change behaviour we would not preserve.
    return {
        nn.BatchNorm1d: fnn.BatchNorm1d.from_torch,
        nn.BatchNorm2d: fnn.BatchNorm2d.from_torch,
        nn.BatchNorm3d: fnn.BatchNorm3d.from_torch,
        nn.Conv2d: _depthwise_or_none,
    }


def _depthwise_or_none(conv):
    from . import nn as fnn

    if conv.groups != conv.in_channels:
        return None  # not depthwise
    return fnn.DepthwiseConv2d.from_torch(conv)


def convert_model(model: nn.Module) -> nn.Module:
    """Replaces, in place, every nn.BatchNorm1d/2d/3d with fusedopt.nn.BatchNorm1d/2d/3d
    and every depthwise nn.Conv2d (groups == in_channels) with fusedopt.nn.DepthwiseConv2d, keeping parameters, buffers, training mode, device and
    dtype. Returns the model (or the replacement, if the model itself is such a layer)."""
    convert = _converters().get(type(model))
    if convert is not None:
        new = convert(model)
        if new is not None:
            return new
    for name, child in model.named_children():
        new = convert_model(child)
        if new is not child:
            setattr(model, name, new)
    return model


__all__ = ["convert_model"]
