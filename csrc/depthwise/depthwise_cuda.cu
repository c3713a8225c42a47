// CUDA backend of the depthwise ops. On an H200 (benchmarks/results/NVIDIA_H200/s12_full)
// every depthwise CUDA test passed (float32 grid against the float64 reference and
// torch, fp16/bf16, gradcheck, double backward, opcheck), memcheck and racecheck were
// clean; at 0.18-1.00x torch there, these kernels are not tuned yet.
//
// Same checks and layout rule as the CPU (depthwise_ops.h), same formulas
// (depthwise_math.h): one thread per output element (forward) or input element
// (grad_input, a gather, so no atomics); grad_weight and grad_bias as per-block
// partials over a fixed split of the (n, oh, ow) positions, reduced in a fixed order
// by a second kernel, so they are deterministic. Element indices are 32-bit where the
// tensor allows. The grad_weight partials of kernels up to 5x5 take one walk for all
// taps, in channels_last with a warp across channels (weight_grad_partial_cl_kernel),
// stepping positions without divisions (PositionWalk, depthwise_math.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/cuda_index.cuh"
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
// I: uint32_t where the tensor has under 2^31 elements (64-bit divisions cost more than
// a 3x3 tap loop), else int64_t.
template <class I>
__device__ __forceinline__ void decompose(I idx, bool cl, I C, I H, I W, int64_t& n, int64_t& c, int64_t& h,
                                          int64_t& w) {
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

template <class T, class Acc, class I>
__global__ void forward_kernel(const T* __restrict__ in, const T* __restrict__ w, const T* __restrict__ bias,
                               T* __restrict__ out, Geom g, Strides4 is, bool cl, I total) {
  const I O = static_cast<I>(num_out_channels(g)), OH = static_cast<I>(g.OH), OW = static_cast<I>(g.OW);
  for (I idx = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<I>(gridDim.x) * blockDim.x) {
    int64_t n, o, oh, ow;
    decompose<I>(idx, cl, O, OH, OW, n, o, oh, ow);
    Acc acc = forward_element<Acc>(in, is, w, g, n, o, oh, ow);
    if (bias != nullptr) acc += to_acc<Acc>(bias[o]);
    out[idx] = static_cast<T>(acc);
  }
}

template <class T, class Acc, class I>
__global__ void input_grad_kernel(const T* __restrict__ go, const T* __restrict__ w, T* __restrict__ gi, Geom g,
                                  Strides4 gs, bool cl, I total) {
  const I C = static_cast<I>(g.C), H = static_cast<I>(g.H), W = static_cast<I>(g.W);
  for (I idx = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<I>(gridDim.x) * blockDim.x) {
    int64_t n, c, ih, iw;
    decompose<I>(idx, cl, C, H, W, n, c, ih, iw);
    gi[idx] = static_cast<T>(input_grad_element<Acc>(go, gs, w, g, n, c, ih, iw));
  }
}

// (t / KW, t % KW) of taps t < Kmax, without divisions: inside a position loop they were
// 64-bit divisions per tap and position (the compiler cannot hoist a division by a
// runtime value out of a loop that might not run).
template <int Kmax>
__device__ __forceinline__ void tap_coords(const Geom& g, int64_t (&ti)[Kmax], int64_t (&tj)[Kmax]) {
  int64_t i = 0, j = 0;
#pragma unroll
  for (int t = 0; t < Kmax; ++t) {
    ti[t] = i;
    tj[t] = j;
    if (++j == g.KW) j = 0, ++i;
  }
}

// Adds this thread's share of output channel o's grad_weight partials: over the
// positions pos, pos + step, ... < end, each tap's term into acc[t] (t < num_taps) and
// grad_out into acc[Kmax] (the bias's). The NCHW and channels_last partial kernels
// differ only in how they hand out the positions.
template <int Kmax, class T, class Acc>
__device__ __forceinline__ void add_weight_grad_terms(const T* in, const T* go, const Geom& g, const Strides4& is,
                                                      const Strides4& gs, int64_t o, int64_t pos, int64_t step,
                                                      int64_t end, Acc (&acc)[Kmax + 1]) {
  const int64_t K = num_taps(g);
  int64_t ti[Kmax], tj[Kmax];
  tap_coords<Kmax>(g, ti, tj);
  const T* in_c = in + in_channel(g, o) * is.c;
  const T* go_o = go + o * gs.c;
  for (PositionWalk p = position_walk(g, pos, step); pos < end; pos += step, advance(p)) {
    const Acc dy = to_acc<Acc>(go_o[p.n * gs.n + p.oh * gs.h + p.ow * gs.w]);
    const T* plane = in_c + p.n * is.n;
#pragma unroll
    for (int t = 0; t < Kmax; ++t)
      if (t < K) acc[t] += weight_grad_term<Acc>(dy, plane, is, g, p.oh, p.ow, ti[t], tj[t]);
    acc[Kmax] += dy;
  }
}

// weight_grad_partial_kernel for kernels of at most Kmax taps: one walk over the
// block's positions feeds every tap's sum and the bias's (registers), instead of one
// walk per tap. Each thread adds the same terms in the same order, and the tree is the
// same, so the partials are the generic kernel's, bit for bit.
template <class T, class Acc, int Kmax>
__global__ void weight_grad_partial_taps_kernel(const T* __restrict__ in, const T* __restrict__ go,
                                                Acc* __restrict__ part, Geom g, Strides4 is, Strides4 gs,
                                                int64_t positions) {
  __shared__ Acc red[kThreads];
  const int64_t o = blockIdx.y, B = gridDim.x, K = num_taps(g);
  Acc acc[Kmax + 1];
#pragma unroll
  for (int t = 0; t <= Kmax; ++t) acc[t] = Acc(0);
  add_weight_grad_terms<Kmax>(in, go, g, is, gs, o, blockIdx.x * int64_t(blockDim.x) + threadIdx.x, B * blockDim.x,
                              positions, acc);
#pragma unroll
  for (int t = 0; t <= Kmax; ++t) {
    if (t < K || t == Kmax) {  // the same for the whole block, so the barriers are safe
      red[threadIdx.x] = acc[t];
      __syncthreads();
      for (int s = kThreads / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
      }
      const int64_t slot = t == Kmax ? K : t;
      if (threadIdx.x == 0) part[(o * (K + 1) + slot) * B + blockIdx.x] = red[0];
      __syncthreads();
    }
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
  const T* in_c = in + in_channel(g, o) * is.c;
  const T* go_o = go + o * gs.c;
  for (int64_t t = 0; t <= K; ++t) {
    Acc acc = Acc(0);
    const int64_t step = B * blockDim.x, i = t / g.KW, j = t % g.KW;
    int64_t pos = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    for (PositionWalk p = position_walk(g, pos, step); pos < positions; pos += step, advance(p)) {
      const Acc dy = to_acc<Acc>(go_o[p.n * gs.n + p.oh * gs.h + p.ow * gs.w]);
      acc += t < K ? weight_grad_term<Acc>(dy, in_c + p.n * is.n, is, g, p.oh, p.ow, i, j) : dy;
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

// channels_last grad_weight partials. The kernels above give each block one channel and
// walk positions across its threads, so in channels_last every lane of a warp reads its
// own line. Here a warp's lanes are kClChannels consecutive output channels at one
// position (one line of grad_out, one of input), and threadIdx.y is a position lane.
// Block (b, tile) walks slice b of the positions, [P*b/B, P*(b+1)/B): lane y takes every
// kClLanes-th from the slice's start + y, and a fixed tree over the lanes gives
// part[(o * (K+1) + t) * B + b]. Deterministic (the split depends on the shape only);
// its bits differ from the generic kernels' (another summation order).
constexpr int kClChannels = 32, kClLanes = 8;

int64_t cl_partials(int64_t positions) {
  return std::clamp<int64_t>((positions + kThreads - 1) / kThreads, 1, 256);
}

template <class T, class Acc, int Kmax>
__global__ void weight_grad_partial_cl_kernel(const T* __restrict__ in, const T* __restrict__ go,
                                              Acc* __restrict__ part, Geom g, Strides4 is, Strides4 gs,
                                              int64_t positions) {
  __shared__ Acc red[kClLanes][kClChannels];
  const int64_t O = num_out_channels(g), K = num_taps(g), B = gridDim.x, b = blockIdx.x;
  const int64_t o = int64_t(blockIdx.y) * kClChannels + threadIdx.x;
  const int64_t p1 = positions * (b + 1) / B;
  Acc acc[Kmax + 1];
#pragma unroll
  for (int t = 0; t <= Kmax; ++t) acc[t] = Acc(0);
  // No return for o >= O: every thread reaches the barriers below.
  if (o < O) add_weight_grad_terms<Kmax>(in, go, g, is, gs, o, positions * b / B + threadIdx.y, kClLanes, p1, acc);
#pragma unroll
  for (int t = 0; t <= Kmax; ++t) {
    if (t < K || t == Kmax) {  // the same for the whole block, so the barriers are safe
      red[threadIdx.y][threadIdx.x] = acc[t];
      __syncthreads();
      for (int s = kClLanes / 2; s > 0; s >>= 1) {
        if (threadIdx.y < s) red[threadIdx.y][threadIdx.x] += red[threadIdx.y + s][threadIdx.x];
        __syncthreads();
      }
      if (threadIdx.y == 0 && o < O) part[(o * (K + 1) + (t == Kmax ? K : t)) * B + b] = red[0][threadIdx.x];
      __syncthreads();
    }
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
    launch_indexed(total, [&](auto n) {
      forward_kernel<T, Acc, decltype(n)><<<grid_for(total), kThreads, 0, stream>>>(
          static_cast<const T*>(a.input), static_cast<const T*>(a.weight), static_cast<const T*>(a.bias),
          static_cast<T*>(a.output), g, is, a.channels_last, n);
    });
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
        launch_indexed(total, [&](auto n) {
          input_grad_kernel<T, Acc, decltype(n)><<<grid_for(total), kThreads, 0, stream>>>(
              go, static_cast<const T*>(a.weight), static_cast<T*>(a.grad_input), g, gs, a.channels_last, n);
        });
      }
    }
    if (a.grad_weight == nullptr && a.grad_bias == nullptr) return;
    const int64_t positions = g.N * g.OH * g.OW;
    const bool cl = a.channels_last && K <= 25;
    // The split depends only on the shape, never on the device: same bits everywhere.
    const int64_t B = cl ? cl_partials(positions)
                         : std::max<int64_t>(1, std::min<int64_t>((positions + kThreads - 1) / kThreads, kMaxPartials));
    const auto acc_type = std::is_same_v<Acc, double> ? at::kDouble : at::kFloat;
    at::Tensor part = at::empty({O * (K + 1) * B}, like.options().dtype(acc_type));
    const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(O));
    const auto* in = static_cast<const T*>(a.input);
    Acc* p = part.mutable_data_ptr<Acc>();
    if (cl) {
      const dim3 cl_grid(static_cast<unsigned>(B), static_cast<unsigned>((O + kClChannels - 1) / kClChannels));
      const dim3 cl_block(kClChannels, kClLanes);
      if (K <= 9)
        weight_grad_partial_cl_kernel<T, Acc, 9><<<cl_grid, cl_block, 0, stream>>>(in, go, p, g, is, gs, positions);
      else
        weight_grad_partial_cl_kernel<T, Acc, 25><<<cl_grid, cl_block, 0, stream>>>(in, go, p, g, is, gs, positions);
    } else if (K <= 9)
      weight_grad_partial_taps_kernel<T, Acc, 9><<<grid, kThreads, 0, stream>>>(in, go, p, g, is, gs, positions);
    else if (K <= 25)
      weight_grad_partial_taps_kernel<T, Acc, 25><<<grid, kThreads, 0, stream>>>(in, go, p, g, is, gs, positions);
    else
      weight_grad_partial_kernel<T, Acc><<<grid, kThreads, 0, stream>>>(in, go, p, g, is, gs, positions);
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
// The Python wrapper picks it only when asked (fused=True): on the H200 it ran at
// 0.09-0.27x torch against the unfused path's 0.20-0.50x. opcheck passed there; its
// test against the float64 reference has not run on a GPU yet.
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
