"""Batch norm layers backed by fusedopt's kernels (csrc/batchnorm).

The modules subclass torch's, so constructor, parameters, buffers, state_dict keys,
input checks and repr are torch's; only the computation is ours. Inputs whose planes
(NCHW-style) or channel rows (channels_last, channels_last_3d) are not contiguous are
copied to a contiguous tensor by the op first.
"""
import inspect

import torch
from torch import nn

from . import _batchnorm_ops  # noqa: F401  (fakes and autograd of the ops)

_BN_TAKES_BIAS = "bias" in inspect.signature(nn.BatchNorm2d.__init__).parameters

ops = torch.ops.fusedopt


def _verify_batch_size(size):
    # torch.nn.functional's check, with torch's message.
    size_prods = size[0]
    for i in range(len(size) - 2):
        size_prods *= size[i + 2]
    if size_prods == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def _empty_batch(input, weight, bias):
    # What torch returns for an input without elements: no statistics, a graph that
    # still reaches weight and bias.
    out = input.clone()
    if weight is not None:
        out = out * weight[0]
    if bias is not None:
        out = out + bias[0]
    return out


def batch_norm_impl(input, running_mean, running_var, weight, bias, residual, relu, training, momentum, eps,
                    num_batches_tracked=None):
    """relu?(batch_norm(input) + residual?) with torch.nn.functional.batch_norm's
    semantics for statistics and running buffers. In training, num_batches_tracked (if
    given) is counted once the batch passed every check; momentum=None then means the
    cumulative average, 1 / num_batches_tracked, as in torch's modules."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"batch_norm: input must be a tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected an input of shape (N, C, *) with at least 2 dims, got {input.dim()}D")
    if residual is not None and residual.shape != input.shape:
        raise ValueError(f"batch_norm_relu: residual must have the input's shape {tuple(input.shape)}, "
                         f"got {tuple(residual.shape)}")
    if training:
        _verify_batch_size(input.size())
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must both be given or both be None")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.numel() != c:
            raise ValueError(f"batch_norm: {name} should contain {c} elements (one per channel of the input) "
                             f"not {t.numel()}")
    if input.numel() == 0:
        if training and num_batches_tracked is not None:
            num_batches_tracked.add_(1)  # torch counts an empty batch too
        out = _empty_batch(input, weight, bias)
        if residual is not None:
            out = out + residual
        return torch.relu(out) if relu else out
    if training:
        if running_mean is None:
            out = ops.batch_norm_train(input, weight, bias, residual, relu, eps)[0]
            if num_batches_tracked is not None:
                num_batches_tracked.add_(1)  # after the op's checks, as the op itself counts
            return out
        if momentum is None and num_batches_tracked is None:
            momentum = 0.0  # torch's modules: no counter, no cumulative average
        # One op: statistics, output, the counter and the running statistics.
        return ops.batch_norm_train(input, weight, bias, residual, relu, eps, running_mean, running_var,
                                    None if momentum is None else float(momentum), num_batches_tracked)[0]
    if running_mean is None:
        raise RuntimeError("batch_norm: running_mean must be defined in evaluation mode")
    return ops.batch_norm_eval(input, running_mean, running_var, weight, bias, residual, relu, eps)


class _FusedBatchNormMixin:
    """forward of torch's _BatchNorm, computed by fusedopt's ops."""

    _fused_relu = False

    def forward(self, input, residual=None):
        self._check_input_dim(input)
        # Counted inside batch_norm_impl, after the input passed its checks (torch counts
        # first, so a rejected batch still moves its counter).
        counter = self.num_batches_tracked if self.training and self.track_running_stats else None
        if self.training:
            bn_training = True
        else:
            bn_training = self.running_mean is None and self.running_var is None
        track = not self.training or self.track_running_stats
        return batch_norm_impl(
            input, self.running_mean if track else None, self.running_var if track else None, self.weight, self.bias,
            residual, self._fused_relu, bn_training, self.momentum, self.eps, counter,
        )

    @classmethod
    def from_torch(cls, module):
        """The fusedopt module of module's configuration, sharing its parameters and
        buffers (as torch's convert_sync_batchnorm does) and its training flag."""
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"{cls.__name__}.from_torch expects a torch batch norm module, got {type(module).__name__}")
        kwargs = {}
        if module.affine and _BN_TAKES_BIAS:  # torch >= 2.12: affine without a bias
            kwargs["bias"] = module.bias is not None
        new = cls._from_config(module, kwargs)
        new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        if hasattr(module, "qconfig"):
            new.qconfig = module.qconfig
        return new

    @classmethod
    def _from_config(cls, module, kwargs):
        with torch.device("meta"):  # replaced by module's tensors right after
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      **kwargs)
        return new


class BatchNorm1d(_FusedBatchNormMixin, nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on fusedopt's kernels: (N, C) or (N, C, L) input."""

    def forward(self, input):
        return super().forward(input)


class BatchNorm2d(_FusedBatchNormMixin, nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on fusedopt's kernels (NCHW or channels_last)."""

    def forward(self, input):
        return super().forward(input)


class BatchNorm3d(_FusedBatchNormMixin, nn.BatchNorm3d):
    """torch.nn.BatchNorm3d on fusedopt's kernels (NCDHW or channels_last_3d)."""

    def forward(self, input):
        return super().forward(input)


class BatchNormReLU2d(_FusedBatchNormMixin, nn.BatchNorm2d):
    """relu(BatchNorm2d(x) + residual) in one kernel, forward and backward; residual is
    optional. Same constructor, parameters and buffers as BatchNorm2d."""

    _fused_relu = True

    def forward(self, input, residual=None):
        return super().forward(input, residual)


def fold_bn_into_conv(conv, bn):
    """A new nn.Conv2d computing bn(conv(x)) of an eval-mode batch norm: the statistics
    and affine folded into the weight and bias (computed in float64)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"fold_bn_into_conv: conv must be an nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fold_bn_into_conv: bn must be a batch norm module, got {type(bn).__name__}")
    if bn.training:
        raise ValueError("fold_bn_into_conv: bn is in training mode; folding uses the running statistics, call bn.eval()")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn_into_conv: bn has no running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"fold_bn_into_conv: conv has {conv.out_channels} output channels but bn has "
                         f"{bn.num_features} features")
    w = conv.weight.detach()
    c = bn.num_features
    istd = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    scale = istd if bn.weight is None else bn.weight.detach().double() * istd
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    if conv.bias is not None:
        shift = shift + conv.bias.detach().double() * scale
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_((w.double() * scale.reshape(c, 1, 1, 1)).to(w.dtype))
        new.bias.copy_(shift.to(w.dtype))
    new.train(conv.training)
    return new
