"""Fake (meta) implementations of every fusedopt op, for torch.compile, FakeTensor and
opcheck. The in-place optimizer ops return nothing, so their fakes only check what can
be checked without data."""
import torch


def _same_length(op, params, *lists):
    for lst in lists:
        if len(lst) not in (0, len(params)):
            raise ValueError(f"{op}: got {len(params)} params but a list of {len(lst)}")


@torch.library.register_fake("fusedopt::adam_")
def _adam_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
               weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, grad_scale=None, found_inf=None):
    _same_length("fusedopt.adam_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
