"""Float64 batch norm from the textbook formulas: the oracle of tests/nn/test_batchnorm.py.

Channels are moved to the front and everything else flattened: x -> (C, n). Never calls
fusedopt's kernels or torch's batch norm.
"""
import torch


def _flat(t):
    return t.double().movedim(1, 0).reshape(t.shape[1], -1)


def _unflat(t, like):
    shape = (like.shape[1], like.shape[0]) + tuple(like.shape[2:])
    return t.reshape(shape).movedim(0, 1)


def batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, training=True, momentum=0.1,
                       eps=1e-5, residual=None, relu=False):
    """Returns (out, new_running_mean, new_running_var), all float64.

    training: mean and biased variance of the batch normalise; the running buffers move
    towards mean and the *unbiased* variance by momentum. Eval: the running buffers
    normalise."""
    xf = _flat(x)
    n = xf.shape[1]
    new_rm = None if running_mean is None else running_mean.double().clone()
    new_rv = None if running_var is None else running_var.double().clone()
    if training:
        mean = xf.sum(1) / n
        var = ((xf - mean[:, None]) ** 2).sum(1) / n
        if new_rm is not None:
            new_rm = (1 - momentum) * new_rm + momentum * mean
            new_rv = (1 - momentum) * new_rv + momentum * var * n / (n - 1)
    else:
        mean, var = running_mean.double(), running_var.double()
    y = (xf - mean[:, None]) / torch.sqrt(var[:, None] + eps)
    if weight is not None:
        y = y * weight.double()[:, None]
    if bias is not None:
        y = y + bias.double()[:, None]
    out = _unflat(y, x)
    if residual is not None:
        out = out + residual.double()
    if relu:
        out = torch.where(out > 0, out, torch.zeros_like(out))
    return out, new_rm, new_rv


def batch_norm_backward(grad_out, x, weight=None, training=True, eps=1e-5, running_mean=None, running_var=None,
                        out=None):
    """Returns (grad_input, grad_weight, grad_bias, grad_residual) of batch_norm_forward,
    float64. out (the forward output) gives the relu mask when the forward had relu.

    With xhat = (x - mean) / sqrt(var + eps), in training (mean, var of the batch):
      dx = w / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat))
    in eval (mean, var constants): dx = w / sqrt(var + eps) * dy.
    dw = sum(dy * xhat), db = sum(dy)."""
    dy = grad_out.double()
    if out is not None:
        dy = torch.where(out.double() > 0, dy, torch.zeros_like(dy))
    xf, df = _flat(x), _flat(dy)
    n = xf.shape[1]
    if training:
        mean = xf.sum(1) / n
        var = ((xf - mean[:, None]) ** 2).sum(1) / n
    else:
        mean, var = running_mean.double(), running_var.double()
    std = torch.sqrt(var + eps)
    xhat = (xf - mean[:, None]) / std[:, None]
    w = torch.ones_like(mean) if weight is None else weight.double()
    if training:
        dx = (df - df.mean(1, keepdim=True) - xhat * (df * xhat).mean(1, keepdim=True)) * (w / std)[:, None]
    else:
        dx = df * (w / std)[:, None]
    return _unflat(dx, x), (df * xhat).sum(1), df.sum(1), dy
