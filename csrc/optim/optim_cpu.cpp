// CPU op layer of the optimizers: check the lists, read the host scalars, bump the
// step counters, then hand raw pointers to the kernel variant this CPU supports.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../common/cpu_features.h"
#include "../common/tensor_lists.h"
#include "optim_kernels.h"

namespace fusedopt {
namespace optim {
namespace {

// GradScaler inputs, read on the host.
struct Scaler {
  double inv_scale = 1.0;
  bool skip = false;  // found_inf is set: leave everything, steps included, untouched
  bool unscale = false;
};

Scaler read_scaler(const char* op, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf) {
  Scaler s;
  if (found_inf.has_value()) s.skip = read_scalar(*found_inf, op, "found_inf") != 0.0;
  if (grad_scale.has_value()) {
    s.unscale = true;
    s.inv_scale = 1.0 / read_scalar(*grad_scale, op, "grad_scale");
  }
  return s;
}

void bump_steps(const GroupView& view) {
  for (const auto& r : view.refs()) *r.step += 1.0f;
}

// Picks the kernel variant for this CPU (avx2 is only linked in where it can be built).
template <class Hyper>
void launch(void (*avx2_kernel)(const GroupArgs&, const Hyper&), void (*scalar_kernel)(const GroupArgs&, const Hyper&),
            const GroupArgs& args, const Hyper& h) {
  (cpu_simd() == CpuSimd::Avx2 ? avx2_kernel : scalar_kernel)(args, h);
}

void adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
              at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr, double beta1,
              double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
              bool decoupled_weight_decay, const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  constexpr const char* op = "fusedopt.adam_";
  GroupView view(op, params, grads,
                 {{"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true},
                  {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad}},
                 state_steps, grad_scale.has_value());
  TORCH_CHECK_VALUE(view.empty() || state_steps.size() == params.size(), op, ": state_steps is required");
  const double lr_v = read_scalar(lr, op, "lr");
  const Scaler sc = read_scaler(op, grad_scale, found_inf);
  if (view.empty() || sc.skip) return;
  bump_steps(view);
  const AdamHyper h{beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay};
  const GroupArgs args{view.dtype(), view.refs(), lr_v, sc.inv_scale, sc.unscale};
  launch(avx2::adam, scalar::adam, args, h);
  view.write_back();
}

}  // namespace
}  // namespace optim
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("adam_", &fusedopt::optim::adam_cpu);
}
