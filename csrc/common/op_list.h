#pragma once
// The names of every fusedopt op (schemas in registration.cpp). Kernels shared by all
// ops (sparse rejection, version bumps of mutated inputs) are registered for each name.
namespace fusedopt {
constexpr const char* kAllOps[] = {
    // optimizers (csrc/optim)
    "adam_", "sgd_", "rmsprop_", "adagrad_", "adadelta_",
    // batch norm (csrc/batchnorm)
    "batch_norm_train", "batch_norm_eval", "batch_norm_update_stats_", "batch_norm_backward", "batch_norm_stats",
    "batch_norm_backward_reduce", "batch_norm_backward_elemt",

    // depthwise conv (csrc/depthwise)
    "depthwise_conv2d", "depthwise_conv2d_backward", "depthwise_separable_conv2d",
    "depthwise_separable_conv2d_backward",

};
}  // namespace fusedopt
