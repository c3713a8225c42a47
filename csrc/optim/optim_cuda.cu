// CUDA backend of the optimizer ops: the same checks as the CPU backend
// (tensor_lists.h), the same formulas (update_math.h), walked by the multi-tensor
// engine (multi_tensor_apply.cuh).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "../common/dispatch.h"
#include "../common/multi_tensor_apply.cuh"
#include "../common/tensor_lists.h"
#include "optim_ops.h"
#include "update_math.h"

namespace fusedopt {
namespace optim {
namespace {

using cuda::ChunkPtrs;
using cuda::LaunchMeta;
using cuda::walk_chunk;

// A scalar argument that may live on the device (read inside the kernel, so that the
// launch can be captured in a CUDA graph) or on the host (passed by value).
struct DeviceScalar {
  const float* ptr = nullptr;
  double value = 0.0;
  __device__ double get() const { return ptr ? static_cast<double>(*ptr) : value; }
};

class ScalarArgs {
 public:
  DeviceScalar take(const OptTensor& t, double fallback) {
    DeviceScalar s;
    s.value = fallback;
    if (!t.has_value()) return s;
    if (t->device().is_cpu()) {
      s.value = t->item<double>();
    } else {
      holders_.push_back(t->to(c10::ScalarType::Float).contiguous());
      s.ptr = holders_.back().data_ptr<float>();
    }
    return s;
  }

 private:
  std::vector<at::Tensor> holders_;  // keeps float32 copies alive until the launches are queued
};

// One chunk of one tensor: per-tensor coefficients from the device scalars, then the
// optimizer's update over every element.
template <class Op, class T, class S>
struct OptimFunctor {
  typename Op::Hyper h;
  DeviceScalar lr, grad_scale, found_inf;
  bool store_grad, stochastic;
  uint64_t seed;

  __device__ void operator()(const LaunchMeta& m, int slot, int64_t start) const {
    if (found_inf.get() != 0.0) return;
    // Steps are bumped by a later kernel, so every chunk sees the same count.
    const double step = m.step[slot] ? static_cast<double>(*m.step[slot]) + 1.0 : 0.0;
    const auto c = Op::template coeffs<S>(h, StepScalars{lr.get(), step, 1.0 / grad_scale.get()});
    const ChunkPtrs<T, S> q(m, slot, start);
    // The tensor's index in the whole call keys its random stream, as on the CPU.
    const cuda::ParamStore out{stochastic, stochastic ? tensor_key(seed, m.tensor_index[slot]) : 0u, start};
    walk_chunk<T, S>(q.p, q.g, q.s[0], q.s[1], q.s[2], q.master, q.n, store_grad, out,
                     [&](S& p, S& g, S& s0, S& s1, S& s2) { Op::update(p, g, s0, s1, s2, c); });
  }
};

struct CudaBackend {
  template <class Hyper>
  static void run(const char* op, at::TensorList params, at::TensorList grads, const std::vector<StateList>& states,
                  at::TensorList masters, at::TensorList steps, bool has_steps, const at::Tensor& lr, OptSeed seed,
                  const OptTensor& grad_scale, const OptTensor& found_inf, const Hyper& h) {
    using Op = typename OpFor<Hyper>::type;
    GroupView view(op, params, grads, states, masters, steps, grad_scale.has_value());
    TORCH_CHECK_VALUE(!has_steps || steps.size() == params.size(), op, ": got ", params.size(), " params but ",
                      steps.size(), " state_steps");
    if (view.empty()) return;
    check_scalar_arg(lr, op, "lr", view.device(), /*allow_cpu=*/true);
    check_scalar_arg(grad_scale, op, "grad_scale", view.device(), true);
    check_scalar_arg(found_inf, op, "found_inf", view.device(), true);
    const c10::cuda::CUDAGuard guard(view.device());

    ScalarArgs scalars;
    const DeviceScalar lr_s = scalars.take(lr, 0.0);
    const DeviceScalar scale_s = scalars.take(grad_scale, 1.0);
    const DeviceScalar inf_s = scalars.take(found_inf, 0.0);
    if (inf_s.ptr == nullptr && inf_s.value != 0.0) return;  // a host-side found_inf: skip outright

    dispatch_dtype(view.dtype(), [&](auto t, auto s) {
      using T = decltype(t);
      using S = decltype(s);
      cuda::multi_tensor_apply(view.refs(), OptimFunctor<Op, T, S>{h, lr_s, scale_s, inf_s, grad_scale.has_value(),
                                                                   seed.has_value(),
                                                                   static_cast<uint64_t>(seed.value_or(0))});
    });
    if (has_steps) cuda::bump_steps(view.refs(), inf_s.ptr);
    view.write_back();
  }
};

}  // namespace
}  // namespace optim
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  FO_REGISTER_OPTIM_OPS(m, fusedopt::optim::CudaBackend);
}
