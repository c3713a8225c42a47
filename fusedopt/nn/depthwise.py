"""Depthwise and depthwise-separable 2-D convolution backed by fusedopt's kernels.

`DepthwiseConv2d` is an nn.Conv2d(groups=in_channels) (same parameters and state_dict)
whose forward runs fusedopt.depthwise_conv2d. `DepthwiseSeparableConv2d` follows Keras'
SeparableConv2D: a depthwise conv without bias (depth multiplier M) then a 1x1 pointwise
conv with bias; its pointwise step is a matmul through ATen.

padding_mode other than 'zeros' is supported the way nn.Conv2d does it: the input is
padded with F.pad (torch's kernel) and the depthwise kernel then runs unpadded.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import same_device

__all__ = ["DepthwiseConv2d", "DepthwiseSeparableConv2d", "depthwise_conv2d", "depthwise_separable_conv2d"]

_OPS = torch.ops.fusedopt


# ---------------------------------------------------------------- op registrations

def _memory_format(input):
    # The C++ layout rule (depthwise_ops.h): channels_last only when that is the input's
    # contiguous layout and plain NCHW is not.
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _out_extent(n, k, s, d, lo, hi):
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


def _check(input, weight, stride, padding, dilation):
    torch._check(input.dim() == 4, lambda: f"fusedopt.depthwise_conv2d: expected a 4-D input, got {input.dim()}-D")
    torch._check(weight.dim() == 4 and weight.shape[1] == 1,
                 lambda: f"fusedopt.depthwise_conv2d: weight must have shape (C*M, 1, kH, kW), got {tuple(weight.shape)}")
    torch._check(len(stride) == 2 and len(padding) == 4 and len(dilation) == 2,
                 lambda: "fusedopt.depthwise_conv2d: stride, padding, dilation must have 2, 4, 2 values")
    oh = _out_extent(input.shape[2], weight.shape[2], stride[0], dilation[0], padding[0], padding[1])
    ow = _out_extent(input.shape[3], weight.shape[3], stride[1], dilation[1], padding[2], padding[3])
    return input.shape[0], weight.shape[0], oh, ow


@torch.library.register_fake("fusedopt::depthwise_conv2d")
def _depthwise_conv2d_fake(input, weight, bias, stride, padding, dilation):
    same_device("depthwise_conv2d", input, weight=weight, bias=bias)
    n, o, oh, ow = _check(input, weight, stride, padding, dilation)
    return input.new_empty((n, o, oh, ow)).contiguous(memory_format=_memory_format(input))


@torch.library.register_fake("fusedopt::depthwise_conv2d_backward")
def _depthwise_conv2d_backward_fake(grad_out, input, weight, stride, padding, dilation, output_mask):
    same_device("depthwise_conv2d_backward", input, grad_out=grad_out, weight=weight)
    _, o, _, _ = _check(input, weight, stride, padding, dilation)
    gi = input.new_empty(input.shape).contiguous(memory_format=_memory_format(input)) if output_mask[0] else input.new_empty((0,))
    gw = weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,))
    gb = input.new_empty((o,)) if output_mask[2] else input.new_empty((0,))
    return gi, gw, gb


@torch.library.register_fake("fusedopt::depthwise_separable_conv2d")
def _separable_fake(input, depthwise_weight, pointwise_weight, bias, stride, padding, dilation):
    same_device("depthwise_separable_conv2d", input, depthwise_weight=depthwise_weight,
                pointwise_weight=pointwise_weight, bias=bias)
    n, _, oh, ow = _check(input, depthwise_weight, stride, padding, dilation)
    return input.new_empty((n, pointwise_weight.shape[0], oh, ow)).contiguous(memory_format=_memory_format(input))


@torch.library.register_fake("fusedopt::depthwise_separable_conv2d_backward")
def _separable_backward_fake(grad_out, input, depthwise_weight, pointwise_weight, stride, padding, dilation,
                             output_mask):
    same_device("depthwise_separable_conv2d_backward", input, grad_out=grad_out, depthwise_weight=depthwise_weight,
                pointwise_weight=pointwise_weight)
    _check(input, depthwise_weight, stride, padding, dilation)
    shapes = [input.shape, depthwise_weight.shape, pointwise_weight.shape, (pointwise_weight.shape[0],)]
    grads = [input.new_empty(shape if want else (0,)) for shape, want in zip(shapes, output_mask)]
    grads[0] = grads[0].contiguous(memory_format=_memory_format(input)) if output_mask[0] else grads[0]
    return tuple(grads)


# The ops' autograd is C++, csrc/depthwise/depthwise_autograd.cpp (host time).


# ---------------------------------------------------------------- functional

def _pair(v, name):
    if isinstance(v, int):
        return [v, v]
    v = [int(x) for x in v]
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v}")
    return v


def _torch_same_padding(kernel, dilation):
    # torch's padding='same': total d*(k-1), the odd extra pixel at the bottom/right.
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def _padding4(padding, kernel, stride, dilation):
    """(top, bottom, left, right) from F.conv2d-style padding or an explicit 4-tuple."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions (as in torch); "
                                 "use DepthwiseSeparableConv2d's Keras 'same' or explicit padding")
            return _torch_same_padding(kernel, dilation)
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    if isinstance(padding, int):
        return [padding] * 4
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    if len(padding) == 4:
        return padding
    raise ValueError(f"padding must have 1, 2 or 4 values (top, bottom, left, right), got {padding}")


def _keras_same_padding(size, kernel, stride, dilation):
    # TensorFlow 'SAME': output ceil(n/s); the odd extra pixel goes bottom/right.
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def depthwise_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise conv2d, like F.conv2d(input, weight, bias, stride, padding, dilation, groups=C).

    weight: (C*M, 1, kH, kW). padding: an int, a pair, 'same' (torch's), 'valid', or a
    4-tuple (top, bottom, left, right)."""
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("depthwise_conv2d: input and weight must be tensors")
    if weight.dim() != 4:
        raise ValueError(f"depthwise_conv2d: weight must have shape (C*M, 1, kH, kW), got {tuple(weight.shape)}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    pad = _padding4(padding, weight.shape[2:], stride, dilation)
    return _conv(input, weight, bias, stride, pad, dilation)


def depthwise_separable_conv2d(input, depthwise_weight, pointwise_weight, bias=None, stride=1, padding=0, dilation=1,
                               fused=None):
    """Depthwise conv (no bias) then a 1x1 conv with pointwise_weight (out, C*M, 1, 1) and bias.

    padding as depthwise_conv2d, except 'same' follows Keras/TensorFlow (works with stride).
    fused: True runs the fused op (image by image, the intermediate never written out;
    float32/float64), False the depthwise op then a matmul. None (default) picks the
    fused op where it measured faster: NCHW float32/float64 on the CPU, outside
    autocast. (In channels_last it measured slower on 14x14 planes; on CUDA it has not
    been measured.)"""
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if padding == "same":
        if not isinstance(input, torch.Tensor) or input.dim() != 4:
            raise ValueError("depthwise_separable_conv2d: expected a 4-D input (N, C, H, W)")
        pad = _keras_same_padding(input.shape[2:], depthwise_weight.shape[2:], stride, dilation)
    else:
        pad = _padding4(padding, depthwise_weight.shape[2:], stride, dilation)
    if fused is None:
        fused = (isinstance(input, torch.Tensor) and input.device.type == "cpu"
                 and input.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
                 and _memory_format(input) == torch.contiguous_format)
    if fused:
        return _OPS.depthwise_separable_conv2d(input, depthwise_weight, pointwise_weight, bias, list(stride), list(pad),
                                               list(dilation))
    mid = _conv(input, depthwise_weight, None, stride, pad, dilation)
    return _pointwise(mid, pointwise_weight, bias)


def _conv(input, weight, bias, stride, pad, dilation):
    """The depthwise op, in the autocast dtype when autocast is on for the input's device:
    torch.autocast runs convolutions in lower precision, but a custom op is on none of
    its lists, so the cast happens here."""
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
        input, weight = input.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
    return _OPS.depthwise_conv2d(input, weight, bias, list(stride), list(pad), list(dilation))


def _pointwise(x, weight, bias):
    if weight.dim() != 4 or weight.shape[2:] != (1, 1) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"pointwise weight must have shape (out, {x.shape[1]}, 1, 1), got {tuple(weight.shape)}")
    n, c, h, w = x.shape
    w2 = weight.reshape(weight.shape[0], c)
    if _memory_format(x) == torch.channels_last:
        # (N*H*W, C) rows are contiguous in channels_last: one GEMM, output stays channels_last.
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        y = torch.addmm(bias, rows, w2.t()) if bias is not None else rows @ w2.t()
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)
    y = torch.matmul(w2, x.reshape(n, c, h * w))
    if bias is not None:
        y = y + bias[:, None]
    return y.reshape(n, -1, h, w)


# ---------------------------------------------------------------- modules

class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d(in_channels, out_channels, ..., groups=in_channels) on fusedopt's kernels.

    out_channels must be a multiple of in_channels (depth multiplier out/in)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        if in_channels <= 0 or out_channels <= 0 or out_channels % in_channels != 0:
            raise ValueError(f"DepthwiseConv2d: out_channels ({out_channels}) must be a positive multiple of "
                             f"in_channels ({in_channels})")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=in_channels, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)

    def forward(self, input):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            pad = [0, 0, 0, 0]
        else:
            pad = _padding4(self.padding, self.kernel_size, self.stride, self.dilation)
        return _conv(input, self.weight, self.bias, self.stride, pad, self.dilation)

    @classmethod
    def from_torch(cls, conv):
        """A DepthwiseConv2d with the configuration and (copied) weights of a depthwise nn.Conv2d."""
        if not isinstance(conv, nn.Conv2d) or conv.groups != conv.in_channels:
            raise ValueError("DepthwiseConv2d.from_torch needs an nn.Conv2d with groups == in_channels")
        if conv.out_channels % conv.in_channels != 0:
            raise ValueError("DepthwiseConv2d.from_torch: out_channels must be a multiple of in_channels")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        new.load_state_dict(conv.state_dict())
        new.train(conv.training)
        return new


class DepthwiseSeparableConv2d(nn.Module):
    """Keras SeparableConv2D: `.depthwise` (DepthwiseConv2d, C -> C*depth_multiplier, no bias)
    then `.pointwise` (nn.Conv2d 1x1, with bias). padding: int/tuple, 'valid', or 'same'
    with TensorFlow's rule (output ceil(H/stride), odd extra pixel at the bottom/right)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, depth_multiplier=1,
                 bias=True, device=None, dtype=None, fused=None):
        super().__init__()
        self.fused = fused  # see depthwise_separable_conv2d
        if depth_multiplier < 1:
            raise ValueError(f"DepthwiseSeparableConv2d: depth_multiplier must be >= 1, got {depth_multiplier}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        self.padding = padding
        mid = in_channels * depth_multiplier
        self.depthwise = DepthwiseConv2d(in_channels, mid, kernel_size, stride=stride,
                                         padding=0 if isinstance(padding, str) else padding, dilation=dilation,
                                         bias=False, device=device, dtype=dtype)
        self.pointwise = nn.Conv2d(mid, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, input):
        dw = self.depthwise
        pad = self.padding if isinstance(self.padding, str) else _padding4(dw.padding, dw.kernel_size, dw.stride, dw.dilation)
        return depthwise_separable_conv2d(input, dw.weight, self.pointwise.weight, self.pointwise.bias, dw.stride, pad,
                                          dw.dilation, fused=self.fused)
