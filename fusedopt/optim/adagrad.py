"""Fused Adagrad."""
import torch

from ._base import FusedOptimizerMixin, as_float, call_op, lr_tensor, new_step, state_dtype


class Adagrad(FusedOptimizerMixin, torch.optim.Adagrad):
    """Drop-in for torch.optim.Adagrad. As in torch, state (`step`, `sum`) exists for
    every param from construction; fp16/bf16 params keep a float32 `sum`."""

    def _state_keys(self, group):
        return ("sum",)

    def _init_state(self, group, p, state):
        # Only for params added after construction; torch's constructor makes the rest.
        state["step"] = new_step(p)
        state["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format,
                                       dtype=state_dtype(p))

    def _launch(self, group, plain, params, grads, states, steps, first_step, tail):
        call_op(
            "adagrad_", plain, params, grads, states[0], steps, lr_tensor(group["lr"]), as_float(group["lr_decay"]),
            as_float(group["weight_decay"]), as_float(group["eps"]), group["maximize"], *tail,
        )
