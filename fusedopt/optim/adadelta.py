"""Fused Adadelta (torch has no fused Adadelta)."""
import torch

from ._base import FusedOptimizerMixin, as_float, call_op, lr_tensor, new_step, zeros_state


class Adadelta(FusedOptimizerMixin, torch.optim.Adadelta):
    """Drop-in for torch.optim.Adadelta: eps inside both square roots; state keys
    `step`, `square_avg`, `acc_delta`."""

    def _state_keys(self, group):
        return ("square_avg", "acc_delta")

    def _init_state(self, group, p, state):
        state["step"] = new_step(p)
        state["square_avg"] = zeros_state(p)
        state["acc_delta"] = zeros_state(p)

    def _launch(self, group, plain, params, grads, states, steps, first_step, tail):
        call_op(
            "adadelta_", plain, params, grads, states[0], states[1], steps, lr_tensor(group["lr"]),
            as_float(group["rho"]), as_float(group["eps"]), as_float(group["weight_decay"]), group["maximize"],
            *tail,
        )
