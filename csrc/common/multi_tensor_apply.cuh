#pragma once
// The CUDA multi-tensor engine: one kernel launch updates many tensors.
//
// The host planner (multi_tensor.h) cuts every tensor into kChunkSize-element chunks;
// each thread block takes one chunk. A launch's table of tensors and blocks travels in
// the kernel arguments (no host-to-device copy, so launches can be captured in CUDA
// graphs), which bounds a launch to kMaxTensors tensors and kMaxBlocks blocks.
// Offsets are 64-bit, so tensors past 2^31 elements work.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "multi_tensor.h"
#include "rounding.h"

namespace fusedopt {
namespace cuda {

constexpr int64_t kChunkSize = 65536;
constexpr int kBlockSize = 512;
constexpr int kMaxBlocks = 320;
constexpr int kMaxTensors = 28;  // keeps LaunchMeta + functor under the 4 KiB parameter limit
constexpr int kILP = 4;          // elements per thread per iteration: one 16-byte load for float

struct LaunchMeta {
  void* param[kMaxTensors];
  void* grad[kMaxTensors];
  void* state[3][kMaxTensors];
  void* master[kMaxTensors];
  float* step[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t tensor_index[kMaxTensors];  // position in the op call's lists
  int32_t block_chunk[kMaxBlocks];
  uint8_t block_slot[kMaxBlocks];
};

// Kernel parameters are limited to 4 KiB; the functor needs the rest.
static_assert(sizeof(LaunchMeta) <= 3800, "LaunchMeta too large for kernel parameters");

template <class F>
__global__ void __launch_bounds__(kBlockSize) multi_tensor_kernel(const LaunchMeta meta, const F f) {
  const int slot = meta.block_slot[blockIdx.x];
  f(meta, slot, static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * kChunkSize);
}

template <class F>
void multi_tensor_apply(const std::vector<TensorRefs>& refs, const F& f) {
  std::vector<int64_t> numels(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) numels[i] = refs[i].numel;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (const LaunchPlan& plan : plan_launches(numels, kChunkSize, kMaxTensors, kMaxBlocks)) {
    LaunchMeta meta;
    for (size_t s = 0; s < plan.tensors.size(); ++s) {
      const TensorRefs& r = refs[plan.tensors[s]];
      meta.param[s] = r.param;
      meta.grad[s] = r.grad;
      for (int k = 0; k < 3; ++k) meta.state[k][s] = r.state[k];
      meta.master[s] = r.master;
      meta.step[s] = r.step;
      meta.numel[s] = r.numel;
      meta.tensor_index[s] = plan.tensors[s];
    }
    for (size_t b = 0; b < plan.block_slot.size(); ++b) {
      meta.block_slot[b] = static_cast<uint8_t>(plan.block_slot[b]);
      meta.block_chunk[b] = plan.block_chunk[b];
    }
    multi_tensor_kernel<<<static_cast<unsigned>(plan.block_slot.size()), kBlockSize, 0, stream>>>(meta, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Packs kILP values so that one aligned vector instruction moves them.
template <class T>
struct alignas(sizeof(T) * kILP) Pack {
  T v[kILP];
};

template <class T>
__device__ __forceinline__ bool pack_aligned(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>) == 0;
}

// How the updated param is written back (see cpu_loop.h's ParamStore).
struct ParamStore {
  bool stochastic;  // bf16 params: stochastic rounding instead of nearest-even
  uint32_t key;     // the tensor's random stream
  int64_t index;    // element offset of the chunk inside its tensor
};

template <class T, class S>
__device__ __forceinline__ T store_param(S x, const ParamStore& out, int64_t i) {
  if constexpr (std::is_same<T, c10::BFloat16>::value) {
    if (out.stochastic)
      return c10::BFloat16(bf16_bits_stochastic(x, element_random(out.key, out.index + i)), c10::BFloat16::from_bits());
  }
  return static_cast<T>(x);
}

// Walks one chunk: n elements from the given pointers (already offset to the chunk).
// op(p, g, s0, s1, s2) works on registers of the math type S; absent states and master
// (nullptr) are neither loaded nor stored, g is stored only when store_grad. With a
// float32 master, p is read from and written to it and the param gets the rounded value.
template <class T, class S, class Op>
__device__ __forceinline__ void walk_chunk(T* p, T* g, S* s0, S* s1, S* s2, S* master, int64_t n, bool store_grad,
                                           const ParamStore& out, const Op& op) {
  const bool vec = n % kILP == 0 && pack_aligned<T>(p) && pack_aligned<T>(g) && pack_aligned<S>(s0) &&
                   pack_aligned<S>(s1) && pack_aligned<S>(s2) && pack_aligned<S>(master);
  if (vec) {
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kILP; i < n; i += static_cast<int64_t>(blockDim.x) * kILP) {
      Pack<T> pp = *reinterpret_cast<const Pack<T>*>(p + i);
      Pack<T> gp = *reinterpret_cast<const Pack<T>*>(g + i);
      Pack<S> a{}, b{}, c{}, m{};
      if (s0) a = *reinterpret_cast<const Pack<S>*>(s0 + i);
      if (s1) b = *reinterpret_cast<const Pack<S>*>(s1 + i);
      if (s2) c = *reinterpret_cast<const Pack<S>*>(s2 + i);
      if (master) m = *reinterpret_cast<const Pack<S>*>(master + i);
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        S vp = master ? m.v[k] : static_cast<S>(pp.v[k]), vg = static_cast<S>(gp.v[k]);
        op(vp, vg, a.v[k], b.v[k], c.v[k]);
        m.v[k] = vp;
        pp.v[k] = store_param<T>(vp, out, i + k);
        gp.v[k] = static_cast<T>(vg);
      }
      *reinterpret_cast<Pack<T>*>(p + i) = pp;
      if (store_grad) *reinterpret_cast<Pack<T>*>(g + i) = gp;
      if (s0) *reinterpret_cast<Pack<S>*>(s0 + i) = a;
      if (s1) *reinterpret_cast<Pack<S>*>(s1 + i) = b;
      if (s2) *reinterpret_cast<Pack<S>*>(s2 + i) = c;
      if (master) *reinterpret_cast<Pack<S>*>(master + i) = m;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      S vp = master ? master[i] : static_cast<S>(p[i]), vg = static_cast<S>(g[i]);
      S a = s0 ? s0[i] : S(0), b = s1 ? s1[i] : S(0), c = s2 ? s2[i] : S(0);
      op(vp, vg, a, b, c);
      if (master) master[i] = vp;
      p[i] = store_param<T>(vp, out, i);
      if (store_grad) g[i] = static_cast<T>(vg);
      if (s0) s0[i] = a;
      if (s1) s1[i] = b;
      if (s2) s2[i] = c;
    }
  }
}

// Chunk pointers of one tensor slot, typed.
template <class T, class S>
struct ChunkPtrs {
  T* p;
  T* g;
  S* s[3];
  S* master;
  int64_t n;
  __device__ ChunkPtrs(const LaunchMeta& m, int slot, int64_t start) {
    n = m.numel[slot] - start;
    if (n > kChunkSize) n = kChunkSize;
    p = static_cast<T*>(m.param[slot]) + start;
    g = static_cast<T*>(m.grad[slot]) + start;
    for (int k = 0; k < 3; ++k) s[k] = m.state[k][slot] ? static_cast<S*>(m.state[k][slot]) + start : nullptr;
    master = m.master[slot] ? static_cast<S*>(m.master[slot]) + start : nullptr;
  }
};

// Adds 1 to every step counter after the update kernels, unless found_inf is set.
// Kept apart so that every chunk of a tensor reads the same step.
constexpr int kMaxSteps = 480;
struct StepMeta {
  float* step[kMaxSteps];
  int n;
};

static __global__ void bump_steps_kernel(const StepMeta m, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.f) return;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < m.n) *m.step[i] += 1.f;
}

inline void bump_steps(const std::vector<TensorRefs>& refs, const float* found_inf) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (size_t start = 0; start < refs.size(); start += kMaxSteps) {
    StepMeta m;
    m.n = static_cast<int>(std::min<size_t>(kMaxSteps, refs.size() - start));
    for (int i = 0; i < m.n; ++i) m.step[i] = refs[start + i].step;
    bump_steps_kernel<<<(m.n + 127) / 128, 128, 0, stream>>>(m, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace cuda
}  // namespace fusedopt
