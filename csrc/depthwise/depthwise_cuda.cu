// CUDA backend of the depthwise ops. NOT YET RUN ON A GPU: the development machine has
// none, so these kernels are only compiled here (CI compiles them too); the CUDA tests
// (tests/nn/test_depthwise.py, `device` fixture) are what will exercise them on a GPU.
//
// Same checks and layout rule as the CPU (depthwise_ops.h), same formulas
// (depthwise_math.h): one thread per output element (forward) or input element
// (grad_input, a gather, so no atomics); grad_weight and grad_bias as per-block
// partials over a fixed split of the (n, oh, ow) positions, reduced in a fixed order
// by a second kernel, so they are deterministic. Indices are 64-bit.
#include <ATen/core/Tensor.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/dispatch.h"
#include "depthwise_math.h"
#include "depthwise_ops.h"
#include "separable_ops.h"

namespace fusedopt {
namespace depthwise {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxPartials = 64;  // blocks per output channel for grad_weight

Strides4 strides_of(bool channels_last, int64_t C, int64_t H, int64_t W) {
  return channels_last ? Strides4{H * W * C, 1, W * C, C} : Strides4{C * H * W, H * W, W, 1};
}

// (n, c, h, w) of the element at offset idx of a contiguous tensor in either layout.
__device__ __forceinline__ void decompose(int64_t idx, bool cl, int64_t C, int64_t H, int64_t W, int64_t& n,
                                          int64_t& c, int64_t& h, int64_t& w) {
  if (cl) {
    c = idx % C, idx /= C;
    w = idx % W, idx /= W;
    h = idx % H, n = idx / H;
  } else {
    w = idx % W, idx /= W;
    h = idx % H, idx /= H;
    c = idx % C, n = idx / C;
  }
}

int64_t grid_for(int64_t total) { return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20)); }

template <class T, class Acc>
__global__ void forward_kernel(const T* __restrict__ in, const T* __restrict__ w, const T* __restrict__ bias,
                               T* __restrict__ out, Geom g, Strides4 is, bool cl, int64_t total) {
  const int64_t O = num_out_channels(g);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, o, oh, ow;
    decompose(idx, cl, O, g.OH, g.OW, n, o, oh, ow);
    Acc acc = forward_element<Acc>(in, is, w, g, n, o, oh, ow);
    if (bias != nullptr) acc += to_acc<Acc>(bias[o]);
    out[idx] = static_cast<T>(acc);
  }
}

template <class T, class Acc>
__global__ void input_grad_kernel(const T* __restrict__ go, const T* __restrict__ w, T* __restrict__ gi, Geom g,
                                  Strides4 gs, bool cl, int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, ih, iw;
    decompose(idx, cl, g.C, g.H, g.W, n, c, ih, iw);
    gi[idx] = static_cast<T>(input_grad_element<Acc>(go, gs, w, g, n, c, ih, iw));
  }
}

// Block (b, o) sums, for each tap and for the bias, the terms of the positions
// b*blockDim + tid + k*B*blockDim; a fixed shared-memory tree then gives one partial per
// block: part[(o * (K+1) + t) * B + b].
template <class T, class Acc>
__global__ void weight_grad_partial_kernel(const T* __restrict__ in, const T* __restrict__ go, Acc* __restrict__ part,
                                           Geom g, Strides4 is, Strides4 gs, int64_t positions) {
  __shared__ Acc red[kThreads];
  const int64_t o = blockIdx.y, B = gridDim.x, K = num_taps(g);
  for (int64_t t = 0; t <= K; ++t) {
    Acc acc = Acc(0);
    for (int64_t pos = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; pos < positions; pos += B * blockDim.x) {
      const int64_t ow = pos % g.OW, oh = (pos / g.OW) % g.OH, n = pos / (g.OW * g.OH);
      if (t < K)
        acc += weight_grad_term<Acc>(in, is, go, gs, g, n, o, oh, ow, t / g.KW, t % g.KW);
      else
        acc += to_acc<Acc>(go[n * gs.n + o * gs.c + oh * gs.h + ow * gs.w]);
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) part[(o * (K + 1) + t) * B + blockIdx.x] = red[0];
    __syncthreads();
  }
}

template <class T, class Acc>
__global__ void weight_grad_final_kernel(const Acc* __restrict__ part, T* __restrict__ gw, T* __restrict__ gb,
                                         int64_t O, int64_t K, int64_t B) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= O * (K + 1)) return;
  Acc s = Acc(0);
  for (int64_t b = 0; b < B; ++b) s += part[e * B + b];
  const int64_t o = e / (K + 1), t = e % (K + 1);
  if (t < K && gw != nullptr) gw[o * K + t] = static_cast<T>(s);
  if (t == K && gb != nullptr) gb[o] = static_cast<T>(s);
}

void run_forward(const ForwardArgs& a) {
  const Geom& g = a.g;
  const int64_t total = g.N * num_out_channels(g) * g.OH * g.OW;
  const Strides4 is = strides_of(a.channels_last, g.C, g.H, g.W);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using Acc = decltype(s);
    forward_kernel<T, Acc><<<grid_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(a.input), static_cast<const T*>(a.weight), static_cast<const T*>(a.bias),
        static_cast<T*>(a.output), g, is, a.channels_last, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void run_backward(const BackwardArgs& a, const at::Tensor& like) {
  const Geom& g = a.g;
  const int64_t O = num_out_channels(g), K = num_taps(g);
  const Strides4 is = strides_of(a.channels_last, g.C, g.H, g.W);
  const Strides4 gs = strides_of(a.channels_last, O, g.OH, g.OW);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  TORCH_CHECK_VALUE(O <= 65535 || (a.grad_weight == nullptr && a.grad_bias == nullptr),
                    "fusedopt.depthwise_conv2d_backward: grad_weight on CUDA supports at most 65535 output channels "
                    "(one grid row each), got ", O);
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using Acc = decltype(s);
    const auto* go = static_cast<const T*>(a.grad_out);
    if (a.grad_input != nullptr) {
      const int64_t total = g.N * g.C * g.H * g.W;
      if (total > 0) {
        input_grad_kernel<T, Acc><<<grid_for(total), kThreads, 0, stream>>>(
            go, static_cast<const T*>(a.weight), static_cast<T*>(a.grad_input), g, gs, a.channels_last, total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (a.grad_weight == nullptr && a.grad_bias == nullptr) return;
    const int64_t positions = g.N * g.OH * g.OW;
    // The split depends only on the shape, never on the device: same bits everywhere.
    const int64_t B = std::max<int64_t>(1, std::min<int64_t>((positions + kThreads - 1) / kThreads, kMaxPartials));
    const auto acc_type = std::is_same_v<Acc, double> ? at::kDouble : at::kFloat;
    at::Tensor part = at::empty({O * (K + 1) * B}, like.options().dtype(acc_type));
    weight_grad_partial_kernel<T, Acc><<<dim3(unsigned(B), unsigned(O)), kThreads, 0, stream>>>(
        static_cast<const T*>(a.input), go, part.mutable_data_ptr<Acc>(), g, is, gs, positions);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t slots = O * (K + 1);
    weight_grad_final_kernel<T, Acc><<<unsigned((slots + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        part.const_data_ptr<Acc>(), static_cast<T*>(a.grad_weight), static_cast<T*>(a.grad_bias), O, K, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  return forward_op(input, weight, bias, stride, padding, dilation, run_forward, [](const at::Tensor&) {});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  return backward_op(
      grad_out, input, weight, stride, padding, dilation, output_mask,
      [&](const BackwardArgs& a) { run_backward(a, input); }, [](const at::Tensor&) {});
}

// The fused separable op on CUDA: the same image-by-image body, images in stream order.
// Never run on a GPU (none was lent); the Python wrapper picks it only when asked
// (fused=True), as nothing measured it faster than the unfused path there.
struct CudaSeparable {
  template <class F>
  static void for_images(int64_t n, const F& f) {
    f(int64_t(0), n);
  }
  static void dw_forward(const ForwardArgs& a) { run_forward(a); }
  static void dw_backward(const BackwardArgs& a, const at::Tensor& like) { run_backward(a, like); }
  static void sum_images(const at::Tensor& part, at::Tensor& out) {
    at::Tensor flat = out.view({-1});
    at::sum_out(flat, part, 0);
  }
};

at::Tensor depthwise_separable_conv2d_cuda(const at::Tensor& input, const at::Tensor& dw_weight,
                                           const at::Tensor& pw_weight, const std::optional<at::Tensor>& bias,
                                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  return separable_forward<CudaSeparable>(input, dw_weight, pw_weight, bias, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> depthwise_separable_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 4> output_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  return separable_backward<CudaSeparable>(grad_out, input, dw_weight, pw_weight, stride, padding, dilation,
                                           output_mask);
}

}  // namespace
}  // namespace depthwise
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  m.impl("depthwise_separable_conv2d", &fusedopt::depthwise::depthwise_separable_conv2d_cuda);
  m.impl("depthwise_separable_conv2d_backward", &fusedopt::depthwise::depthwise_separable_conv2d_backward_cuda);
  m.impl("depthwise_conv2d", &fusedopt::depthwise::depthwise_conv2d_cuda);
  m.impl("depthwise_conv2d_backward", &fusedopt::depthwise::depthwise_conv2d_backward_cuda);
}
