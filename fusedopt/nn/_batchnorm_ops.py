"""Fake implementations of the batch norm ops (csrc/batchnorm), and the autograd formula
of batch_norm_backward.

The forward ops' autograd is C++ (csrc/batchnorm/batchnorm_autograd.cpp, for host
time); their single backward runs our kernel, fusedopt::batch_norm_backward. Double
backward (the autograd formula of batch_norm_backward, below) differentiates the same
backward formula written with plain torch ops: a rare path (gradient penalties,
gradgradcheck) that is not fused on purpose.
"""
import torch

from ._checks import same_device

ops = torch.ops.fusedopt


def _math_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _like_input(input):
    """The strides the kernels give their outputs (batchnorm_ops.h): the input's when its
    planes or its channel rows are contiguous, contiguous otherwise."""
    if input.is_contiguous() or input.movedim(1, -1).is_contiguous():
        return torch.empty_like(input)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _channels(input, dtype):
    return input.new_empty((input.shape[1],), dtype=dtype)


# ---------------------------------------------------------------- fakes

@torch.library.register_fake("fusedopt::batch_norm_train")
def _train_fake(input, weight, bias, residual, relu, eps, running_mean=None, running_var=None, momentum=None,
                num_batches_tracked=None):
    same_device("batch_norm_train", input, weight=weight, bias=bias, residual=residual, running_mean=running_mean,
                running_var=running_var, num_batches_tracked=num_batches_tracked)
    acc = _math_dtype(input.dtype)
    return _like_input(input), _channels(input, acc), _channels(input, acc)


@torch.library.register_fake("fusedopt::batch_norm_eval")
def _eval_fake(input, mean, var, weight, bias, residual, relu, eps):
    same_device("batch_norm_eval", input, mean=mean, var=var, weight=weight, bias=bias, residual=residual)
    return _like_input(input)


@torch.library.register_fake("fusedopt::batch_norm_update_stats_")
def _update_fake(running_mean, running_var, mean, var, momentum, num_batches_tracked, count):
    same_device("batch_norm_update_stats_", running_mean, running_var=running_var, mean=mean, var=var,
                num_batches_tracked=num_batches_tracked)
    return None


@torch.library.register_fake("fusedopt::batch_norm_backward")
def _backward_fake(grad_out, input, weight, mean, var, output, relu, training, eps, output_mask):
    same_device("batch_norm_backward", input, grad_out=grad_out, weight=weight, mean=mean, var=var, output=output)
    pdt = weight.dtype if weight is not None else _math_dtype(input.dtype)
    gi = _like_input(input) if output_mask[0] else input.new_empty((0,))
    gw = _channels(input, pdt) if output_mask[1] else input.new_empty((0,), dtype=mean.dtype)
    gb = _channels(input, pdt) if output_mask[2] else input.new_empty((0,), dtype=mean.dtype)
    gr = _like_input(input) if output_mask[3] else input.new_empty((0,))
    return gi, gw, gb, gr


@torch.library.register_fake("fusedopt::batch_norm_stats")
def _stats_fake(input):
    acc = _math_dtype(input.dtype)
    return _channels(input, acc), _channels(input, acc)


@torch.library.register_fake("fusedopt::batch_norm_backward_reduce")
def _reduce_fake(grad_out, input, mean, output):
    return _channels(input, torch.float64), _channels(input, torch.float64)


@torch.library.register_fake("fusedopt::batch_norm_backward_elemt")
def _elemt_fake(grad_out, input, weight, mean, var, output, sum_dy, sum_dy_xmu, count, eps):
    return _like_input(input)


# ---------------------------------------------------------------- autograd

def _per_channel(t, ndim):
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def backward_formula(grad_out, input, weight, mean, var, output, relu, training, eps):
    """batch_norm_backward written with plain torch ops (math dtype): the function that
    double backward differentiates, and nothing else."""
    acc = mean.dtype
    nd = input.dim()
    dims = [0] + list(range(2, nd))
    n = input.numel() // input.shape[1]
    d = grad_out.to(acc)
    if relu:
        d = d * (output > 0).to(acc)
    x = input.to(acc)
    istd = torch.rsqrt(var.to(acc) + eps)
    xmu = x - _per_channel(mean, nd)
    sum_dy = d.sum(dims)
    sum_dy_xmu = (d * xmu).sum(dims)
    a = istd if weight is None else istd * weight.to(acc)
    if training:
        gi = (d - _per_channel(sum_dy / n, nd) - xmu * _per_channel(istd * istd * sum_dy_xmu / n, nd)) * _per_channel(a, nd)
    else:
        gi = d * _per_channel(a, nd)
    return gi, sum_dy_xmu * istd, sum_dy, d


def _bwd_setup(ctx, inputs, output):
    grad_out, input, weight, mean, var, out, relu, training, eps, output_mask = inputs
    ctx.set_materialize_grads(False)
    ctx.args = (relu, training, eps, list(output_mask))
    ctx.save_for_backward(grad_out, input, weight, mean, var, out)


def _bwd_backward(ctx, *ggs):
    grad_out, input, weight, mean, var, out = ctx.saved_tensors
    relu, training, eps, mask = ctx.args
    need = ctx.needs_input_grad
    leaves = [grad_out, input, weight, mean, var]
    wanted = [i for i, t in enumerate(leaves) if t is not None and need[i]]
    result = [None] * 10
    used = [(i, g) for i, g in enumerate(ggs) if g is not None and mask[i] and g.numel() > 0]
    if not wanted or not used:
        return tuple(result)
    with torch.enable_grad():
        det = [t.detach().requires_grad_(i in wanted) if t is not None else None for i, t in enumerate(leaves)]
        outs = backward_formula(det[0], det[1], det[2], det[3], det[4], out, relu, training, eps)
        grads = torch.autograd.grad([outs[i] for i, _ in used], [det[i] for i in wanted],
                                    [g.to(outs[i].dtype) for i, g in used], allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = None if g is None else g.to(leaves[i].dtype)
    return tuple(result)


torch.library.register_autograd("fusedopt::batch_norm_backward", _bwd_backward, setup_context=_bwd_setup)
