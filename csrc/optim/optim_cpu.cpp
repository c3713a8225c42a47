// CPU backend of the optimizer ops: check the lists, read the host scalars, bump the
// step counters, then hand raw pointers to the kernel variant this CPU supports.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../common/cpu_features.h"
#include "../common/tensor_lists.h"
#include "optim_kernels.h"
#include "optim_ops.h"

namespace fusedopt {
namespace optim {
namespace {

struct CpuBackend {
  template <class Hyper>
  static void run(const char* op, at::TensorList params, at::TensorList grads, const std::vector<StateList>& states,
                  at::TensorList masters, at::TensorList steps, bool has_steps, const at::Tensor& lr, OptSeed seed,
                  const OptTensor& grad_scale, const OptTensor& found_inf, const Hyper& h) {
    GroupView view(op, params, grads, states, masters, steps, grad_scale.has_value());
    TORCH_CHECK_VALUE(!has_steps || steps.size() == params.size(), op, ": got ", params.size(), " params but ",
                      steps.size(), " state_steps");
    const double lr_v = read_scalar(lr, op, "lr");
    // GradScaler: found_inf set skips the whole update, step counters included.
    if (found_inf.has_value() && read_scalar(*found_inf, op, "found_inf") != 0.0) return;
    const double inv_scale = grad_scale.has_value() ? 1.0 / read_scalar(*grad_scale, op, "grad_scale") : 1.0;
    if (view.empty()) return;
    for (const auto& r : view.refs())
      if (r.step) *r.step += 1.0f;
    const GroupArgs args{view.dtype(), view.refs(), lr_v, inv_scale, grad_scale.has_value(), seed.has_value(),
                         static_cast<uint64_t>(seed.value_or(0))};
    (cpu_simd() != CpuSimd::Scalar ? avx2::run<Hyper> : scalar::run<Hyper>)(args, h);
    view.write_back();
  }
};

}  // namespace
}  // namespace optim
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  FO_REGISTER_OPTIM_OPS(m, fusedopt::optim::CpuBackend);
}
