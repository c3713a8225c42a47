#pragma once
// The names of every fusedopt op (schemas in registration.cpp). Kernels shared by all
// ops (sparse rejection, version bumps) are registered for each name here.
namespace fusedopt {
constexpr const char* kAllOps[] = {"adam_", "sgd_", "rmsprop_", "adagrad_", "adadelta_"};
}  // namespace fusedopt
