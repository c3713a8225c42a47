// CPU backend of the depthwise ops: the shared checks (depthwise_ops.h), then the
// kernel variant this CPU supports.
#include <torch/library.h>

#include "../common/cpu_features.h"
#include "depthwise_ops.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fusedopt {
namespace depthwise {
namespace {

// Large outputs come fresh from the OS, and faulting them in 4 KiB pages costs more
// than the convolution itself (about 14 ms for 58 MB on one core here). Asking for
// transparent huge pages on the untouched, 2 MiB-aligned interior cuts that cost
// several times; it changes no value. (torch does the same under THP_MEM_ALLOC_ENABLE.)
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 4 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advisory: failure is harmless
#else
  (void)t;
#endif
}

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
