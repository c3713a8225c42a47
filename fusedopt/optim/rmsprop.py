"""Fused RMSprop (torch has no fused RMSprop)."""
import torch

from ._base import FusedOptimizerMixin, as_float, call_op, lr_tensor, new_step, zeros_state


class RMSprop(FusedOptimizerMixin, torch.optim.RMSprop):
    """Drop-in for torch.optim.RMSprop: eps outside the square root; state keys
    `step`, `square_avg`, `momentum_buffer` (momentum > 0), `grad_avg` (centered)."""

    def _state_keys(self, group):
        return ("square_avg", "momentum_buffer" if group["momentum"] > 0 else None,
                "grad_avg" if group["centered"] else None)

    def _init_state(self, group, p, state):
        state["step"] = new_step(p)
        state["square_avg"] = zeros_state(p)
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros_state(p)
        if group["centered"]:
            state["grad_avg"] = zeros_state(p)

    def _launch(self, group, plain, params, grads, states, steps, first_step, tail):
        call_op(
            "rmsprop_", plain, params, grads, states[0], states[1], states[2], steps, lr_tensor(group["lr"]),
            as_float(group["alpha"]), as_float(group["eps"]), as_float(group["weight_decay"]),
            as_float(group["momentum"]), group["centered"], group["maximize"], *tail,
        )
