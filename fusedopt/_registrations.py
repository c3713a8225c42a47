"""Fake (meta) implementations of every fusedopt op, for torch.compile, FakeTensor and
opcheck. The in-place optimizer ops return nothing, so their fakes check only what
needs no data: that the lists line up."""
import torch


def _same_length(op, params, *lists):
    for lst in lists:
        if len(lst) not in (0, len(params)):
            raise ValueError(f"fusedopt.{op}: got {len(params)} params but a list of {len(lst)}")


@torch.library.register_fake("fusedopt::adam_")
def _adam_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
               weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, master_params, stochastic_rounding_seed, grad_scale=None,
               found_inf=None):
    _same_length("adam_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params)


@torch.library.register_fake("fusedopt::sgd_")
def _sgd_fake(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize,
              is_first_step, master_params, stochastic_rounding_seed, grad_scale=None, found_inf=None):
    _same_length("sgd_", params, grads, momentum_buffers, master_params)


@torch.library.register_fake("fusedopt::rmsprop_")
def _rmsprop_fake(params, grads, square_avgs, momentum_buffers, grad_avgs, state_steps, lr, alpha, eps,
                  weight_decay, momentum, centered, maximize, master_params, stochastic_rounding_seed, grad_scale=None, found_inf=None):
    _same_length("rmsprop_", params, grads, square_avgs, momentum_buffers, grad_avgs, state_steps, master_params)


@torch.library.register_fake("fusedopt::adagrad_")
def _adagrad_fake(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                  master_params, stochastic_rounding_seed, grad_scale=None, found_inf=None):
    _same_length("adagrad_", params, grads, state_sums, state_steps, master_params)


@torch.library.register_fake("fusedopt::adadelta_")
def _adadelta_fake(params, grads, square_avgs, acc_deltas, state_steps, lr, rho, eps, weight_decay, maximize,
                   master_params, stochastic_rounding_seed, grad_scale=None, found_inf=None):
    _same_length("adadelta_", params, grads, square_avgs, acc_deltas, state_steps, master_params)
