#pragma once
// The names of every fusedopt op (schemas in registration.cpp). Kernels shared by all
// ops (sparse rejection, version bumps of mutated inputs) are registered for each name.
namespace fusedopt {
constexpr const char* kAllOps[] = {
    // optimizers (csrc/optim)
    "adam_", "sgd_", "rmsprop_", "adagrad_", "adadelta_",
    // batch norm (csrc/batchnorm): BATCHNORM-OPS

    // depthwise conv (csrc/depthwise)
    "depthwise_conv2d", "depthwise_conv2d_backward",

};
}  // namespace fusedopt
