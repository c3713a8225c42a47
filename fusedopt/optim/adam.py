"""Fused Adam and AdamW: torch.optim's constructors and state, one op per (device, dtype)."""
import torch

from ._base import FusedOptimizerMixin, as_float, lr_tensor, op, reject_differentiable, state_dtype


class _AdamImpl(FusedOptimizerMixin):
    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _init_state(self, group, p, state):
        # As torch.optim.Adam, except: the step sits on the param's device, and fp16/bf16
        # params get float32 moments.
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        zeros = lambda: torch.zeros_like(p, memory_format=torch.preserve_format, dtype=state_dtype(p))  # noqa: E731
        state["exp_avg"] = zeros()
        state["exp_avg_sq"] = zeros()
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros()

    def _launch(self, group, plain, params, grads, states, steps, grad_scale, found_inf):
        beta1, beta2 = group["betas"]
        op("adam_", plain)(
            params, grads, states[0], states[1], states[2] if group["amsgrad"] else [], steps,
            lr_tensor(group["lr"]), as_float(beta1), as_float(beta2), as_float(group["weight_decay"]),
            as_float(group["eps"]), group["amsgrad"], group["maximize"],
            group.get("decoupled_weight_decay", False), grad_scale, found_inf,
        )


class Adam(_AdamImpl, torch.optim.Adam):
    """Drop-in for torch.optim.Adam: the same constructor, options, errors and state_dict.

    `foreach` and `fused` are accepted and ignored: every step runs fusedopt's fused
    kernel. `capturable` is accepted on every device (our kernels read lr and step from
    tensors either way). `differentiable=True` is rejected.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        reject_differentiable("Adam", differentiable)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable, differentiable=False,
                         fused=fused, decoupled_weight_decay=decoupled_weight_decay)


class AdamW(_AdamImpl, torch.optim.AdamW):
    """Drop-in for torch.optim.AdamW (Adam with decoupled weight decay); see Adam."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        reject_differentiable("AdamW", differentiable)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, foreach=foreach, capturable=capturable, differentiable=False,
                         fused=fused)
