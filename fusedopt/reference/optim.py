"""Optimizer updates in float64, one param at a time.

Each function updates `param` and the float64 tensors in `state` in place for one
step, given `grad`. State starts as an empty dict, as in torch.optim.
"""
import torch


def _check(param, grad):
    if param.dtype != torch.float64 or grad.dtype != torch.float64:
        raise TypeError("reference implementations take float64 tensors")


def adam_step(param, grad, state, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
              maximize=False, decoupled_weight_decay=False):
    """Adam (Kingma & Ba, 2015) with torch's options; AdamW is decoupled_weight_decay=True
    (Loshchilov & Hutter, 2019). amsgrad keeps the running maximum of the second moment."""
    _check(param, grad)
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param)
        state["exp_avg_sq"] = torch.zeros_like(param)
        state["max_exp_avg_sq"] = torch.zeros_like(param)
    state["step"] += 1
    t = state["step"]
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    m = state["exp_avg"] = beta1 * state["exp_avg"] + (1 - beta1) * g
    v = state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
    if amsgrad:
        v = state["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], v)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return param
