// CUDA backend of the batch norm ops.
//
// Same checks and layouts as the CPU backend (batchnorm_ops.h), same formulas
// (batchnorm_math.h). Reductions are deterministic (no float atomics): blocks write
// per-slice partials, a second kernel merges them per channel, a warp per channel in a
// fixed order.
//   planes (NCHW): a grid of channels x slices of the channel's N * inner elements,
//     each thread taking every 256th element of its slice across plane ends (PlaneWalk);
//     per-thread Welford (sums in the backward), block merge (Chan) in double;
//   rows (channels_last): blocks of 32 channels x 8 row lanes over slices of rows.
// The slice counts aim at about four blocks per multiprocessor, since a grid of one
// block per channel left most of an H200 idle (batchnorm forward at 0.4x torch).
// Element passes are grid-stride loops, 32-bit indices where the tensor allows (the
// channel of an element costs a division), four elements per thread in flight.
//
// A training forward is three launches (partials, merge + coefficients, element pass),
// a training backward three more; the merge writes float parameters' grad_weight and
// grad_bias itself.
//
// benchmarks/results/NVIDIA_H200/README.md says which version of these kernels ran on
// an H200 and what it measured.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/cuda_index.cuh"
#include "../common/dispatch.h"
#include "batchnorm_math.h"
#include "batchnorm_ops.h"

namespace fusedopt {
namespace batchnorm {
namespace {

constexpr int kBlock = 256;
constexpr int kTileC = 32;  // channels per block (rows layout)
constexpr int kTileR = 8;   // row lanes per block (rows layout)

// d / n without the slow-path branch of IEEE float division, which kept the compiler
// from issuing a thread's next loads ahead of it. n is a small count, where __fdividef
// is within 2 ulp.
__device__ __forceinline__ float welford_quotient(float d, float n) { return __fdividef(d, n); }
__device__ __forceinline__ double welford_quotient(double d, double n) { return d / n; }

// Per-thread Welford in float for float math, merged in double across threads.
template <class S>
struct ThreadWelford {
  S n = 0, mean = 0, m2 = 0;
  __device__ void add(S x) {
    n += S(1);
    const S d = x - mean;
    mean += welford_quotient(d, n);
    m2 += d * (x - mean);
  }
};

// Merges every thread's (n, mean, m2) of a 1-D block into thread 0, in a fixed order.
__device__ void block_merge(double& n, double& mean, double& m2) {
  __shared__ double sn[kBlock], sm[kBlock], s2[kBlock];
  const int t = threadIdx.x;
  sn[t] = n;
  sm[t] = mean;
  s2[t] = m2;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (t < s) welford_merge(sn[t], sm[t], s2[t], sn[t + s], sm[t + s], s2[t + s]);
    __syncthreads();
  }
  n = sn[0];
  mean = sm[0];
  m2 = s2[0];
}

__device__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kBlock], sb[kBlock];
  const int t = threadIdx.x;
  sa[t] = a;
  sb[t] = b;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (t < s) {
      sa[t] += sa[t + s];
      sb[t] += sb[t + s];
    }
    __syncthreads();
  }
  a = sa[0];
  b = sb[0];
}

// ---------------------------------------------------------------- statistics

// use(load(next())) `count` times, in that order, with four loads issued before their
// uses: a reduction's running sums would otherwise leave each thread one load in flight.
// Same order as one at a time, so the same bits.
template <class Next, class Load, class Use>
__device__ __forceinline__ void in_fours(int64_t count, Next&& next, Load&& load, Use&& use) {
  for (; count >= 4; count -= 4) {
    const int64_t i0 = next(), i1 = next(), i2 = next(), i3 = next();
    const auto v0 = load(i0), v1 = load(i1), v2 = load(i2), v3 = load(i3);
    use(v0);
    use(v1);
    use(v2);
    use(v3);
  }
  for (; count > 0; --count) use(load(next()));
}

// use(load(i)) for i = first, first + step, ... < end, four loads in flight.
template <class Load, class Use>
__device__ __forceinline__ void strided_in_fours(int64_t i, int64_t end, int64_t step, Load&& load, Use&& use) {
  if (i >= end) return;
  in_fours(
      (end - i + step - 1) / step,
      [&] {
        const int64_t j = i;
        i += step;
        return j;
      },
      load, use);
}

// use(load(j)) for the elements j of channel c in slice blockIdx.y of gridDim.y: the
// channel's N planes of `inner` elements, cut into equal runs in plane order. Thread t
// takes the run's elements t, t + blockDim.x, ..., across plane ends, four loads in
// flight: walking one plane at a time left each thread of a 14x14 plane one load.
template <class Load, class Use>
__device__ __forceinline__ void for_plane_slice(const Geom& g, int64_t c, Load&& load, Use&& use) {
  const int64_t total = g.N * g.inner;
  const int64_t k0 = total * blockIdx.y / gridDim.y, k1 = total * (blockIdx.y + 1) / gridDim.y;
  const int64_t first = k0 + threadIdx.x;
  if (first >= k1) return;
  PlaneWalk w = plane_walk(g.C, g.inner, c, first, blockDim.x);
  in_fours(
      (k1 - first + blockDim.x - 1) / blockDim.x,  // this thread's elements
      [&] {
        const int64_t off = w.off;
        advance(w);
        return off;
      },
      load, use);
}

// Partials (n, mean, m2) of channel blockIdx.x over slice blockIdx.y.
template <class T, class S>
__global__ void stats_planes_partial_kernel(const T* __restrict__ x, Geom g, double* part) {
  const int64_t c = blockIdx.x;
  ThreadWelford<S> w;
  for_plane_slice(
      g, c, [&](int64_t j) { return static_cast<S>(x[j]); }, [&](S v) { w.add(v); });
  double wn = w.n, wm = w.mean, w2 = w.m2;
  block_merge(wn, wm, w2);
  if (threadIdx.x == 0) {
    double* out = part + (static_cast<int64_t>(blockIdx.y) * g.C + c) * 3;
    out[0] = wn;
    out[1] = wm;
    out[2] = w2;
  }
}

// Partials (n, mean, m2) of row slice blockIdx.y for 32 channels.
template <class T, class S>
__global__ void stats_rows_partial_kernel(const T* __restrict__ x, int64_t M, int64_t C, double* part) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileC + threadIdx.x;
  const int64_t slices = gridDim.y;
  const int64_t r0 = M * blockIdx.y / slices, r1 = M * (blockIdx.y + 1) / slices;
  ThreadWelford<S> w;
  if (c < C)
    strided_in_fours(
        r0 + threadIdx.y, r1, kTileR, [&](int64_t r) { return static_cast<S>(x[r * C + c]); },
        [&](S v) { w.add(v); });
  __shared__ double sn[kTileR][kTileC], sm[kTileR][kTileC], s2[kTileR][kTileC];
  sn[threadIdx.y][threadIdx.x] = w.n;
  sm[threadIdx.y][threadIdx.x] = w.mean;
  s2[threadIdx.y][threadIdx.x] = w.m2;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double n = 0, mean = 0, m2 = 0;
    for (int k = 0; k < kTileR; ++k) welford_merge(n, mean, m2, sn[k][threadIdx.x], sm[k][threadIdx.x], s2[k][threadIdx.x]);
    double* out = part + (static_cast<int64_t>(blockIdx.y) * C + c) * 3;
    out[0] = n;
    out[1] = mean;
    out[2] = m2;
  }
}

// The element pass's coefficients of a training forward, written by the merge kernel
// (one launch fewer). scale == nullptr: statistics only.
template <class S>
struct CoeffOut {
  const S* w;
  const S* b;
  double eps;
  S* scale;
  S* bias;
};

// The merge kernels take one warp per channel: lane l merges slices l, l + 32, ..., then
// the lanes merge in a fixed tree, so every run gives the same bits. One thread per
// channel walking up to 512 slices took 160 us on (8,32,112,112) channels_last (H200).
constexpr int kWarp = 32;

__device__ __forceinline__ int64_t warp_channel() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
}
__device__ __forceinline__ double shfl_down(double v, int d) { return __shfl_down_sync(0xffffffffu, v, d); }

template <class S>
__global__ void stats_final_kernel(const double* part, int slices, int64_t C, S* mean, S* var, CoeffOut<S> out) {
  const int64_t c = warp_channel();
  if (c >= C) return;  // the whole warp: c is the warp's
  const int lane = threadIdx.x % kWarp;
  double n = 0, m = 0, m2 = 0;
  for (int s = lane; s < slices; s += kWarp) {
    const double* p = part + (static_cast<int64_t>(s) * C + c) * 3;
    welford_merge(n, m, m2, p[0], p[1], p[2]);
  }
  for (int d = kWarp / 2; d > 0; d /= 2) {
    const double on = shfl_down(n, d), om = shfl_down(m, d), o2 = shfl_down(m2, d);
    if (lane < d) welford_merge(n, m, m2, on, om, o2);
  }
  if (lane != 0) return;
  mean[c] = static_cast<S>(m);
  var[c] = static_cast<S>(biased_var(n, m2));
  if (out.scale != nullptr) {  // from the stored (S) statistics, as fwd_coeffs_kernel
    const FwdCoeffs<S> k = fwd_coeffs<S>(mean[c], var[c], out.w, out.b, c, out.eps);
    out.scale[c] = k.scale;
    out.bias[c] = k.bias;
  }
}

// ---------------------------------------------------------------- forward element pass

template <class S>
__global__ void fwd_coeffs_kernel(const S* mean, const S* var, const S* w, const S* b, int64_t C, double eps, S* scale,
                                  S* bias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const FwdCoeffs<S> k = fwd_coeffs<S>(mean[c], var[c], w, b, c, eps);
  scale[c] = k.scale;
  bias[c] = k.bias;
}

// I: uint32_t where the tensor has under 2^31 elements (a 64-bit division per element
// costs more than the element's arithmetic), else int64_t.
template <class I>
__device__ __forceinline__ I channel_of(I i, const Geom& g) {
  return g.rows ? i % static_cast<I>(g.C) : (i / static_cast<I>(g.inner)) % static_cast<I>(g.C);
}

constexpr int kUnroll = 4;  // elements per thread per step: four loads in flight

// store(i, load(i)) for every element, kUnroll elements per thread per step with the
// step's loads issued before its stores.
template <class I, class Load, class Store>
__device__ __forceinline__ void for_elements(I numel, Load&& load, Store&& store) {
  const I step = static_cast<I>(gridDim.x) * blockDim.x * kUnroll;
  for (I base = static_cast<I>(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; base < numel; base += step) {
    decltype(load(base)) v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const I i = base + u * blockDim.x;
      if (i < numel) v[u] = load(i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const I i = base + u * blockDim.x;
      if (i < numel) store(i, v[u]);
    }
  }
}

template <class T, class S, class I>
__global__ void apply_kernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ res, bool relu, Geom g,
                             I numel, const S* mean, const S* scale, const S* bias) {
  for_elements<I>(
      numel, [&](I i) { return x[i]; },
      [&](I i, T xi) {
        const I c = channel_of(i, g);
        const S v = bn_forward(static_cast<S>(xi), mean[c], scale[c], bias[c]);
        y[i] = static_cast<T>(bn_finish(v, res ? static_cast<S>(res[i]) : S(0), res != nullptr, relu));
      });
}

// ---------------------------------------------------------------- backward

template <class T, class S, class I>
__device__ __forceinline__ S masked_dy(const T* dy, const T* out, I i) {
  const S d = static_cast<S>(dy[i]);
  return out ? bn_keep_if_pos(static_cast<S>(out[i]), d) : d;
}

// One element's masked grad_out and input, loaded together.
template <class S>
struct DyX {
  S d, x;
};

// Partial sums (dy', dy' * (x - mean)) of channel blockIdx.x over slice blockIdx.y.
template <class T, class S>
__global__ void reduce_planes_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                             const T* __restrict__ out, Geom g, const S* mean, double* part) {
  const int64_t c = blockIdx.x;
  const S m = mean[c];
  S a = 0, b = 0;
  for_plane_slice(
      g, c, [&](int64_t j) { return DyX<S>{masked_dy<T, S>(dy, out, j), static_cast<S>(x[j])}; },
      [&](DyX<S> v) {
        a += v.d;
        b += v.d * (v.x - m);
      });
  double da = a, db = b;
  block_sum2(da, db);
  if (threadIdx.x == 0) {
    double* p = part + (static_cast<int64_t>(blockIdx.y) * g.C + c) * 2;
    p[0] = da;
    p[1] = db;
  }
}

template <class T, class S>
__global__ void reduce_rows_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ out,
                                           int64_t M, int64_t C, const S* mean, double* part) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kTileC + threadIdx.x;
  const int64_t slices = gridDim.y;
  const int64_t r0 = M * blockIdx.y / slices, r1 = M * (blockIdx.y + 1) / slices;
  S a = 0, b = 0;
  if (c < C) {
    const S m = mean[c];
    strided_in_fours(
        r0 + threadIdx.y, r1, kTileR,
        [&](int64_t r) { return DyX<S>{masked_dy<T, S>(dy, out, r * C + c), static_cast<S>(x[r * C + c])}; },
        [&](DyX<S> v) {
          a += v.d;
          b += v.d * (v.x - m);
        });
  }
  __shared__ double sa[kTileR][kTileC], sb[kTileR][kTileC];
  sa[threadIdx.y][threadIdx.x] = a;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double ta = 0, tb = 0;
    for (int k = 0; k < kTileR; ++k) {
      ta += sa[k][threadIdx.x];
      tb += sb[k][threadIdx.x];
    }
    double* p = part + (static_cast<int64_t>(blockIdx.y) * C + c) * 2;
    p[0] = ta;
    p[1] = tb;
  }
}

// The element pass's per-channel coefficients (a {3, C} table: mean_dy, k, a rows) and
// grad_weight (float64, when gw is set) from a channel's sums.
template <class S>
struct BwdCoeffArgs {
  const S* mean;
  const S* var;
  const S* w;
  int64_t C;
  double count;
  bool training;
  double eps;
  S* table;  // nullptr: the sums only
  double* gw;
  S* gw_s;  // grad_weight and grad_bias in S (ParamGrads), or nullptr
  S* gb_s;

  __device__ void write(int64_t c, double sd, double sx) const {
    const BwdCoeffs<S> q = bwd_coeffs<S>(mean[c], var[c], w, c, sd, sx, count, training, eps);
    table[c] = q.mean_dy;
    table[C + c] = q.k;
    table[2 * C + c] = q.a;
    if (gw) {
      const double g = grad_weight(sx, static_cast<double>(var[c]), eps);
      gw[c] = g;
      if (gw_s) gw_s[c] = static_cast<S>(g);
    }
    if (gb_s) gb_s[c] = static_cast<S>(sd);
  }
};

// Merges the slices' sums, a warp per channel; with q.table, also the coefficients (one
// launch fewer).
template <class S>
__global__ void reduce_final_kernel(const double* part, int slices, int64_t C, double* sum_dy, double* sum_dy_xmu,
                                    BwdCoeffArgs<S> q) {
  const int64_t c = warp_channel();
  if (c >= C) return;
  const int lane = threadIdx.x % kWarp;
  double a = 0, b = 0;
  for (int s = lane; s < slices; s += kWarp) {
    a += part[(static_cast<int64_t>(s) * C + c) * 2];
    b += part[(static_cast<int64_t>(s) * C + c) * 2 + 1];
  }
  for (int d = kWarp / 2; d > 0; d /= 2) {
    const double oa = shfl_down(a, d), ob = shfl_down(b, d);
    if (lane < d) {
      a += oa;
      b += ob;
    }
  }
  if (lane != 0) return;
  sum_dy[c] = a;
  sum_dy_xmu[c] = b;
  if (q.table != nullptr) q.write(c, a, b);
}

// The coefficients from given sums (or none: eval mode, where they are not used).
template <class S>
__global__ void bwd_coeffs_kernel(const double* sum_dy, const double* sum_dy_xmu, BwdCoeffArgs<S> q) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= q.C) return;
  q.write(c, sum_dy ? sum_dy[c] : 0.0, sum_dy_xmu ? sum_dy_xmu[c] : 0.0);
}

template <class T, class S, class I>
__global__ void elemt_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ out,
                             T* __restrict__ dx, T* __restrict__ dres, Geom g, I numel, const S* mean,
                             const S* mean_dy, const S* k, const S* a) {
  struct Loaded {
    S d, x;
  };
  for_elements<I>(
      numel, [&](I i) { return Loaded{masked_dy<T, S>(dy, out, i), dx ? static_cast<S>(x[i]) : S(0)}; },
      [&](I i, Loaded v) {
        if (dres) dres[i] = static_cast<T>(v.d);
        if (dx) {
          const I c = channel_of(i, g);
          dx[i] = static_cast<T>(bn_grad_input(v.d, v.x, mean[c], mean_dy[c], k[c], a[c]));
        }
      });
}

// M: the statistics' dtype (float or double), read in double.
template <class R, class M>
__global__ void update_stats_kernel(R* rm, R* rv, const M* mean, const M* var, int64_t C, bool has_momentum,
                                    double momentum_value, const int64_t* num_batches_tracked, int64_t count) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double momentum = update_factor(has_momentum, momentum_value, num_batches_tracked);
  rm[c] = static_cast<R>(running_update(static_cast<double>(rm[c]), static_cast<double>(mean[c]), momentum));
  rv[c] = static_cast<R>(
      running_update(static_cast<double>(rv[c]), unbiased_var(static_cast<double>(var[c]), count), momentum));
}

// ---------------------------------------------------------------- launch helpers

unsigned blocks_for(int64_t n, int64_t per = kBlock) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + per - 1) / per, int64_t(1) << 20)));
}
cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// Slices per channel (planes) or per 32-channel tile (rows) for a grid of about four
// blocks per multiprocessor, each slice min_len elements or more, at most most slices.
int slices_for(int64_t tiles, int64_t len, int64_t min_len, int64_t most) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (4 * sms + tiles - 1) / tiles;
  return static_cast<int>(std::max<int64_t>(1, std::min({want, len / min_len, most})));
}
int plane_slices(const Geom& g) { return slices_for(g.C, g.count(), 2048, 1024); }
int row_slices(const Geom& g) { return slices_for((g.C + kTileC - 1) / kTileC, g.count(), 64, 512); }

// Blocks of an element pass (kUnroll elements per thread per step).
unsigned element_blocks(int64_t numel) { return blocks_for(numel, int64_t(kBlock) * kUnroll); }

// mean/var (S) of the prepared input. With coeffs ({2, C} of S), also the element pass's
// scale and bias rows, from w, b and eps, in the same launch as the merge.
void stats_into(const Prepared& p, at::Tensor& mean, at::Tensor& var, const OptTensor& w = std::nullopt,
                const OptTensor& b = std::nullopt, double eps = 0.0, at::Tensor* coeffs = nullptr) {
  dispatch_dtype(p.x.scalar_type(), [&](auto t, auto s) {
    using T = decltype(t);
    using S = decltype(s);
    const T* x = static_cast<const T*>(p.x.data_ptr());
    const int slices = p.g.rows ? row_slices(p.g) : plane_slices(p.g);
    at::Tensor part = at::empty({slices, p.g.C, 3}, p.x.options().dtype(c10::kDouble));
    if (p.g.rows) {
      dim3 grid(static_cast<unsigned>((p.g.C + kTileC - 1) / kTileC), static_cast<unsigned>(slices));
      stats_rows_partial_kernel<T, S><<<grid, dim3(kTileC, kTileR), 0, stream()>>>(x, p.g.count(), p.g.C,
                                                                                   part.data_ptr<double>());
    } else {
      dim3 grid(static_cast<unsigned>(p.g.C), static_cast<unsigned>(slices));
      stats_planes_partial_kernel<T, S><<<grid, kBlock, 0, stream()>>>(x, p.g, part.data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    CoeffOut<S> out{w ? w->data_ptr<S>() : nullptr, b ? b->data_ptr<S>() : nullptr, eps, nullptr, nullptr};
    if (coeffs != nullptr) {
      out.scale = coeffs->data_ptr<S>();
      out.bias = out.scale + p.g.C;
    }
    stats_final_kernel<S><<<blocks_for(p.g.C * kWarp), kBlock, 0, stream()>>>(part.data_ptr<double>(), slices, p.g.C,
                                                                            mean.data_ptr<S>(), var.data_ptr<S>(), out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// y = relu?(x * scale + bias + residual?), coeffs = the {2, C} scale and bias rows.
void normalise_with(const Prepared& p, const at::Tensor& mean, const at::Tensor& coeffs, const OptTensor& r,
                    bool relu, at::Tensor& y) {
  dispatch_dtype(p.x.scalar_type(), [&](auto t, auto s) {
    using T = decltype(t);
    using S = decltype(s);
    const S* scale = coeffs.data_ptr<S>();
    launch_indexed(p.x.numel(), [&](auto numel) {
      apply_kernel<T, S, decltype(numel)><<<element_blocks(numel), kBlock, 0, stream()>>>(
          static_cast<const T*>(p.x.data_ptr()), static_cast<T*>(y.data_ptr()),
          r ? static_cast<const T*>(r->data_ptr()) : nullptr, relu, p.g, numel, mean.data_ptr<S>(), scale,
          scale + p.g.C);
    });
  });
}

// The forward with given statistics (eval): coefficients, then the element pass.
void normalise(const Prepared& p, const at::Tensor& mean, const at::Tensor& var, const OptTensor& w,
               const OptTensor& b, const OptTensor& r, bool relu, double eps, at::Tensor& y) {
  at::Tensor coeffs = at::empty({2, p.g.C}, mean.options());
  dispatch_dtype(p.x.scalar_type(), [&](auto, auto s) {
    using S = decltype(s);
    S* scale = coeffs.data_ptr<S>();
    fwd_coeffs_kernel<S><<<blocks_for(p.g.C), kBlock, 0, stream()>>>(
        mean.data_ptr<S>(), var.data_ptr<S>(), w ? w->data_ptr<S>() : nullptr, b ? b->data_ptr<S>() : nullptr, p.g.C,
        eps, scale, scale + p.g.C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  normalise_with(p, mean, coeffs, r, relu, y);
}

// What the element pass needs besides the tensors, for BwdCoeffArgs.
struct CoeffRequest {
  const OptTensor* w;
  const at::Tensor* var;
  double count;
  bool training;
  double eps;
  double* gw;
  ParamGrads pg;
  at::Tensor* table;  // {3, C} of the statistics' dtype, written
};

template <class S>
BwdCoeffArgs<S> coeff_args(const Prepared& p, const at::Tensor& mean, const CoeffRequest& r) {
  return {mean.data_ptr<S>(), r.var->data_ptr<S>(), *r.w ? (*r.w)->data_ptr<S>() : nullptr, p.g.C, r.count,
          r.training, r.eps, r.table->data_ptr<S>(), r.gw, static_cast<S*>(r.pg.w), static_cast<S*>(r.pg.b)};
}

// Per-channel sums of dy' and dy' * (x - mean), float64; with req, the element pass's
// coefficients too.
void reduce_into(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const at::Tensor& mean, double* sum_dy,
                 double* sum_dy_xmu, const CoeffRequest* req = nullptr) {
  dispatch_dtype(p.x.scalar_type(), [&](auto t, auto s) {
    using T = decltype(t);
    using S = decltype(s);
    const T* d = static_cast<const T*>(dy.data_ptr());
    const T* x = static_cast<const T*>(p.x.data_ptr());
    const T* o = out ? static_cast<const T*>(out->data_ptr()) : nullptr;
    const int slices = p.g.rows ? row_slices(p.g) : plane_slices(p.g);
    at::Tensor part = at::empty({slices, p.g.C, 2}, p.x.options().dtype(c10::kDouble));
    if (p.g.rows) {
      dim3 grid(static_cast<unsigned>((p.g.C + kTileC - 1) / kTileC), static_cast<unsigned>(slices));
      reduce_rows_partial_kernel<T, S><<<grid, dim3(kTileC, kTileR), 0, stream()>>>(d, x, o, p.g.count(), p.g.C,
                                                                                    mean.data_ptr<S>(),
                                                                                    part.data_ptr<double>());
    } else {
      dim3 grid(static_cast<unsigned>(p.g.C), static_cast<unsigned>(slices));
      reduce_planes_partial_kernel<T, S><<<grid, kBlock, 0, stream()>>>(d, x, o, p.g, mean.data_ptr<S>(),
                                                                        part.data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const BwdCoeffArgs<S> q = req ? coeff_args<S>(p, mean, *req) : BwdCoeffArgs<S>{};
    reduce_final_kernel<S><<<blocks_for(p.g.C * kWarp), kBlock, 0, stream()>>>(part.data_ptr<double>(), slices, p.g.C,
                                                                             sum_dy, sum_dy_xmu, q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The coefficients from given sums (null: none), into req's table.
void coeffs_into(const Prepared& p, const at::Tensor& mean, const double* sum_dy, const double* sum_dy_xmu,
                 const CoeffRequest& req) {
  dispatch_dtype(p.x.scalar_type(), [&](auto, auto s) {
    using S = decltype(s);
    bwd_coeffs_kernel<S><<<blocks_for(p.g.C), kBlock, 0, stream()>>>(sum_dy, sum_dy_xmu, coeff_args<S>(p, mean, req));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The element pass: dx (and dres, the masked dy) from a {3, C} coefficient table.
void elemt_pass(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const at::Tensor& mean,
                const at::Tensor& table, at::Tensor* dx, at::Tensor* dres) {
  if ((!dx && !dres) || p.x.numel() == 0) return;
  dispatch_dtype(p.x.scalar_type(), [&](auto t, auto s) {
    using T = decltype(t);
    using S = decltype(s);
    const S* mdy = table.data_ptr<S>();
    launch_indexed(p.x.numel(), [&](auto numel) {
      elemt_kernel<T, S, decltype(numel)><<<element_blocks(numel), kBlock, 0, stream()>>>(
          static_cast<const T*>(dy.data_ptr()), static_cast<const T*>(p.x.data_ptr()),
          out ? static_cast<const T*>(out->data_ptr()) : nullptr, dx ? static_cast<T*>(dx->data_ptr()) : nullptr,
          dres ? static_cast<T*>(dres->data_ptr()) : nullptr, p.g, numel, mean.data_ptr<S>(), mdy, mdy + p.g.C,
          mdy + 2 * p.g.C);
    });
  });
}

// ---------------------------------------------------------------- backend of Ops<> (batchnorm_ops.h)

struct CudaBackend {
  struct Guard {
    explicit Guard(const at::Tensor& t) : g(t.device()) {}
    c10::cuda::CUDAGuard g;
  };

  static at::Tensor output(const Prepared& p) { return empty_output(p); }

  static void train(const Prepared& p, const AffineArgs& affine, bool relu, double eps, at::Tensor& y,
                    at::Tensor& mean, at::Tensor& var) {
    at::Tensor coeffs = at::empty({2, p.g.C}, mean.options());
    stats_into(p, mean, var, affine.w, affine.b, eps, &coeffs);
    normalise_with(p, mean, coeffs, affine.r, relu, y);
  }

  static void normalise(const Prepared& p, const at::Tensor& mean, const at::Tensor& var, const OptTensor& w,
                        const OptTensor& b, const OptTensor& r, bool relu, double eps, at::Tensor& y) {
    batchnorm::normalise(p, mean, var, w, b, r, relu, eps, y);
  }

  static void stats(const Prepared& p, at::Tensor& mean, at::Tensor& var) { stats_into(p, mean, var); }

  static void update_stats(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& m,
                           const at::Tensor& v, std::optional<double> momentum, const OptTensor& num_batches_tracked,
                           int64_t count) {
    const int64_t C = running_mean.numel();
    dispatch_dtype(running_mean.scalar_type(), [&](auto t, auto) {
      using R = decltype(t);
      with_update_stats(m, v, [&](const auto* mp, const auto* vp) {
        update_stats_kernel<<<blocks_for(C), kBlock, 0, stream()>>>(
            static_cast<R*>(running_mean.data_ptr()), static_cast<R*>(running_var.data_ptr()), mp, vp, C,
            momentum.has_value(), momentum.value_or(0.0), momentum ? nullptr : num_batches_tracked->data_ptr<int64_t>(),
            count);
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void reduce(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const at::Tensor& mean,
                     double* sum_dy, double* sum_dy_xmu) {
    reduce_into(p, dy, out, mean, sum_dy, sum_dy_xmu);
  }

  static void elemt(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const OptTensor& w,
                    const at::Tensor& mean, const at::Tensor& var, const double* sum_dy, const double* sum_dy_xmu,
                    double count, double eps, at::Tensor& dx) {
    at::Tensor table = at::empty({3, p.g.C}, mean.options());
    coeffs_into(p, mean, sum_dy, sum_dy_xmu, {&w, &var, count, true, eps, nullptr, {}, &table});
    elemt_pass(p, dy, out, mean, table, &dx, nullptr);
  }

  // With the sums (training, or grad_weight / grad_bias asked for), the coefficients come
  // out of the sums' merge kernel; without, from their own small kernel.
  static void backward(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const OptTensor& w,
                       const at::Tensor& mean, const at::Tensor& var, bool training, double eps, bool want_sums,
                       double* sum_dy, double* sum_dy_xmu, double* gw, const ParamGrads& pg, at::Tensor* dx,
                       at::Tensor* dres) {
    at::Tensor table = at::empty({3, p.g.C}, mean.options());
    const CoeffRequest req{&w, &var, static_cast<double>(p.g.count()), training, eps, gw, pg, &table};
    if (want_sums)
      reduce_into(p, dy, out, mean, sum_dy, sum_dy_xmu, &req);
    else
      coeffs_into(p, mean, nullptr, nullptr, req);
    elemt_pass(p, dy, out, mean, table, dx, dres);
  }
};

}  // namespace
}  // namespace batchnorm
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) { FO_BATCHNORM_IMPLS(m, fusedopt::batchnorm::CudaBackend); }
