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


def _grad(param, grad, weight_decay, maximize):
    g = -grad if maximize else grad
    return g + weight_decay * param if weight_decay != 0 else g


def sgd_step(param, grad, state, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False):
    """SGD; with momentum the buffer starts as the first grad (Sutskever et al., 2013 for
    Nesterov's variant)."""
    _check(param, grad)
    g = _grad(param, grad, weight_decay, maximize)
    if momentum != 0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = g.clone()
        else:
            state["momentum_buffer"] = momentum * state["momentum_buffer"] + (1 - dampening) * g
        buf = state["momentum_buffer"]
        g = g + momentum * buf if nesterov else buf
    param.sub_(lr * g)
    return param


def rmsprop_step(param, grad, state, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
    """RMSprop (Hinton's lecture 6e; Graves, 2013 for the centered form), eps added
    outside the square root."""
    _check(param, grad)
    if not state:
        state.update(step=0, square_avg=torch.zeros_like(param), momentum_buffer=torch.zeros_like(param),
                     grad_avg=torch.zeros_like(param))
    state["step"] += 1
    g = _grad(param, grad, weight_decay, maximize)
    state["square_avg"] = alpha * state["square_avg"] + (1 - alpha) * g * g
    var = state["square_avg"]
    if centered:
        state["grad_avg"] = alpha * state["grad_avg"] + (1 - alpha) * g
        var = var - state["grad_avg"] ** 2
    update = g / (var.sqrt() + eps)
    if momentum > 0:
        state["momentum_buffer"] = momentum * state["momentum_buffer"] + update
        update = state["momentum_buffer"]
    param.sub_(lr * update)
    return param


def adagrad_step(param, grad, state, *, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, maximize=False):
    """Adagrad (Duchi et al., 2011) with torch's learning-rate decay lr / (1 + (t-1) * decay)."""
    _check(param, grad)
    if not state:
        state.update(step=0, sum=torch.full_like(param, initial_accumulator_value))
    state["step"] += 1
    g = _grad(param, grad, weight_decay, maximize)
    clr = lr / (1 + (state["step"] - 1) * lr_decay)
    state["sum"] = state["sum"] + g * g
    param.sub_(clr * g / (state["sum"].sqrt() + eps))
    return param


def adadelta_step(param, grad, state, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    """Adadelta (Zeiler, 2012), eps inside both square roots."""
    _check(param, grad)
    if not state:
        state.update(step=0, square_avg=torch.zeros_like(param), acc_delta=torch.zeros_like(param))
    state["step"] += 1
    g = _grad(param, grad, weight_decay, maximize)
    state["square_avg"] = rho * state["square_avg"] + (1 - rho) * g * g
    delta = (state["acc_delta"] + eps).sqrt() / (state["square_avg"] + eps).sqrt() * g
    state["acc_delta"] = rho * state["acc_delta"] + (1 - rho) * delta * delta
    param.sub_(lr * delta)
    return param
