"""Fused Adam and AdamW: torch.optim's constructors and state, one op per (device, dtype)."""
import torch

from ._base import FusedOptimizerMixin, as_float, call_op, lr_tensor, new_step, zeros_state


class _AdamImpl(FusedOptimizerMixin):
    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq" if group["amsgrad"] else None)

    def _init_state(self, group, p, state):
        state["step"] = new_step(p)
        state["exp_avg"] = zeros_state(p)
        state["exp_avg_sq"] = zeros_state(p)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_state(p)

    def _launch(self, group, plain, params, grads, states, steps, first_step, tail):
        beta1, beta2 = group["betas"]
        call_op(
            "adam_", plain, params, grads, states[0], states[1], states[2], steps, lr_tensor(group["lr"]),
            as_float(beta1), as_float(beta2), as_float(group["weight_decay"]), as_float(group["eps"]),
            group["amsgrad"], group["maximize"], group.get("decoupled_weight_decay", False), *tail,
        )


class Adam(_AdamImpl, torch.optim.Adam):
    """Drop-in for torch.optim.Adam: the same constructor, options, errors and state_dict.

    `foreach` and `fused` are accepted and ignored (every step runs fusedopt's fused
    kernel); `capturable` is accepted on every device; `differentiable=True` is rejected.
    fp16/bf16 params keep float32 moments.
    """


class AdamW(_AdamImpl, torch.optim.AdamW):
    """Drop-in for torch.optim.AdamW (Adam with decoupled weight decay); see Adam."""
