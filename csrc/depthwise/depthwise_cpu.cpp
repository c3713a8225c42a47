// CPU backend of the depthwise ops: the shared checks (depthwise_ops.h), then the
// kernel variant this CPU supports.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/cpu_features.h"
#include "../common/cpu_memory.h"
#include "depthwise_cpu_partials.h"
#include "depthwise_ops.h"
#include "separable_ops.h"

namespace fusedopt {
namespace depthwise {
namespace {

// The kernel variant for this CPU (or the one tests chose with _set_cpu_simd).
void run_forward(const ForwardArgs& a) {
  switch (cpu_simd()) {
    case CpuSimd::Avx512: return avx512::forward(a);
    case CpuSimd::Avx2: return avx2::forward(a);
    default: return scalar::forward(a);
  }
}
void run_backward(const BackwardArgs& a) {
  switch (cpu_simd()) {
    case CpuSimd::Avx512: return avx512::backward(a);
    case CpuSimd::Avx2: return avx2::backward(a);
    default: return scalar::backward(a);
  }
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  return forward_op(input, weight, bias, stride, padding, dilation, run_forward, advise_huge_pages);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  return backward_op(grad_out, input, weight, stride, padding, dilation, output_mask, run_backward,
                     advise_huge_pages);
}

// The fused separable op on the CPU: threads over images, each with its own tiles.
struct CpuSeparable {
  template <class F>
  static void for_images(int64_t n, const F& f) {
    at::parallel_for(0, n, 1, f);  // the depthwise kernels inside then run on the calling thread
  }
  static void dw_forward(const ForwardArgs& a) { run_forward(a); }
  static void dw_backward(const BackwardArgs& a, const at::Tensor&) { run_backward(a); }
  // out[e] = sum over n of part[n][e], n in order.
  static void sum_images(const at::Tensor& part, at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES(part.scalar_type(), "fusedopt.sum_images", [&] {
      scalar_t* dst = out.mutable_data_ptr<scalar_t>();
      sum_parts_in_order(part.const_data_ptr<scalar_t>(), part.size(0), part.size(1),
                         [&](int64_t e, scalar_t v) { dst[e] = v; });
    });
  }
};

at::Tensor depthwise_separable_conv2d_cpu(const at::Tensor& input, const at::Tensor& dw_weight,
                                          const at::Tensor& pw_weight, const std::optional<at::Tensor>& bias,
                                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  return separable_forward<CpuSeparable>(input, dw_weight, pw_weight, bias, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> depthwise_separable_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 4> output_mask) {
  return separable_backward<CpuSeparable>(grad_out, input, dw_weight, pw_weight, stride, padding, dilation,
                                          output_mask);
}

}  // namespace
}  // namespace depthwise
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("depthwise_separable_conv2d", &fusedopt::depthwise::depthwise_separable_conv2d_cpu);
  m.impl("depthwise_separable_conv2d_backward", &fusedopt::depthwise::depthwise_separable_conv2d_backward_cpu);
  m.impl("depthwise_conv2d", &fusedopt::depthwise::depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &fusedopt::depthwise::depthwise_conv2d_backward_cpu);
}
