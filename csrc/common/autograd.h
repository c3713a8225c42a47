#pragma once
// Helpers of the C++ autograd kernels (csrc/*/*_autograd.cpp). Those kernels exist for
// host time: torch.library.register_autograd (Python) cost 15-20 us per op call, as much
// as torch's whole GPU layer on small shapes (20-40 us on the H200 run).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <optional>

#include "optional_tensor.h"

namespace fusedopt {

inline std::optional<at::Tensor> opt_tensor(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// ctx->needs_input_grad counts only the tensor arguments that were given (the graph's
// edges); this maps it back to argument order. given[i]: argument i was a tensor.
template <size_t N>
std::array<bool, N> needs_input_grad(torch::autograd::AutogradContext* ctx, const std::array<bool, N>& given) {
  std::array<bool, N> out{};
  size_t edge = 0;
  for (size_t i = 0; i < N; ++i)
    if (given[i]) out[i] = ctx->needs_input_grad(edge++);
  return out;
}

// Calls a backward op from a backward formula. Without create_graph, below autograd:
// nothing would be recorded, and the op's autograd kernel (a Python one for double
// backward, or torch's not-implemented fallback) would only cost host time. With it,
// through autograd, so that a second derivative is either right or refused.
template <class Sig, class... A>
auto call_backward_op(const c10::TypedOperatorHandle<Sig>& op, A&&... args) {
  if (!at::GradMode::is_enabled()) {
    at::AutoDispatchBelowADInplaceOrView below;
    return op.call(std::forward<A>(args)...);
  }
  return op.call(std::forward<A>(args)...);
}

// The typed handle of fusedopt::<name>, looked up once per call site.
template <class Sig>
c10::TypedOperatorHandle<Sig> fusedopt_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

}  // namespace fusedopt
