"""Fused SGD with momentum, dampening and Nesterov."""
import torch

from ._base import FusedOptimizerMixin, as_float, call_op, lr_tensor, zeros_state


class SGD(FusedOptimizerMixin, torch.optim.SGD):
    """Drop-in for torch.optim.SGD. As in torch, the momentum buffer starts as a copy of
    the first (decayed) grad, and `momentum_buffer` is the only state; fp16/bf16 params
    keep a float32 buffer. `foreach`/`fused` are accepted and ignored."""

    def _state_keys(self, group):
        return ("momentum_buffer" if group["momentum"] != 0 else None,)

    def _init_state(self, group, p, state):
        if group["momentum"] != 0:
            state["momentum_buffer"] = zeros_state(p)  # overwritten by the first step

    def _launch(self, group, plain, params, grads, states, steps, first_step, tail):
        call_op(
            "sgd_", plain, params, grads, states[0], lr_tensor(group["lr"]), as_float(group["momentum"]),
            as_float(group["dampening"]), as_float(group["weight_decay"]), group["nesterov"], group["maximize"],
            first_step, *tail,
        )
