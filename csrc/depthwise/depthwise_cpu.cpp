// CPU backend of the depthwise ops: the shared checks (depthwise_ops.h), then the
// kernel variant this CPU supports.
#include <torch/library.h>

#include "../common/cpu_features.h"
#include "../common/cpu_memory.h"
#include "depthwise_ops.h"

namespace fusedopt {
namespace depthwise {
namespace {

at::Tensor depthwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  return forward_op(input, weight, bias, stride, padding, dilation, [](const ForwardArgs& a) {
    (cpu_simd() == CpuSimd::Avx2 ? avx2::forward : scalar::forward)(a);
  }, advise_huge_pages);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  return backward_op(grad_out, input, weight, stride, padding, dilation, output_mask, [](const BackwardArgs& a) {
    (cpu_simd() == CpuSimd::Avx2 ? avx2::backward : scalar::backward)(a);
  }, advise_huge_pages);
}

}  // namespace
}  // namespace depthwise
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("depthwise_conv2d", &fusedopt::depthwise::depthwise_conv2d_cpu);
  m.impl("depthwise_conv2d_backward", &fusedopt::depthwise::depthwise_conv2d_backward_cpu);
}
