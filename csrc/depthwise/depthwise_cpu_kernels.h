// CPU kernel bodies of the depthwise convolution, compiled once per instruction set by
// depthwise_cpu_avx512.cpp, depthwise_cpu_avx2.cpp and depthwise_cpu_scalar.cpp (no
// include guard on purpose).
//
// NCHW, stride 1 or 2, no dilation, depth multiplier 1, 3x3 (5x5 in the AVX-512 unit),
// rows of 24 or more outputs: one task per plane, walked along its rows kCW columns at a
// time (see "NCHW, rows").
// Other NCHW cases with depth multiplier 1 and channels a multiple of 8: one task
// per block of 8 planes, interleaved into a zero-padded [row][col][plane] buffer so that
// each tap is one vector multiply-add (see "NCHW, channel blocks").
// Other NCHW cases: one task per input plane (n, c), copied once into a zero-padded,
// phase-split float buffer (see the NCHW section) so that each tap is one contiguous
// run over the whole flattened output plane; 3x3 and 5x5 keep all taps in registers.
// channels_last: one task per image row. At 3x3 and 5x5 with depth multiplier 1 a row
// is walked kCW channels at a time (8; 16 in the AVX-512 unit) with the taps' weights
// or sums in registers ("row blocks"; at stride 1 with size-preserving padding the
// backward walks each row once for grad_input and grad_weight together; at stride 2
// grad_input walks each row once per column parity); otherwise pixel groups run over
// contiguous 32-channel blocks.
// grad_weight: per-(image, channel) (NCHW) or per-fixed-chunk-of-rows (channels_last)
// partials, summed in a fixed order at the end, so results do not depend on the thread
// count.
#include "../common/dispatch.h"
#include "depthwise_cpu_partials.h"
#include "depthwise_kernels.h"

namespace fusedopt {
namespace depthwise {
namespace FO_CPU_NS {
namespace {

template <class Acc, class T>
inline void load_row(const T* src, Acc* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(src[i]);
}

template <class Acc, class T>
inline void store_row(const Acc* src, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

// BackwardArgs' buffers as T pointers, the start of every backward entry below:
// `const auto [go, in, wt, gi, gw, gb] = typed_buffers<T>(a);` (gi, gw, gb may be null).
template <class T>
struct TypedBuffers {
  const T* go;
  const T* in;
  const T* wt;
  T* gi;
  T* gw;
  T* gb;
};
template <class T>
inline TypedBuffers<T> typed_buffers(const BackwardArgs& a) {
  return {static_cast<const T*>(a.grad_out), static_cast<const T*>(a.input),  static_cast<const T*>(a.weight),
          static_cast<T*>(a.grad_input),     static_cast<T*>(a.grad_weight), static_cast<T*>(a.grad_bias)};
}

// Walks a range a few cache lines per step, so that the memory the next task (plane or
// row) reads, and (step_write) the output lines it writes, are requested while the
// current one computes. Here a core's own misses, not the memory, limit a walk: the
// hardware prefetcher stops at each 4 KiB page, and a store to an output line not in
// cache waits for the line. Measured on (32,144,56,56) float32, 2 threads, with
// allocations that do not fault (as in a long-running process): NCHW forward 10.5 ms
// without prefetch, 10.3 with reads only, 8.3 with both; channels_last forward 8.7 ->
// 6.5 ms, backward 19 -> 13 ms. Small steps: bursts of prefetches stall the loads
// behind them.
struct Prefetcher {
  const char* p = nullptr;
  const char* end = nullptr;
  void reset(const void* begin, int64_t bytes) {
    p = static_cast<const char*>(begin);
    end = p + (bytes > 0 ? bytes : 0);
  }
  void step(int lines) {
    for (int k = 0; k < lines && p < end; ++k, p += 64) __builtin_prefetch(p, 0, 3);
  }
  // The same for a range about to be written (prefetch for ownership).
  void step_write(int lines) {
    for (int k = 0; k < lines && p < end; ++k, p += 64) __builtin_prefetch(p, 1, 3);
  }
};

// Lines to request per output row so that a plane of `bytes` is covered in `rows` rows.
inline int prefetch_lines_per_row(int64_t bytes, int64_t rows) {
  return static_cast<int>(std::min<int64_t>(64, (bytes / 64 + rows) / std::max<int64_t>(1, rows) + 1));
}

// The memory the next task reads (up to two ranges) and the range it writes, requested
// in `steps` equal parts over the current task: channels_last, the input rows the next
// row adds and the row it writes, over the pixel and channel blocks of the current row;
// NCHW small planes, the next block's planes, over the current block's rows.
struct RowPrefetch {
  Prefetcher rd, rd2, wr;
  int rd_lines = 0, rd2_lines = 0, wr_lines = 0;
  void reset(const void* in, int64_t in_bytes, const void* out, int64_t out_bytes, int64_t steps,
             const void* in2 = nullptr, int64_t in2_bytes = 0) {
    rd.reset(in, in_bytes);
    rd2.reset(in2, in2_bytes);
    wr.reset(out, out_bytes);
    rd_lines = prefetch_lines_per_row(in_bytes, steps);
    rd2_lines = in2_bytes > 0 ? prefetch_lines_per_row(in2_bytes, steps) : 0;
    wr_lines = prefetch_lines_per_row(out_bytes, steps);
  }
  void step() {
    rd.step(rd_lines);
    rd2.step(rd2_lines);
    wr.step_write(wr_lines);
  }
};

// channels_last: the KH_ input rows that output row oh of image n reads, a row of zeros
// (W * C) where a kernel row falls outside the image.
template <int KH_, class T>
inline void tap_input_rows(const Geom& g, const T* in, int64_t n, int64_t oh, const T* zeros, const T** rows) {
  for (int i = 0; i < KH_; ++i) {
    const int64_t ih = tap_source(oh, i, g.SH, g.DH, g.PT);
    rows[i] = ih >= 0 && ih < g.H ? in + (n * g.H + ih) * g.W * g.C : zeros;
  }
}

// channels_last: the input rows that output row r + 1 (flattened over the batch) reads
// and row r did not: up to SH rows, contiguous in memory. Returns the first of them and
// their byte count (0: none, or r + 1 is not the caller's).
template <class T>
inline const T* next_row_inputs(const Geom& g, const T* in, int64_t r, bool has_next, int64_t* bytes) {
  const int64_t nn = (r + 1) / g.OH, noh = (r + 1) % g.OH;
  const int64_t last = std::min(g.H - 1, tap_source(noh, g.KH - 1, g.SH, g.DH, g.PT));
  const int64_t first = std::max<int64_t>(0, last - g.SH + 1);
  if (!has_next || first > last) {
    *bytes = 0;
    return nullptr;
  }
  const int64_t row = g.W * g.C;
  *bytes = (last - first + 1) * row * static_cast<int64_t>(sizeof(T));
  return in + (nn * g.H + first) * row;
}

// Runs f(begin, end) over [0, n) in chunks that threads take from a shared counter:
// a thread slowed by another process (2 shared cores here) takes fewer chunks instead
// of making every other thread wait at the end. Outputs and partials are indexed by
// task, never by thread, so results do not depend on who ran what.
template <class F>
void parallel_tasks(int64_t n, const F& f) {
  if (n <= 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t chunk = std::max<int64_t>(1, n / (8 * threads));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t b = next.fetch_add(chunk);
      if (b >= n) break;
      f(b, std::min(n, b + chunk));
    }
  });
}

// Calls body(KH, KW) with compile-time kernel sizes for the hot cases, (0, 0) otherwise.
template <class Body>
void with_kernel_size(const Geom& g, const Body& body) {
  using std::integral_constant;
  if (g.KH == 3 && g.KW == 3) return body(integral_constant<int, 3>{}, integral_constant<int, 3>{});
  if (g.KH == 5 && g.KW == 5) return body(integral_constant<int, 5>{}, integral_constant<int, 5>{});
  return body(integral_constant<int, 0>{}, integral_constant<int, 0>{});
}

// ---------------------------------------------------------------- NCHW, channel blocks
//
// The per-plane loops of the next section spend most of their time on overhead when
// planes are small (short rows, loop prologues and epilogues, a buffer fill per plane)
// and vectorise poorly at stride 2. Here kPB planes of one image are interleaved (8x8
// register transposes) into a zero-padded buffer laid out [row][col][plane]: one pixel
// of the kPB planes is one vector, every tap one multiply-add with no edge cases, for
// any kernel, stride and dilation, and the weights of fixed kernel sizes stay in
// registers. While a block computes, the next block's planes are prefetched (each
// block is one contiguous range per tensor).

constexpr int64_t kPB = 8;  // planes per block: one AVX2 register of float

// W values of Acc as one GCC vector (the scalar unit lowers it to SSE2).
template <class Acc, int W>
struct VecOf {
  typedef Acc type __attribute__((vector_size(W * sizeof(Acc))));
  using Idx = std::conditional_t<sizeof(Acc) == 4, int32_t, int64_t>;
  typedef Idx index __attribute__((vector_size(W * sizeof(Acc))));
};
// kPB planes of the NCHW channel blocks (8x8 transposes).
template <class Acc>
using Vec8 = typename VecOf<Acc, kPB>::type;
template <class Acc>
using Vec8Of = VecOf<Acc, kPB>;

// Channels per vector in the channels_last kernels: 8 (AVX2), or 16 in the unit built
// for AVX-512 (depthwise_cpu_avx512.cpp), whose 32 registers hold a 3x3 or 5x5 kernel's
// weights for 16 channels.
#ifndef FO_CL_LANES
#define FO_CL_LANES 8
#endif
constexpr int64_t kCW = FO_CL_LANES;
template <class Acc>
using VecW = typename VecOf<Acc, kCW>::type;

// bf16/fp16 stored, float math: the SIMD units convert 8 (AVX2) or 16 (AVX-512) at a
// time in registers (round to nearest even), the baseline unit one by one.
template <class Acc, class T>
constexpr bool kHalfLanes =
#if defined(FO_HAVE_AVX2_UNIT) && FO_HAVE_AVX2_UNIT
    std::is_same_v<Acc, float> && (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>);
#else
    false;
#endif

template <int W, class Acc, class T>
inline typename VecOf<Acc, W>::type loadv(const T* p) {
  typename VecOf<Acc, W>::type v;
  if constexpr (std::is_same_v<T, Acc>) {
    std::memcpy(&v, p, sizeof(v));
  } else if constexpr (kHalfLanes<Acc, T>) {
#if defined(FO_HAVE_AVX512_UNIT) && FO_HAVE_AVX512_UNIT
    if constexpr (W == 16) return (typename VecOf<Acc, W>::type)::fusedopt::simd_avx512::Lanes<T>::load(p).v;
#endif
#if defined(FO_HAVE_AVX2_UNIT) && FO_HAVE_AVX2_UNIT
    using L = ::fusedopt::FO_CPU_NS::Lanes<T>;
    static_assert(W == L::N || W == 16, "a width with a conversion");
    if constexpr (W == L::N) v = (typename VecOf<Acc, W>::type)L::load(p).v;
#endif
  } else {
    for (int k = 0; k < W; ++k) v[k] = static_cast<Acc>(p[k]);
  }
  return v;
}
template <int W, class Acc, class T>
inline void storev(T* p, typename VecOf<Acc, W>::type v) {
  if constexpr (std::is_same_v<T, Acc>) {
    std::memcpy(p, &v, sizeof(v));
  } else if constexpr (kHalfLanes<Acc, T>) {
#if defined(FO_HAVE_AVX512_UNIT) && FO_HAVE_AVX512_UNIT
    if constexpr (W == 16) return ::fusedopt::simd_avx512::Lanes<T>::store(p, ::fusedopt::simd_avx512::VecF((__m512)v));
#endif
#if defined(FO_HAVE_AVX2_UNIT) && FO_HAVE_AVX2_UNIT
    using L = ::fusedopt::FO_CPU_NS::Lanes<T>;
    if constexpr (W == L::N) L::store(p, typename L::V((__m256)v));
#endif
  } else {
    for (int k = 0; k < W; ++k) p[k] = static_cast<T>(v[k]);
  }
}
template <class Acc, class T>
inline Vec8<Acc> load8(const T* p) { return loadv<kPB, Acc>(p); }
template <class Acc, class T>
inline void store8(T* p, Vec8<Acc> v) { storev<kPB, Acc>(p, v); }
template <class Acc, class T>
inline VecW<Acc> loadw(const T* p) { return loadv<kCW, Acc>(p); }
template <class Acc, class T>
inline void storew(T* p, VecW<Acc> v) { storev<kCW, Acc>(p, v); }

// r[i][j] -> r[j][i] (unpack, then pairs, then halves, as the AVX 8x8 transpose).
template <class Acc>
inline void transpose8(Vec8<Acc>* r) {
  using I = typename Vec8Of<Acc>::index;
  const I lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};
  const I lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const I lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  Vec8<Acc> t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], lo1);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi1);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], lo2);
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], hi2);
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], lo2);
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], hi2);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shuffle(u[i], u[i + 4], lo4);
    r[i + 4] = __builtin_shuffle(u[i], u[i + 4], hi4);
  }
}

// Where pixel p = h * W + w of a plane lives in a padded buffer (in elements).
struct PixelWalk {
  int64_t W, ld, h, w, base;
  PixelWalk(int64_t W_, int64_t ld_, int64_t top, int64_t left) : W(W_), ld(ld_), h(0), w(0), base(top * ld_ + left) {}
  int64_t at() const { return (base + h * ld + w) * kPB; }
  void next() {
    if (++w == W) w = 0, ++h;
  }
};

// buf[pixel (h, w) at (top + h, left + w), plane k] = src[k * plane + h * W + w].
template <class Acc, class T>
void interleave_planes(const T* src, int64_t plane, int64_t H, int64_t W, int64_t ld, int64_t top, int64_t left,
                       Acc* buf) {
  const int64_t n = H * W;
  PixelWalk pw(W, ld, top, left);
  int64_t p = 0;
  for (; p + kPB <= n; p += kPB) {
    Vec8<Acc> r[kPB];
    for (int k = 0; k < kPB; ++k) r[k] = load8<Acc>(src + k * plane + p);
    transpose8<Acc>(r);
    for (int q = 0; q < kPB; ++q, pw.next()) store8<Acc>(buf + pw.at(), r[q]);
  }
  for (; p < n; ++p, pw.next())
    for (int k = 0; k < kPB; ++k) buf[pw.at() + k] = static_cast<Acc>(src[k * plane + p]);
}

// The inverse of interleave_planes.
template <class Acc, class T>
void deinterleave_planes(const Acc* buf, int64_t ld, int64_t top, int64_t left, int64_t H, int64_t W, T* dst,
                         int64_t plane) {
  const int64_t n = H * W;
  PixelWalk pw(W, ld, top, left);
  int64_t p = 0;
  for (; p + kPB <= n; p += kPB) {
    Vec8<Acc> r[kPB];
    for (int q = 0; q < kPB; ++q, pw.next()) r[q] = load8<Acc>(buf + pw.at());
    transpose8<Acc>(r);
    for (int k = 0; k < kPB; ++k) store8<Acc>(dst + k * plane + p, r[k]);
  }
  for (; p < n; ++p, pw.next())
    for (int k = 0; k < kPB; ++k) dst[k * plane + p] = static_cast<T>(buf[pw.at() + k]);
}

// A (N, C, h, w) NCHW tensor seen as blocks (n, c0) of kPB planes, each one contiguous
// range. (Blocks of channels_last tensors were measured 2-4x slower than the row
// kernels below: each block touches every cache line of its image.)
template <class T>
struct BlockView {
  T* data;
  int64_t C, h, w;
  T* block(int64_t n, int64_t c0) const { return data + (n * C + c0) * h * w; }
  int64_t block_bytes() const { return data ? kPB * h * w * static_cast<int64_t>(sizeof(T)) : 0; }
  // Block (n, c0) into buf, pixel (y, x) at (top + y, left + x) of rows of ld pixels.
  template <class Acc>
  void read(int64_t n, int64_t c0, int64_t ld, int64_t top, int64_t left, Acc* buf) const {
    interleave_planes(block(n, c0), h * w, h, w, ld, top, left, buf);
  }
  template <class Acc>
  void write(const Acc* buf, int64_t ld, int64_t top, int64_t left, int64_t n, int64_t c0) const {
    deinterleave_planes(buf, ld, top, left, h, w, block(n, c0), h * w);
  }
};

// One correlation or weight-grad walk over a block: output (oh, ow), tap (i, j) reads
// src pixel (oh * SH + i * DH, ow * SW + j * DW) of a buffer with rows of ld pixels.
struct BlockGeom {
  int64_t OH, OW, KH, KW, SH, SW, DH, DW, ld;
};

// Calls pixel(oh, ow, taps) for every output of a block walk, in order; taps(f) calls
// f(t, v) for each tap t = i * KW + j, v the kPB values it reads. Columns that step by
// one pixel (stride and dilation 1) get constant tap offsets.
template <int KH_, int KW_, class Acc, class Pixel>
void walk_block(const Acc* src, const BlockGeom& b, RowPrefetch* ahead, const Pixel& pixel) {
  const int64_t KH = KH_ > 0 ? KH_ : b.KH, KW = KW_ > 0 ? KW_ : b.KW;
  auto walk = [&](auto unit) {
    constexpr bool U = decltype(unit)::value;
    for (int64_t oh = 0; oh < b.OH; ++oh) {
      const Acc* row = src + oh * b.SH * b.ld * kPB;
      if (ahead) ahead->step();
      for (int64_t ow = 0; ow < b.OW; ++ow) {
        const Acc* s = row + ow * (U ? 1 : b.SW) * kPB;
        pixel(oh, ow, [&](const auto& f) {
#pragma GCC unroll 7
          for (int64_t i = 0; i < KH; ++i)
#pragma GCC unroll 7
            for (int64_t j = 0; j < KW; ++j) f(i * KW + j, load8<Acc>(s + (i * b.DH * b.ld + j * (U ? 1 : b.DW)) * kPB));
        });
      }
    }
  };
  if (b.SW == 1 && b.DW == 1) return walk(std::true_type{});
  walk(std::false_type{});
}

// dst[(oh * OW + ow) * kPB + k] = init[k] + sum over taps t of w8[t * kPB + k] * src(tap).
template <int KH_, int KW_, class Acc>
void correlate_block(const Acc* src, const BlockGeom b, const Acc* w8, const Acc* init, Acc* dst,
                     RowPrefetch* ahead = nullptr) {
  constexpr int K_ = KH_ * KW_;
  // Fixed kernel sizes: the weights are locals, so they stay in registers.
  Vec8<Acc> wl[K_ > 0 ? K_ : 1];
  if constexpr (K_ > 0)
    for (int t = 0; t < K_; ++t) wl[t] = load8<Acc>(w8 + t * kPB);
  const Vec8<Acc> v0 = load8<Acc>(init);
  walk_block<KH_, KW_>(src, b, ahead, [&](int64_t oh, int64_t ow, const auto& taps) {
    Vec8<Acc> acc = v0;
    taps([&](int64_t t, Vec8<Acc> v) { acc += (K_ > 0 ? wl[t] : load8<Acc>(w8 + t * kPB)) * v; });
    store8<Acc>(dst + (oh * b.OW + ow) * kPB, acc);
  });
}

// out[t * kPB + k] = sum over outputs of g(oh, ow)[k] * src(tap t)[k] for t < K, and
// out[K * kPB + k] = sum of g[k] (the bias grad). g(oh, ow) is at gsrc + (oh * gld + ow) * kPB.
template <int KH_, int KW_, class Acc>
void weight_grad_block(const Acc* src, const BlockGeom b, const Acc* gsrc, int64_t gld, Acc* out,
                       RowPrefetch* ahead = nullptr) {
  constexpr int K_ = KH_ * KW_;
  const int64_t K = K_ > 0 ? K_ : b.KH * b.KW;
  Vec8<Acc> al[K_ > 0 ? K_ : 1];  // fixed kernel sizes: sums in registers
  for (int t = 0; t < K_; ++t) al[t] = Vec8<Acc>{};
  if constexpr (K_ == 0) std::fill(out, out + K * kPB, Acc(0));
  Vec8<Acc> gsum = {};
  walk_block<KH_, KW_>(src, b, ahead, [&](int64_t oh, int64_t ow, const auto& taps) {
    const Vec8<Acc> gv = load8<Acc>(gsrc + (oh * gld + ow) * kPB);
    gsum += gv;
    taps([&](int64_t t, Vec8<Acc> v) {
      if constexpr (K_ > 0) {
        al[t] += gv * v;
      } else {
        store8<Acc>(out + t * kPB, load8<Acc>(out + t * kPB) + gv * v);
      }
    });
  });
  for (int t = 0; t < K_; ++t) store8<Acc>(out + t * kPB, al[t]);
  store8<Acc>(out + K * kPB, gsum);
}

// The block path takes every NCHW case with depth multiplier 1 and channels a multiple
// of kPB. Against the per-plane path, forward+backward float32, 2 threads, 3x3 pad 1:
// (32,960,7,7) 4.5 -> 1.5 ms, (32,384,14,14) 4.2 -> 2.0 ms, (32,192,28,28) 5.2 -> 4.1
// ms, (32,144,56,56) 19 -> 16 ms, and at stride 2 (32,144,56,56) 22 -> 11 ms.
template <class Args>
bool use_blocks(const Args& a) {
  return !a.channels_last && a.g.M == 1 && a.g.C % kPB == 0;
}

// The weights (and bias) of every block, once per call: block b's weights as [tap][plane]
// at w8[b * K * kPB], its bias at b8[b * kPB]; flip: taps reversed.
template <class Acc>
struct BlockWeights {
  std::vector<Acc> w8, b8;
  template <class T>
  BlockWeights(const T* wt, const T* bias, int64_t C, int64_t K, bool flip) : w8(C * K), b8(C, Acc(0)) {
    for (int64_t c = 0; c < C; ++c) {
      Acc* w = w8.data() + c / kPB * K * kPB + c % kPB;
      for (int64_t t = 0; t < K; ++t) w[t * kPB] = static_cast<Acc>(wt[c * K + (flip ? K - 1 - t : t)]);
      if (bias) b8[c] = static_cast<Acc>(bias[c]);
    }
  }
  const Acc* weights(int64_t c0, int64_t K) const { return w8.data() + c0 * K; }
  const Acc* bias(int64_t c0) const { return b8.data() + c0; }
};

// Tap t < K of channel o is grad_weight[o, t]; tap K is grad_bias[o] (either may be null).
template <class Acc, class T>
inline void put_weight_grad(T* gw, T* gb, int64_t K, int64_t o, int64_t t, Acc v) {
  if (t < K && gw) gw[o * K + t] = static_cast<T>(v);
  if (t == K && gb) gb[o] = static_cast<T>(v);
}

// grad_weight and grad_bias from per-(image, channel) partials part[(n * O + o) * (K + 1)
// + t], summed over the batch in image order.
template <class Acc, class T>
void sum_channel_partials(const Geom& g, const Acc* part, T* gw, T* gb) {
  const int64_t O = num_out_channels(g), K = num_taps(g);
  sum_parts_in_order(part, g.N, O * (K + 1),
                     [&](int64_t e, Acc v) { put_weight_grad(gw, gb, K, e / (K + 1), e % (K + 1), v); });
}

template <int KH_, int KW_, class Acc, class T>
void forward_blocked(const ForwardArgs& a) {
  const Geom& g = a.g;
  const auto* wt = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const T*>(a.bias);
  const BlockView<const T> in{static_cast<const T*>(a.input), g.C, g.H, g.W};
  const BlockView<T> out{static_cast<T*>(a.output), g.C, g.OH, g.OW};
  const int64_t K = num_taps(g), blocks = g.C / kPB;
  const int64_t Hp = g.H + g.PT + g.PB, Wp = g.W + g.PL + g.PR;
  const BlockGeom bg{g.OH, g.OW, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW, Wp};
  const BlockWeights<Acc> bw(wt, bias, g.C, K, false);
  parallel_tasks(g.N * blocks, [&](int64_t begin, int64_t end) {
    // Only the interior is ever written: the padding stays zero.
    std::vector<Acc> xb(Hp * Wp * kPB, Acc(0)), ob(g.OH * g.OW * kPB);
    RowPrefetch ahead;  // the next block's input and output
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n = blk / blocks, c0 = blk % blocks * kPB;
      const bool more = blk + 1 < end;
      const int64_t nn = (blk + 1) / blocks, nc0 = (blk + 1) % blocks * kPB;
      ahead.reset(in.block(nn, nc0), more ? in.block_bytes() : 0, out.block(nn, nc0), more ? out.block_bytes() : 0,
                  g.OH);
      in.read(n, c0, Wp, g.PT, g.PL, xb.data());
      correlate_block<KH_, KW_>(xb.data(), bg, bw.weights(c0, K), bw.bias(c0), ob.data(), &ahead);
      out.write(ob.data(), g.OW, 0, 0, n, c0);
    }
  });
}

// Floor division (b > 0).
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// grad_input of a block by phases, for any stride: the input pixels with the same
// (ih % SH, iw % SW) take the same taps, and each tap's grad_out moves one pixel per SH
// input rows and SW input columns. grad_out (oh, ow) is at ((oh + GT) * GW + ow + GL) of
// the grad_out buffer, zero around it wherever a tap reads outside.
struct BlockPhase {
  int64_t ph, pw;
  std::vector<int64_t> off, tap;  // per tap: buffer offset and weight offset (elements)
};

inline std::vector<BlockPhase> block_phases(const Geom& g, int64_t GT, int64_t GL, int64_t GW) {
  std::vector<BlockPhase> phases;
  for (int64_t ph = 0; ph < g.SH; ++ph)
    for (int64_t pw = 0; pw < g.SW; ++pw) {
      BlockPhase p{ph, pw, {}, {}};
      for (int64_t i = 0; i < g.KH; ++i) {
        const int64_t rnum = ph + g.PT - i * g.DH;
        if (rnum % g.SH != 0) continue;
        for (int64_t j = 0; j < g.KW; ++j) {
          const int64_t cnum = pw + g.PL - j * g.DW;
          if (cnum % g.SW != 0) continue;
          p.off.push_back(((rnum / g.SH + GT) * GW + cnum / g.SW + GL) * kPB);
          p.tap.push_back((i * g.KW + j) * kPB);
        }
      }
      phases.push_back(std::move(p));
    }
  return phases;
}

template <class Acc>
void input_grad_phases(const Acc* gob, int64_t GW, const std::vector<BlockPhase>& phases, const Geom& g,
                       const Acc* w8, Acc* gib, RowPrefetch& ahead) {
  for (const BlockPhase& p : phases) {
    const int64_t cnt = static_cast<int64_t>(p.off.size());
    for (int64_t ih = p.ph, q = 0; ih < g.H; ih += g.SH, ++q) {
      if (p.pw == 0) ahead.step();
      for (int64_t iw = p.pw, s = 0; iw < g.W; iw += g.SW, ++s) {
        const Acc* base = gob + (q * GW + s) * kPB;
        Vec8<Acc> acc = {};
        for (int64_t t = 0; t < cnt; ++t) acc += load8<Acc>(w8 + p.tap[t]) * load8<Acc>(base + p.off[t]);
        store8<Acc>(gib + (ih * g.W + iw) * kPB, acc);
      }
    }
  }
}

// grad_input and the grad_weight / grad_bias partials of each channel, into
// part[(n * C + c) * (K + 1) + t] (null: not asked for). grad_out goes into a buffer
// zero-padded wide enough for every tap of every input pixel; at stride 1 with padding
// within the kernel's reach grad_input is then a correlation with the flipped kernel,
// otherwise it is gathered by phases.
template <int KH_, int KW_, class Acc, class T>
void backward_blocked(const BackwardArgs& a, Acc* part) {
  const Geom& g = a.g;
  const auto* wt = static_cast<const T*>(a.weight);
  const BlockView<const T> go{static_cast<const T*>(a.grad_out), g.C, g.OH, g.OW};
  const BlockView<const T> in{static_cast<const T*>(a.input), g.C, g.H, g.W};
  const BlockView<T> gi{static_cast<T*>(a.grad_input), g.C, g.H, g.W};
  const int64_t K = num_taps(g), HW = g.H * g.W, blocks = g.C / kPB;
  const int64_t Hp = g.H + g.PT + g.PB, Wp = g.W + g.PL + g.PR;
  const int64_t RH = (g.KH - 1) * g.DH, RW = (g.KW - 1) * g.DW;  // the kernel's reach
  // grad_out rows the input pixels' taps reach: [oh_lo, oh_hi], columns likewise.
  const int64_t oh_lo = std::min<int64_t>(0, floor_div(g.PT - RH, g.SH));
  const int64_t oh_hi = std::max(g.OH - 1, floor_div(g.H - 1 + g.PT, g.SH));
  const int64_t ow_lo = std::min<int64_t>(0, floor_div(g.PL - RW, g.SW));
  const int64_t ow_hi = std::max(g.OW - 1, floor_div(g.W - 1 + g.PL, g.SW));
  const int64_t GT = -oh_lo, GL = -ow_lo, GH = oh_hi - oh_lo + 1, GW = ow_hi - ow_lo + 1;
  const bool flip = g.SH == 1 && g.SW == 1 && g.PT <= RH && g.PB <= RH && g.PL <= RW && g.PR <= RW;
  const BlockGeom fwd{g.OH, g.OW, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW, Wp};
  // Flipped correlation: input (ih, iw) tap (i, j) reads buffer (ih + i*DH, iw + j*DW).
  const BlockGeom flipped{g.H, g.W, g.KH, g.KW, 1, 1, g.DH, g.DW, GW};
  const BlockWeights<Acc> bw(wt, static_cast<const T*>(nullptr), gi.data ? g.C : 0, K, flip);
  const std::vector<BlockPhase> phases = gi.data && !flip ? block_phases(g, GT, GL, GW) : std::vector<BlockPhase>();
  parallel_tasks(g.N * blocks, [&](int64_t begin, int64_t end) {
    std::vector<Acc> xb(part ? Hp * Wp * kPB : 0, Acc(0)), gob(GH * GW * kPB, Acc(0));
    std::vector<Acc> gib(gi.data ? HW * kPB : 0), pw((K + 1) * kPB);
    RowPrefetch ahead;  // the next block's grad_out, input and grad_input
    const int64_t steps = (part ? g.OH : 0) + (gi.data ? g.H : 0);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n = blk / blocks, c0 = blk % blocks * kPB;
      const bool more = blk + 1 < end;
      const int64_t nn = (blk + 1) / blocks, nc0 = (blk + 1) % blocks * kPB;
      ahead.reset(go.block(nn, nc0), more ? go.block_bytes() : 0, gi.block(nn, nc0), more ? gi.block_bytes() : 0, steps,
                  in.block(nn, nc0), more && part ? in.block_bytes() : 0);
      go.read(n, c0, GW, GT, GL, gob.data());
      if (part) {
        in.read(n, c0, Wp, g.PT, g.PL, xb.data());
        weight_grad_block<KH_, KW_>(xb.data(), fwd, gob.data() + (GT * GW + GL) * kPB, GW, pw.data(), &ahead);
        for (int64_t k = 0; k < kPB; ++k)
          for (int64_t t = 0; t <= K; ++t) part[(n * g.C + c0 + k) * (K + 1) + t] = pw[t * kPB + k];
      }
      if (!gi.data) continue;
      const Acc* w8 = bw.weights(c0, K);
      if (flip) {
        // Input (ih, iw) tap i' = KH-1-i reads buffer row ih + i'*DH, which holds grad_out
        // row ih + PT - i*DH: the flipped kernel over the buffer from (GT - (RH - PT)) = 0.
        correlate_block<KH_, KW_>(gob.data(), flipped, w8, bw.bias(c0), gib.data(), &ahead);
      } else {
        input_grad_phases(gob.data(), GW, phases, g, w8, gib.data(), ahead);
      }
      gi.write(gib.data(), g.W, 0, 0, n, c0);
    }
  });
}

template <int KH_, int KW_, class Acc, class T>
void backward_blocks(const BackwardArgs& a) {
  const bool need_part = a.grad_weight || a.grad_bias;
  std::vector<Acc> part(need_part ? a.g.N * a.g.C * (num_taps(a.g) + 1) : 0);
  backward_blocked<KH_, KW_, Acc, T>(a, need_part ? part.data() : nullptr);
  if (need_part) sum_channel_partials(a.g, part.data(), static_cast<T*>(a.grad_weight), static_cast<T*>(a.grad_bias));
}

// ---------------------------------------------------------------- NCHW, rows
//
// Stride 1 or 2, no dilation, depth multiplier 1, a 3x3 kernel (or 5x5 in the AVX-512
// unit, see use_rows) with padding within its reach, and rows of at least kRowsMinWidth outputs (MobileNet's 112x112 and
// 56x56 layers): each plane is copied into a zero-padded float buffer (at stride 2 each
// padded row split into its even and odd columns, so that a tap's inputs for an output
// vector are again one contiguous run), and each output row is walked kCW columns at a
// time (8, or 16 in the AVX-512 unit), every tap one unaligned load and multiply-add with
// the weights in registers. The channel blocks above spend about as much on their 8x8
// transposes as on the multiply-adds; here there are none, and results are stored
// straight from registers. Each output still sums init + w[t] * x[t] over the taps in
// order, so forward and grad_input do not depend on the vector width. Against the
// channel blocks, forward+backward float32 interleaved with torch's, 2 threads:
// (32,144,56,56) 19.4 -> 16.1 ms (forward alone 7.5 -> 5.4), (32,192,28,28) 5.3 -> 4.75,
// (8,32,112,112) 4.3 -> 2.9; bf16 (32,144,56,56) 12.9 -> 11.4; at stride 2,
// (32,144,56,56) 13.1 -> 11.1, (32,96,112,112) 41.9 -> 33.1 (its forward alone 10.8 ->
// 11.7: the gain is the backward's), bf16 (32,144,56,56) 10.2 -> 9.7. Rows of 14 and 7
// stay with the blocks, whose vectors span channels and have no tails. Input and
// grad_out rows are copied into the buffers as the walk first reaches them, not a whole
// plane ahead, so each is used while still in L1: (32,96,112,112) stride 2 forward 12.2
// -> 9.6 ms and forward+backward 29.5 -> 26.7, (32,144,56,56) forward+backward stride 1
// 16.3 -> 15.2 and stride 2 12.6 -> 11.4.
// The backward fills grad_out the same way. grad_weight sums dy * x per tap in kCW lanes
// (the zeros after each grad_out row mask the last vector's extra lanes), then each
// plane's lanes in order: its bits depend on the width (the AVX-512 unit's differ from
// the AVX2 unit's) but not on the thread count. grad_input is, at stride 1, the same walk
// over grad_out with the flipped kernel; at stride 2 it is gathered by phase: the even
// and the odd input columns of a row each take their own taps, each a contiguous run of
// grad_out, and are interleaved on the store.

constexpr int64_t kRowsMinWidth = 24;

// 5x5 only with 16 lanes: its 25 weights need the AVX-512 unit's 32 registers. In the
// 8-lane units the blocks measured as fast at stride 1 and faster at stride 2 ((32,144,
// 56,56) forward+backward 16.8 vs 18.0 ms); with 16 lanes the rows win (s1 28.7 -> 24.8,
// s2 16.0 -> 14.7 ms).
template <int KH_, int KW_>
bool use_rows(const Geom& g, bool channels_last) {
  return (KH_ == 3 || kCW >= 16) && !channels_last && g.M == 1 && g.SH == g.SW && (g.SH == 1 || g.SH == 2) &&
         g.DH == 1 && g.DW == 1 &&
         g.PT < KH_ && g.PB < KH_ && g.PL < KW_ && g.PR < KW_ && g.OW >= std::max<int64_t>(kRowsMinWidth, kCW) &&
         g.W >= kCW;
}

template <class Acc>
inline VecW<Acc> splat(Acc x) {
  return VecW<Acc>{} + x;
}

// Rounds n up to whole vectors.
inline int64_t whole_vectors(int64_t n) { return (n + kCW - 1) / kCW * kCW; }

// Lane k of the result takes lane first + step * k of the pair (a, b).
template <class Acc>
inline typename VecOf<Acc, kCW>::index lane_pick(int first, int step) {
  typename VecOf<Acc, kCW>::index v;
  for (int k = 0; k < kCW; ++k) v[k] = first + step * k;
  return v;
}

// The zero-padded input of one plane as the row walks read it (only the interior is
// ever written, so the zeros of the first fill stay). S = 1: padded row r at r * ld.
// S = 2: padded row r split by column parity, padded column x at (2 r + x % 2) * ld + x / 2.
template <int S>
struct InputRows {
  int64_t rows, ld;
  InputRows(const Geom& g, int64_t KW)
      : rows(g.H + g.PT + g.PB),
        ld(S == 1 ? std::max(g.W + g.PL + g.PR, whole_vectors(g.OW) + KW - 1)
                  : whole_vectors((g.W + g.PL + g.PR + 1) / 2) + kCW) {}
  int64_t size() const { return S * rows * ld + kCW; }
  // The first input of tap (i, j) of output row oh (its vector at ow adds ow).
  template <class Acc>
  const Acc* tap(const Acc* buf, int64_t oh, int i, int j) const {
    if constexpr (S == 1) return buf + (oh + i) * ld + j;
    return buf + (2 * (2 * oh + i) + j % 2) * ld + j / 2;
  }
  // Input rows [h0, h1) of the plane at src (all of them by default).
  template <class Acc, class T>
  void fill(const T* src, const Geom& g, Acc* buf, int64_t h0 = 0, int64_t h1 = -1) const {
    for (int64_t h = h0; h < (h1 < 0 ? g.H : h1); ++h) {
      const T* s = src + h * g.W;
      const int64_t r = g.PT + h;
      if constexpr (S == 1) {
        load_row(s, buf + r * ld + g.PL, g.W);
        continue;
      }
      Acc* even = buf + 2 * r * ld;
      Acc* odd = even + ld;
      // 2 kCW values at a time, split by a shuffle each; the last run overlaps the one
      // before it (rewriting the same values).
      auto split_at = [&](int64_t w) {
        const VecW<Acc> a = loadw<Acc>(s + w), b = loadw<Acc>(s + w + kCW);
        const VecW<Acc> first = __builtin_shuffle(a, b, lane_pick<Acc>(0, 2));
        const VecW<Acc> second = __builtin_shuffle(a, b, lane_pick<Acc>(1, 2));
        const int64_t x = g.PL + w;  // padded column of s[w]
        storew<Acc>((x % 2 ? odd : even) + x / 2, first);
        storew<Acc>((x % 2 ? even : odd) + (x + 1) / 2, second);
      };
      int64_t w = 0;
      for (; w + 2 * kCW <= g.W; w += 2 * kCW) split_at(w);
      if (w < g.W && g.W >= 2 * kCW) {
        split_at(g.W - 2 * kCW);
      } else {
        for (; w < g.W; ++w) ((g.PL + w) % 2 ? odd : even)[(g.PL + w) / 2] = static_cast<Acc>(s[w]);
      }
    }
  }
  // Rows [0, filled) are in buf: adds the rest of those that the KH taps of output row
  // oh read, so that a walk fills each input row as it first reaches it (while the row
  // is still in L1 when used).
  template <class Acc, class T>
  void fill_for_output_row(const T* src, const Geom& g, Acc* buf, int64_t oh, int64_t KH, int64_t& filled) const {
    const int64_t upto = std::min(g.H, S * oh + KH - g.PT);
    if (upto > filled) fill(src, g, buf, filled, upto), filled = upto;
  }
};

// out[oh * OW + ow] = init + sum over taps t = i * KW_ + j of w[t] * (tap t's input): the
// last vector of a row overlaps the one before it. ahead steps once a row; before_row(oh)
// runs first (to fill the input rows that row reads).
template <int KH_, int KW_, int S, class Acc, class T, class BeforeRow>
void correlate_rows(const InputRows<S>& xr, const Acc* buf, const Acc* w, Acc init, int64_t OH, int64_t OW, T* out,
                    RowPrefetch& ahead, const BeforeRow& before_row) {
  constexpr int K_ = KH_ * KW_;
  VecW<Acc> wv[K_];
  for (int t = 0; t < K_; ++t) wv[t] = splat(w[t]);
  const VecW<Acc> v0 = splat(init);
  for (int64_t oh = 0; oh < OH; ++oh) {
    ahead.step();
    before_row(oh);
    const Acc* src[K_];
    for (int t = 0; t < K_; ++t) src[t] = xr.tap(buf, oh, t / KW_, t % KW_);
    T* o = out + oh * OW;
    auto vector_at = [&](int64_t ow) {
      VecW<Acc> acc = v0;
#pragma GCC unroll 25
      for (int t = 0; t < K_; ++t) acc += wv[t] * loadw<Acc>(src[t] + ow);
      storew<Acc>(o + ow, acc);
    };
    int64_t ow = 0;
    for (; ow + kCW <= OW; ow += kCW) vector_at(ow);
    if (ow < OW) vector_at(OW - kCW);
  }
}

// part[t] = sum of dy(oh, ow) * (tap t's input) over the outputs, and part[K] = sum of
// dy: dy(oh, ow) = dy[oh * ldd + ow], zero from column OW on.
template <int KH_, int KW_, int S, class Acc, class BeforeRow>
void weight_grad_rows(const Acc* dy, int64_t ldd, const InputRows<S>& xr, const Acc* buf, int64_t OH, int64_t OW,
                      Acc* part, RowPrefetch& ahead, const BeforeRow& before_row) {
  constexpr int K_ = KH_ * KW_;
  VecW<Acc> acc[K_ + 1];
  for (int t = 0; t <= K_; ++t) acc[t] = VecW<Acc>{};
  const int64_t cols = whole_vectors(OW);
  for (int64_t oh = 0; oh < OH; ++oh) {
    ahead.step();
    before_row(oh);
    const Acc* d = dy + oh * ldd;
    const Acc* src[K_];
    for (int t = 0; t < K_; ++t) src[t] = xr.tap(buf, oh, t / KW_, t % KW_);
    for (int64_t ow = 0; ow < cols; ow += kCW) {
      const VecW<Acc> dv = loadw<Acc>(d + ow);
#pragma GCC unroll 25
      for (int t = 0; t < K_; ++t) acc[t] += dv * loadw<Acc>(src[t] + ow);
      acc[K_] += dv;
    }
  }
  for (int t = 0; t <= K_; ++t) {
    Acc sum = Acc(0);
    for (int k = 0; k < kCW; ++k) sum += acc[t][k];
    part[t] = sum;
  }
}

// Stride 2: grad_input row ih from grad_out (oh, ow) at dy[oh * ldd + ow] (rows from
// -(KH_ - 1) / 2 and columns from -(KW_ - 1) / 2 readable, zero outside the output).
// Input column iw = 2m + e (e = 0, 1) sits at padded column x = PL + iw and takes the
// taps (i, j) with r - i and x - j even (r = PT + ih), each reading grad_out
// ((r - i) / 2, (x - j) / 2): for fixed e, a run over m.
template <int KH_, int KW_, class Acc, class T>
void input_grad_row_s2(const Acc* dy, int64_t ldd, const Acc* w, const Geom& g, int64_t ih, T* gi) {
  constexpr int K_ = KH_ * KW_;
  const Acc* src[2][K_];
  VecW<Acc> wv[2][K_];
  int taps[2] = {0, 0};
  const int64_t r = g.PT + ih;
  for (int i = 0; i < KH_; ++i) {
    if ((r - i) % 2 != 0) continue;
    for (int j = 0; j < KW_; ++j)
      for (int e = 0; e < 2; ++e) {
        if ((g.PL + e - j) % 2 != 0) continue;
        src[e][taps[e]] = dy + (r - i) / 2 * ldd + (g.PL + e - j) / 2;
        wv[e][taps[e]++] = splat(w[i * KW_ + j]);
      }
  }
  // Lane k of a stored vector: even k from the even columns' sums, odd k from the odd.
  typename VecOf<Acc, kCW>::index lo_idx, hi_idx;
  for (int k = 0; k < kCW; ++k) {
    lo_idx[k] = k / 2 + (k % 2) * kCW;
    hi_idx[k] = kCW / 2 + k / 2 + (k % 2) * kCW;
  }
  auto run_at = [&](int64_t m, T* dst, int64_t n) {  // grad_input [2m, 2m + n), n <= 2 kCW
    VecW<Acc> sum[2] = {VecW<Acc>{}, VecW<Acc>{}};
    for (int e = 0; e < 2; ++e)
      for (int t = 0; t < taps[e]; ++t) sum[e] += wv[e][t] * loadw<Acc>(src[e][t] + m);
    const VecW<Acc> first = __builtin_shuffle(sum[0], sum[1], lo_idx);
    const VecW<Acc> second = __builtin_shuffle(sum[0], sum[1], hi_idx);
    if (n == 2 * kCW) {
      storew<Acc>(dst, first);
      storew<Acc>(dst + kCW, second);
    } else {  // through a buffer
      T part[2 * kCW];
      storew<Acc>(part, first);
      storew<Acc>(part + kCW, second);
      std::copy(part, part + n, dst);
    }
  };
  int64_t m = 0;
  for (; 2 * m + 2 * kCW <= g.W; m += kCW) run_at(m, gi + 2 * m, 2 * kCW);
  if (2 * m < g.W) {
    // An even width ends with a run that overlaps the one before it; an odd one (no run
    // ends there) with a partial run.
    if (g.W % 2 == 0 && g.W >= 2 * kCW) {
      run_at(g.W / 2 - kCW, gi + g.W - 2 * kCW, 2 * kCW);
    } else {
      run_at(m, gi + 2 * m, g.W - 2 * m);
    }
  }
}

template <int KH_, int KW_, int S, class Acc, class T>
void forward_rows(const ForwardArgs& a) {
  constexpr int K_ = KH_ * KW_;
  const Geom& g = a.g;
  const auto* in = static_cast<const T*>(a.input);
  const auto* wt = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const T*>(a.bias);
  auto* out = static_cast<T*>(a.output);
  std::vector<Acc> w(g.C * K_);
  load_row(wt, w.data(), g.C * K_);
  const InputRows<S> xr(g, KW_);
  const int64_t in_bytes = g.H * g.W * static_cast<int64_t>(sizeof(T));
  const int64_t out_bytes = g.OH * g.OW * static_cast<int64_t>(sizeof(T));
  parallel_tasks(g.N * g.C, [&](int64_t begin, int64_t end) {
    std::vector<Acc> xb(xr.size(), Acc(0));
    RowPrefetch ahead;  // the next plane's input and output
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % g.C;
      const bool more = p + 1 < end;
      ahead.reset(in + (p + 1) * g.H * g.W, more ? in_bytes : 0, out + (p + 1) * g.OH * g.OW, more ? out_bytes : 0,
                  g.OH);
      int64_t filled = 0;
      auto fill_for_row = [&](int64_t oh) {
        xr.fill_for_output_row(in + p * g.H * g.W, g, xb.data(), oh, KH_, filled);
      };
      const Acc b = bias ? static_cast<Acc>(bias[c]) : Acc(0);
      correlate_rows<KH_, KW_>(xr, xb.data(), w.data() + c * K_, b, g.OH, g.OW, out + p * g.OH * g.OW, ahead,
                               fill_for_row);
    }
  });
}

template <int KH_, int KW_, int S, class Acc, class T>
void backward_rows(const BackwardArgs& a) {
  constexpr int K_ = KH_ * KW_;
  const Geom& g = a.g;
  const auto [go, in, wt, gi, gw, gb] = typed_buffers<T>(a);
  const bool need_part = gw || gb;
  // Stride 1: grad_input is the flipped kernel's walk over grad_out placed at row GT,
  // column GL of a buffer laid out as a stride-1 input. Stride 2: grad_out at row
  // (KH_ - 1) / 2, column (KW_ - 1) / 2, with room for input_grad_row_s2's reach.
  std::vector<Acc> wk(g.C * K_), part(need_part ? g.N * g.C * (K_ + 1) : 0);
  for (int64_t c = 0; c < g.C; ++c)
    for (int t = 0; t < K_; ++t) wk[c * K_ + t] = static_cast<Acc>(wt[c * K_ + (S == 1 ? K_ - 1 - t : t)]);
  Geom dg = g;  // grad_out's buffer, seen as a stride-1 input of grad_input's walk
  dg.H = g.OH, dg.W = g.OW, dg.OW = std::max(g.W, g.OW);
  if constexpr (S == 1) {
    dg.PT = KH_ - 1 - g.PT, dg.PL = KW_ - 1 - g.PL, dg.PB = std::max(KH_, KW_), dg.PR = KW_;
  } else {
    dg.PT = (KH_ - 1) / 2, dg.PL = (KW_ - 1) / 2;
    dg.PB = std::max<int64_t>((g.H + g.PT) / 2 + 2 - g.OH, KH_), dg.PR = whole_vectors((g.W + 1) / 2) + KW_;
  }
  const InputRows<1> dr(dg, KW_);
  const InputRows<S> xr(g, KW_);
  const int64_t in_bytes = g.H * g.W * static_cast<int64_t>(sizeof(T));
  const int64_t go_bytes = g.OH * g.OW * static_cast<int64_t>(sizeof(T));
  parallel_tasks(g.N * g.C, [&](int64_t begin, int64_t end) {
    std::vector<Acc> db(dr.size(), Acc(0)), xb(need_part ? xr.size() : 0, Acc(0));
    RowPrefetch ahead;  // the next plane's grad_out and input, and the grad_input it writes
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % g.C;
      const bool more = p + 1 < end;
      ahead.reset(go + (p + 1) * g.OH * g.OW, more ? go_bytes : 0, gi ? gi + (p + 1) * g.H * g.W : nullptr,
                  more && gi ? in_bytes : 0, (need_part ? g.OH : 0) + (gi ? g.H : 0), in + (p + 1) * g.H * g.W,
                  more && need_part ? in_bytes : 0);
      const T* gop = go + p * g.OH * g.OW;
      const Acc* dy0 = db.data() + dg.PT * dr.ld + dg.PL;  // grad_out (0, 0)
      if (need_part) {
        // grad_out and input rows are filled as grad_weight's walk first reaches them
        // (InputRows::fill_for_output_row); grad_input's walk then finds all of grad_out filled.
        int64_t filled = 0;
        auto fill_for_row = [&](int64_t oh) {
          dr.fill(gop, dg, db.data(), oh, oh + 1);
          xr.fill_for_output_row(in + p * g.H * g.W, g, xb.data(), oh, KH_, filled);
        };
        weight_grad_rows<KH_, KW_>(dy0, dr.ld, xr, xb.data(), g.OH, g.OW, part.data() + p * (K_ + 1), ahead,
                                   fill_for_row);
      } else {
        dr.fill(gop, dg, db.data());
      }
      if (!gi) continue;
      T* gip = gi + p * g.H * g.W;
      if constexpr (S == 1) {
        correlate_rows<KH_, KW_>(dr, db.data(), wk.data() + c * K_, Acc(0), g.H, g.W, gip, ahead, [](int64_t) {});
      } else {
        for (int64_t ih = 0; ih < g.H; ++ih) {
          ahead.step();
          input_grad_row_s2<KH_, KW_>(dy0, dr.ld, wk.data() + c * K_, g, ih, gip + ih * g.W);
        }
      }
    }
  });
  if (need_part) sum_channel_partials(g, part.data(), gw, gb);
}

// ---------------------------------------------------------------- NCHW
//
// A plane is copied, zero-padded, into a buffer split by phase in both directions:
// padded pixel (r, x) goes to phase plane (r % SH, x % SW) at row r / SH, column x / SW,
// each phase plane being Qh x Qw. Then tap (i, j) of output (oh, ow) reads
// buf[tap_off[t] + oh * Qw + ow] for a per-tap constant tap_off[t]: every tap of every
// stride and dilation is one contiguous run over the flattened output index
// p = oh * Qw + ow, so a whole plane is a single vectorised loop (columns ow >= OW are
// scratch, dropped when the result is copied out).

struct PlaneLayout {
  int64_t Qh, Qw, plane, size;  // phase-plane rows, columns, values; buffer size
  int64_t flat;                 // length of the flattened output loop, OH * Qw rounded up to 8
};

inline PlaneLayout plane_layout(const Geom& g) {
  PlaneLayout L{};
  L.Qh = (g.H + g.PT + g.PB + g.SH - 1) / g.SH;
  L.Qw = (g.W + g.PL + g.PR + g.SW - 1) / g.SW;
  L.plane = L.Qh * L.Qw;
  L.flat = (g.OH * L.Qw + 7) / 8 * 8;
  // Scratch lanes read past the last phase plane.
  L.size = g.SH * g.SW * L.plane + L.flat + 8;
  return L;
}

inline int64_t buf_index(const Geom& g, const PlaneLayout& L, int64_t r, int64_t x) {
  return ((r % g.SH) * g.SW + x % g.SW) * L.plane + (r / g.SH) * L.Qw + x / g.SW;
}

inline void tap_offsets(const Geom& g, const PlaneLayout& L, int64_t* off) {
  for (int64_t i = 0; i < g.KH; ++i)
    for (int64_t j = 0; j < g.KW; ++j) off[i * g.KW + j] = buf_index(g, L, i * g.DH, j * g.DW);
}

template <class Acc, class T>
void fill_plane(const T* src, const Geom& g, const PlaneLayout& L, Acc* buf) {
  if (g.SH == 1 && g.SW == 1) {  // one phase: zero only the padding and the scratch tail
    const int64_t Wp = L.Qw;
    std::fill(buf, buf + g.PT * Wp + g.PL, Acc(0));
    for (int64_t h = 0; h < g.H; ++h) {
      Acc* row = buf + (g.PT + h) * Wp + g.PL;
      load_row(src + h * g.W, row, g.W);
      std::fill(row + g.W, row + g.W + g.PR + g.PL, Acc(0));  // right pad, next row's left pad
    }
    std::fill(buf + (g.PT + g.H) * Wp + g.PL, buf + L.size, Acc(0));
    return;
  }
  std::fill(buf, buf + L.size, Acc(0));
  for (int64_t h = 0; h < g.H; ++h) {
    const int64_t r = g.PT + h;
    const T* s = src + h * g.W;
    if (g.SW == 1) {
      load_row(s, buf + buf_index(g, L, r, g.PL), g.W);
      continue;
    }
    for (int64_t p = 0; p < g.SW; ++p) {
      const int64_t w0 = ((p - g.PL) % g.SW + g.SW) % g.SW;  // first w with (PL + w) % SW == p
      if (w0 >= g.W) continue;
      Acc* d = buf + buf_index(g, L, r, g.PL + w0);
      const int64_t cnt = (g.W - w0 + g.SW - 1) / g.SW;
      for (int64_t k = 0; k < cnt; ++k) d[k] = static_cast<Acc>(s[w0 + k * g.SW]);
    }
  }
}

// Copies the OH x OW outputs out of the flattened result (row stride Qw), moving the
// prefetch of the next plane along.
template <class Acc, class T>
void store_flat(const Acc* flat, int64_t qw, int64_t rows, int64_t cols, T* dst, Prefetcher& pf, int lines,
                Prefetcher& pfw, int wlines) {
  for (int64_t r = 0; r < rows; ++r) {
    pf.step(lines);
    pfw.step_write(wlines);
    store_row(flat + r * qw, dst + r * cols, cols);
  }
}

// correlate_flat for 3x3 taps whose three taps in each kernel row read neighbouring
// elements (stride-1 columns, no dilation; in either order, as the flipped kernel of
// the input grad does): three row pointers with constant column offsets and nine
// weights stay in registers, where nine tap pointers spill (about 4x slower on 7x7
// planes). Sums each kernel row in column order. Returns false for other layouts.
template <class Acc>
bool correlate_rows3(const Acc* src, const int64_t* off, const Acc* w, Acc init, Acc* dst, int64_t n) {
  const Acc* r[3];
  Acc k[3][3];
  for (int i = 0; i < 3; ++i) {
    const int64_t* o = off + 3 * i;
    const int64_t base = std::min({o[0], o[1], o[2]});
    bool seen[3] = {false, false, false};
    for (int j = 0; j < 3; ++j) {
      const int64_t col = o[j] - base;
      if (col > 2 || seen[col]) return false;
      seen[col] = true;
      k[i][col] = w[3 * i + j];
    }
    r[i] = src + base;
  }
  const Acc *r0 = r[0], *r1 = r[1], *r2 = r[2];
  const Acc k00 = k[0][0], k01 = k[0][1], k02 = k[0][2], k10 = k[1][0], k11 = k[1][1], k12 = k[1][2];
  const Acc k20 = k[2][0], k21 = k[2][1], k22 = k[2][2];
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) {
    Acc a = init + k00 * r0[p] + k01 * r0[p + 1] + k02 * r0[p + 2];
    a = a + k10 * r1[p] + k11 * r1[p + 1] + k12 * r1[p + 2];
    dst[p] = a + k20 * r2[p] + k21 * r2[p + 1] + k22 * r2[p + 2];
  }
  return true;
}

// dst[p] = init + sum_t w[t] * src[off[t] + p] for p < n (n a multiple of 8). Fixed
// kernel sizes keep every tap in registers; others accumulate tap by tap.
template <int K_, class Acc>
void correlate_flat(const Acc* src, const int64_t* off, const Acc* w, int64_t K, Acc init, Acc* dst, int64_t n) {
  if constexpr (K_ == 9) {
    if (correlate_rows3(src, off, w, init, dst, n)) return;
  }
  if constexpr (K_ > 0) {
    const Acc* s[K_];
    Acc wk[K_];
    for (int t = 0; t < K_; ++t) s[t] = src + off[t], wk[t] = w[t];
#pragma omp simd
    for (int64_t p = 0; p < n; ++p) {
      Acc a = init;
#pragma GCC unroll 25
      for (int t = 0; t < K_; ++t) a += wk[t] * s[t][p];
      dst[p] = a;
    }
  } else {
    for (int64_t p = 0; p < n; ++p) dst[p] = init;
    for (int64_t t = 0; t < K; ++t) {
      const Acc* s = src + off[t];
      const Acc wv = w[t];
#pragma omp simd
      for (int64_t p = 0; p < n; ++p) dst[p] += wv * s[p];
    }
  }
}

template <int KH_, int KW_, class Acc, class T>
void forward_nchw(const ForwardArgs& a) {
  constexpr int K_ = KH_ * KW_;
  const Geom& g = a.g;
  const auto* in = static_cast<const T*>(a.input);
  const auto* wt = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const T*>(a.bias);
  auto* out = static_cast<T*>(a.output);
  const int64_t O = num_out_channels(g), K = num_taps(g);
  std::vector<Acc> w(O * K);
  load_row(wt, w.data(), O * K);
  const PlaneLayout L = plane_layout(g);
  std::vector<int64_t> off(K);
  tap_offsets(g, L, off.data());
  const int64_t plane_bytes = g.H * g.W * static_cast<int64_t>(sizeof(T));
  const int lines = prefetch_lines_per_row(plane_bytes, g.M * g.OH);
  const int64_t out_bytes = g.M * g.OH * g.OW * static_cast<int64_t>(sizeof(T));
  const int wlines = prefetch_lines_per_row(out_bytes, g.M * g.OH);
  parallel_tasks(g.N * g.C, [&](int64_t begin, int64_t end) {
    std::vector<Acc> buf(L.size), res(L.flat);
    Prefetcher pf, pfw;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      fill_plane(in + p * g.H * g.W, g, L, buf.data());
      pf.reset(in + (p + 1) * g.H * g.W, p + 1 < end ? plane_bytes : 0);
      pfw.reset(out + (p + 1) * g.M * g.OH * g.OW, p + 1 < end ? out_bytes : 0);
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = c * g.M + m;
        const Acc b = bias ? static_cast<Acc>(bias[o]) : Acc(0);
        correlate_flat<K_>(buf.data(), off.data(), w.data() + o * K, K, b, res.data(), L.flat);
        store_flat(res.data(), L.Qw, g.OH, g.OW, out + (n * O + o) * g.OH * g.OW, pf, lines, pfw, wlines);
      }
    }
  });
}

// Dot products of the flattened grad_out plane (zero in the scratch columns) with each
// tap's run of the input buffer, and its plain sum (the bias term), into part[0..K].
// Eight lanes per tap keep the adds in registers and in a fixed order.
template <int K_, class Acc>
void weight_grad_flat(const Acc* xbuf, const int64_t* off, int64_t K_rt, const Acc* gflat, int64_t n, Acc* part,
                      Acc* lanes_heap) {
  const int64_t K = K_ > 0 ? K_ : K_rt;
  // Fixed kernel sizes: the lanes are a local array, so they live in registers.
  Acc lanes_local[K_ > 0 ? (K_ + 1) * 8 : 1];
  Acc* lanes = K_ > 0 ? lanes_local : lanes_heap;
  for (int64_t e = 0; e < (K + 1) * 8; ++e) lanes[e] = Acc(0);
  for (int64_t p = 0; p < n; p += 8) {
#pragma GCC unroll 26
    for (int64_t t = 0; t < K; ++t) {
      const Acc* s = xbuf + off[t] + p;
#pragma omp simd
      for (int q = 0; q < 8; ++q) lanes[t * 8 + q] += gflat[p + q] * s[q];
    }
#pragma omp simd
    for (int q = 0; q < 8; ++q) lanes[K * 8 + q] += gflat[p + q];
  }
  for (int64_t t = 0; t <= K; ++t) {
    Acc s = Acc(0);
    for (int q = 0; q < 8; ++q) s += lanes[t * 8 + q];
    part[t] = s;
  }
}

template <int KH_, int KW_, class Acc, class T>
void backward_nchw(const BackwardArgs& a) {
  constexpr int K_ = KH_ * KW_;
  const Geom& g = a.g;
  const auto [go, in, wt, gi, gw, gb] = typed_buffers<T>(a);
  const int64_t O = num_out_channels(g), K = num_taps(g), OHW = g.OH * g.OW;
  const bool need_part = gw || gb;
  std::vector<Acc> w(O * K);
  load_row(wt, w.data(), O * K);
  std::vector<Acc> part(need_part ? g.N * O * (K + 1) : 0);
  const PlaneLayout L = plane_layout(g);
  std::vector<int64_t> off(K);
  tap_offsets(g, L, off.data());

  // Stride 1, M == 1: grad_input is a correlation of grad_out, zero-padded by the
  // kernel's reach minus the padding, with the flipped kernel: the same flattened loop
  // as the forward pass. gpad is (H + (KH-1)*DH) x GW; grad_out row oh sits at row
  // oh + GT, column ow at ow + GL (parts that fall outside read only padding and are
  // dropped: they feed no input).
  const bool s1 = g.SH == 1 && g.SW == 1 && g.M == 1;
  const int64_t GT = (g.KH - 1) * g.DH - g.PT, GL = (g.KW - 1) * g.DW - g.PL;
  const int64_t GH = g.H + (g.KH - 1) * g.DH, GW = g.W + (g.KW - 1) * g.DW;
  const int64_t gflat_n = (g.H * GW + 7) / 8 * 8;
  std::vector<int64_t> goff(K);
  if (s1) {
    for (int64_t i = 0; i < g.KH; ++i)
      for (int64_t j = 0; j < g.KW; ++j) goff[i * g.KW + j] = (g.KH - 1 - i) * g.DH * GW + (g.KW - 1 - j) * g.DW;
  }

  const int64_t in_bytes = g.H * g.W * static_cast<int64_t>(sizeof(T));
  const int64_t go_bytes = g.M * OHW * static_cast<int64_t>(sizeof(T));
  const int in_lines = prefetch_lines_per_row(in_bytes, g.H);
  const int go_lines = prefetch_lines_per_row(go_bytes, g.H);
  parallel_tasks(g.N * g.C, [&](int64_t begin, int64_t end) {
    std::vector<Acc> xbuf(need_part ? L.size : 0), gflat(L.flat, Acc(0)), lanes((K + 1) * 8);
    std::vector<Acc> gbuf(gi ? (s1 ? GH * GW + gflat_n + 8 : L.size) : 0), res(gi && s1 ? gflat_n : 0);
    Prefetcher pf_in, pf_go, pf_gi;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      if (need_part) fill_plane(in + p * g.H * g.W, g, L, xbuf.data());
      // The next plane's grad_out (M channels) and input, and the grad_input it writes.
      pf_in.reset(in + (p + 1) * g.H * g.W, need_part && p + 1 < end ? in_bytes : 0);
      pf_go.reset(go + (p + 1) * g.M * OHW, p + 1 < end ? go_bytes : 0);
      if (gi) pf_gi.reset(gi + (p + 1) * g.H * g.W, p + 1 < end ? in_bytes : 0);
      if (gi) std::fill(gbuf.begin(), gbuf.end(), Acc(0));
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = c * g.M + m;
        const T* gop = go + (n * O + o) * OHW;
        // grad_out flattened with row stride Qw; scratch columns stay zero.
        for (int64_t oh = 0; oh < g.OH; ++oh) load_row(gop + oh * g.OW, gflat.data() + oh * L.Qw, g.OW);
        if (need_part)
          weight_grad_flat<K_>(xbuf.data(), off.data(), K, gflat.data(), L.flat, part.data() + (n * O + o) * (K + 1),
                               lanes.data());
        if (!gi) {
          pf_in.step(1 << 30);  // no rows to spread them over
          pf_go.step(1 << 30);
          continue;
        }
        if (s1) {
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const int64_t r = oh + GT;
            if (r < 0 || r >= GH) continue;
            const int64_t c0 = std::max<int64_t>(0, -GL), c1 = std::min(g.OW, GW - GL);
            if (c0 < c1) load_row(gop + oh * g.OW + c0, gbuf.data() + r * GW + GL + c0, c1 - c0);
          }
          const Acc* wo = w.data() + o * K;
          correlate_flat<K_>(gbuf.data(), goff.data(), wo, K, Acc(0), res.data(), gflat_n);
          for (int64_t h = 0; h < g.H; ++h) {
            pf_in.step(in_lines);
            pf_go.step(go_lines);
            pf_gi.step_write(in_lines);
            store_row(res.data() + h * GW, gi + p * g.H * g.W + h * g.W, g.W);
          }
          continue;
        }
        // Scatter: each tap adds w * grad_out back onto the run it read.
        const Acc* wo = w.data() + o * K;
        for (int64_t t = 0; t < K; ++t) {
          Acc* d = gbuf.data() + off[t];
          const Acc wv = wo[t];
          const Acc* gf = gflat.data();
#pragma omp simd
          for (int64_t q = 0; q < L.flat; ++q) d[q] += wv * gf[q];
        }
      }
      if (!gi || s1) continue;
      T* gip = gi + p * g.H * g.W;
      for (int64_t h = 0; h < g.H; ++h) {
        pf_in.step(in_lines);
        pf_go.step(go_lines);
        pf_gi.step_write(in_lines);
        const int64_t r = g.PT + h;
        if (g.SW == 1) {
          store_row(gbuf.data() + buf_index(g, L, r, g.PL), gip + h * g.W, g.W);
          continue;
        }
        for (int64_t ph = 0; ph < g.SW; ++ph) {  // the inverse of fill_plane's phase split
          const int64_t w0 = ((ph - g.PL) % g.SW + g.SW) % g.SW;
          if (w0 >= g.W) continue;
          const Acc* sp = gbuf.data() + buf_index(g, L, r, g.PL + w0);
          const int64_t cnt = (g.W - w0 + g.SW - 1) / g.SW;
          for (int64_t k = 0; k < cnt; ++k) gip[h * g.W + w0 + k * g.SW] = static_cast<T>(sp[k]);
        }
      }
    }
  });
  if (need_part) sum_channel_partials(g, part.data(), gw, gb);
}

// ---------------------------------------------------------------- channels_last

// Channels per register block: 32 floats (4 AVX2 registers) of accumulators that stay
// in registers across all taps. Rows whose channel count is not a multiple, and depth
// multipliers > 1, take the per-channel loops.
constexpr int64_t kCB = 32;

// The valid taps of output (oh, ow): their indices and input offsets (in elements).
inline int64_t valid_taps_out(const Geom& g, int64_t n, int64_t oh, int64_t ow, int64_t* tap, int64_t* off) {
  int64_t cnt = 0;
  for_input_taps(g, oh, ow, [&](int64_t i, int64_t j, int64_t ih, int64_t iw) {
    tap[cnt] = i * g.KW + j;
    off[cnt++] = ((n * g.H + ih) * g.W + iw) * g.C;
  });
  return cnt;
}

// The outputs whose taps read input (ih, iw): tap indices and grad_out offsets.
inline int64_t valid_taps_in(const Geom& g, int64_t n, int64_t ih, int64_t iw, int64_t* tap, int64_t* off) {
  int64_t cnt = 0;
  for_output_taps(g, ih, iw, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
    tap[cnt] = i * g.KW + j;
    off[cnt++] = ((n * g.OH + oh) * g.OW + ow) * g.C * g.M;
  });
  return cnt;
}

// One register block of B channels of one pixel: dst[c] = init[c] + sum over the cnt
// taps of w[tap * ldw + c] * src[off + c], c in [c0, c0 + B). Eight channels per
// vector, so that bf16/fp16 convert eight at a time (load8/store8).
template <int B, class Acc, class T>
inline void pixel_block_fixed(const Acc* init, const Acc* w, int64_t ldw, const T* src, const int64_t* tap,
                              const int64_t* off, int64_t cnt, int64_t c0, T* dst) {
  static_assert(B % kPB == 0, "whole vectors");
  constexpr int V = B / kPB;
  Vec8<Acc> a[V];
#pragma GCC unroll 4
  for (int k = 0; k < V; ++k) a[k] = init ? load8<Acc>(init + c0 + k * kPB) : Vec8<Acc>{};
  for (int64_t v = 0; v < cnt; ++v) {
    const Acc* wr = w + tap[v] * ldw + c0;
    const T* s = src + off[v] + c0;
#pragma GCC unroll 4
    for (int k = 0; k < V; ++k) a[k] += load8<Acc>(wr + k * kPB) * load8<Acc>(s + k * kPB);
  }
#pragma GCC unroll 4
  for (int k = 0; k < V; ++k) store8<Acc>(dst + c0 + k * kPB, a[k]);
}

// Channels [c0, c0 + len) of one pixel. src_div: 1, or M when src is the input and the
// depth multiplier is > 1 (channel o reads input channel o / M): per-channel loop.
template <class Acc, class T>
inline void pixel_block(const Acc* init, const Acc* w, int64_t ldw, const T* src, const int64_t* tap,
                        const int64_t* off, int64_t cnt, int64_t c0, int64_t len, int64_t src_div, T* dst) {
  int64_t c = c0;
  if (src_div == 1) {
    if (len == kCB) return pixel_block_fixed<kCB>(init, w, ldw, src, tap, off, cnt, c0, dst);
    for (; c + kPB <= c0 + len; c += kPB) pixel_block_fixed<kPB>(init, w, ldw, src, tap, off, cnt, c, dst);
  }
  for (; c < c0 + len; ++c) {
    Acc a = init ? init[c] : Acc(0);
    for (int64_t v = 0; v < cnt; ++v) a += w[tap[v] * ldw + c] * static_cast<Acc>(src[off[v] + c / src_div]);
    dst[c] = static_cast<T>(a);
  }
}

// P neighbouring pixels whose taps are the same list shifted by pstep elements, B
// channels from c0: each weight vector is loaded once for all P pixels.
template <int B, int P, class Acc, class T>
inline void pixels_block(const Acc* init, const Acc* w, int64_t ldw, const T* src, const int64_t* tap,
                         const int64_t* off, int64_t cnt, int64_t pstep, int64_t c0, T* dst, int64_t dstep) {
  static_assert(B % kPB == 0, "whole vectors");
  constexpr int V = B / kPB;
  Vec8<Acc> a[P][V];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int k = 0; k < V; ++k) a[p][k] = init ? load8<Acc>(init + c0 + k * kPB) : Vec8<Acc>{};
  for (int64_t v = 0; v < cnt; ++v) {
    const Acc* wr = w + tap[v] * ldw + c0;
    const T* s = src + off[v] + c0;
#pragma GCC unroll 4
    for (int k = 0; k < V; ++k) {
      const Vec8<Acc> wv = load8<Acc>(wr + k * kPB);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) a[p][k] += wv * load8<Acc>(s + p * pstep + k * kPB);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int k = 0; k < V; ++k) store8<Acc>(dst + p * dstep + c0 + k * kPB, a[p][k]);
}

// Whether pixels first .. first+P-1 read the same taps, shifted by pstep per pixel.
inline bool uniform_group(const int64_t* tap, const int64_t* off, const int64_t* cnt, int64_t first, int64_t P,
                          int64_t K, int64_t pstep) {
  const int64_t* t0 = tap + first * K;
  const int64_t* o0 = off + first * K;
  for (int64_t p = 1; p < P; ++p) {
    if (cnt[first + p] != cnt[first]) return false;
    for (int64_t v = 0; v < cnt[first]; ++v)
      if (tap[(first + p) * K + v] != t0[v] || off[(first + p) * K + v] != o0[v] + p * pstep) return false;
  }
  return true;
}

// How often row_pixels steps its prefetch over a row: once per pixel group and block of
// 16 channels, a few lines each, as bursts of prefetches stall the loads behind them.
inline int64_t row_pixel_steps(int64_t npix, int64_t nch) { return (npix + 3) / 4 * std::max<int64_t>(1, nch / 16); }

// A row of npix pixels (tap lists per pixel), nch channels each, written at dst + x * dstep.
template <class Acc, class T>
void row_pixels(const Acc* init, const Acc* w, int64_t ldw, const T* src, const int64_t* tap, const int64_t* off,
                const int64_t* cnt, int64_t npix, int64_t K, int64_t pstep, int64_t nch, int64_t src_div, T* dst,
                int64_t dstep, RowPrefetch* ahead = nullptr) {
  constexpr int P = 4, B = 16;
  int64_t x = 0;
  while (x < npix) {
    if (src_div == 1 && x + P <= npix && uniform_group(tap, off, cnt, x, P, K, pstep)) {
      int64_t c0 = 0;
      for (; c0 + B <= nch; c0 += B) {
        if (ahead) ahead->step();
        pixels_block<B, P>(init, w, ldw, src, &tap[x * K], &off[x * K], cnt[x], pstep, c0, dst + x * dstep, dstep);
      }
      if (c0 < nch)
        for (int64_t p = 0; p < P; ++p)
          pixel_block(init, w, ldw, src, &tap[(x + p) * K], &off[(x + p) * K], cnt[x + p], c0, nch - c0, 1,
                      dst + (x + p) * dstep);
      x += P;
      continue;
    }
    if (ahead) ahead->step();
    for (int64_t c0 = 0; c0 < nch; c0 += kCB)
      pixel_block(init, w, ldw, src, &tap[x * K], &off[x * K], cnt[x], c0, std::min(kCB, nch - c0), src_div,
                  dst + x * dstep);
    ++x;
  }
}

// channels_last, fixed kernel sizes, depth multiplier 1, channels a multiple of kCW,
// float/double, or bf16/fp16 in the SIMD units (converted in registers): per row, one
// block of kCW channels at a time across the whole row, so that the block's tap weights
// (forward, grad_input) or tap sums (grad_weight) stay in registers: one load per multiply-add, where the pixel-group kernels above also load
// a weight. Kernel rows outside the input read a row of zeros; pixels whose taps leave
// the row on the left or right check each tap. Forward+backward float32, 2 threads,
// 3x3 pad 1, against the pixel-group kernels, in alternating runs: (32,960,7,7) 2.1 ->
// 1.7 ms, (32,384,14,14) 2.9 -> 2.3 ms, (32,192,28,28) 5.5 -> 4.2 ms, (32,144,56,56)
// 19 -> 17 ms.

// Where a row walk reads: pixel x, tap column j reads column x * sx + base + j * dj of
// rows of ncols pixels (C channels each).
struct ClRowWalk {
  int64_t C, ncols, nx, sx, base, dj;
  bool inside(int64_t x, int64_t KW) const {
    for (int64_t j = 0; j < KW; ++j) {
      const int64_t col = x * sx + base + j * dj;
      if (col < 0 || col >= ncols) return false;
    }
    return true;
  }
  // [lo, hi): the pixels whose taps all fall inside the row.
  void interior(int64_t KW, int64_t* lo, int64_t* hi) const {
    *lo = 0, *hi = nx;
    while (*lo < *hi && !inside(*lo, KW)) ++*lo;
    while (*hi > *lo && !inside(*hi - 1, KW)) --*hi;
  }
};

// One pass over a row of pixels: the KH_ rows the taps read (stored as T, read as Acc),
// and [lo, hi), the pixels whose taps all fall inside the row.
template <int KH_, int KW_, class Acc, class T>
struct ClRowPass {
  ClRowWalk r;
  const T* rows[KH_];
  int64_t lo, hi;
  ClRowPass(const T* const* rows_in, const ClRowWalk& rw) : r(rw) {
    for (int i = 0; i < KH_; ++i) rows[i] = rows_in[i];
    r.interior(KW_, &lo, &hi);
  }
  // Calls pixel(x, checked) over the row: checked is a compile-time true at the edges.
  template <class Pixel>
  void walk(const Pixel& pixel) const {
    for (int64_t x = 0; x < lo; ++x) pixel(x, std::true_type{});
    for (int64_t x = lo; x < hi; ++x) pixel(x, std::false_type{});
    for (int64_t x = hi; x < r.nx; ++x) pixel(x, std::true_type{});
  }
  // Calls f(t, v) for each tap t = i * KW + j of pixel x that reads inside the row, v
  // the kCW channels from c0 that it reads.
  template <class Checked, class F>
  void taps(int64_t x, int64_t c0, Checked, const F& f) const {
#pragma GCC unroll 7
    for (int i = 0; i < KH_; ++i)
#pragma GCC unroll 7
      for (int j = 0; j < KW_; ++j) {
        const int64_t col = x * r.sx + r.base + j * r.dj;
        if (Checked::value && (col < 0 || col >= r.ncols)) continue;
        f(i * KW_ + j, loadw<Acc>(rows[i] + col * r.C + c0));
      }
  }
};

// dst[x * dstep + c] = init[c] + sum over taps (i, j) of w[(i * KW + j) * C + c] * rows[i][col * C + c]
// (dstep: C, or 2C for every other pixel).
template <int KH_, int KW_, class Acc, class T>
void cl_row_correlate(const T* const* rows, const ClRowWalk& rw, const Acc* w, const Acc* init, T* dst,
                      RowPrefetch* ahead, int64_t dstep) {
  constexpr int K_ = KH_ * KW_;
  const ClRowPass<KH_, KW_, Acc, T> pass(rows, rw);
  const int64_t C = rw.C;
  for (int64_t c0 = 0; c0 < C; c0 += kCW) {
    if (ahead) ahead->step();
    VecW<Acc> wv[K_];
    for (int t = 0; t < K_; ++t) wv[t] = loadw<Acc>(w + t * C + c0);
    const VecW<Acc> v0 = init ? loadw<Acc>(init + c0) : VecW<Acc>{};
    pass.walk([&](int64_t x, auto checked) {
      VecW<Acc> acc = v0;
      pass.taps(x, c0, checked, [&](int t, VecW<Acc> v) { acc += wv[t] * v; });
      storew<Acc>(dst + x * dstep + c0, acc);
    });
  }
}

// part[(i * KW + j) * C + c] += sum over pixels x of g[x * C + c] * rows[i][col * C + c],
// and part[K * C + c] += sum over pixels x of g[x * C + c] (the bias grad, one add per
// pixel in the same walk). Together with the row loop of its own in backward_cl, where
// the bias grad was a separate pass over the row: (32,144,56,56) channels_last
// grad_weight 8.3-9.2 -> 6.0-6.4 ms, and 2.3-2.8 -> 2.0-2.2 ms at stride 2.
template <int KH_, int KW_, class Acc, class T>
void cl_row_weight_grad(const T* const* rows, const ClRowWalk& rw, const T* g, Acc* part, RowPrefetch* ahead) {
  constexpr int K_ = KH_ * KW_;
  const ClRowPass<KH_, KW_, Acc, T> pass(rows, rw);
  const int64_t C = rw.C;
  for (int64_t c0 = 0; c0 < C; c0 += kCW) {
    if (ahead) ahead->step();
    VecW<Acc> acc[K_];
    for (int t = 0; t < K_; ++t) acc[t] = VecW<Acc>{};
    VecW<Acc> gsum = {};
    pass.walk([&](int64_t x, auto checked) {
      const VecW<Acc> gv = loadw<Acc>(g + x * C + c0);
      gsum += gv;
      pass.taps(x, c0, checked, [&](int t, VecW<Acc> v) { acc[t] += gv * v; });
    });
    for (int t = 0; t < K_; ++t) storew<Acc>(part + t * C + c0, loadw<Acc>(part + t * C + c0) + acc[t]);
    storew<Acc>(part + K_ * C + c0, loadw<Acc>(part + K_ * C + c0) + gsum);
  }
}

template <int KH_, int KW_, class Acc, class T>
constexpr bool cl_blocks_compiled() {
  return KH_ > 0 && KW_ > 0 && (std::is_same_v<T, Acc> || kHalfLanes<Acc, T>);
}
inline bool cl_blocks_apply(const Geom& g) { return g.M == 1 && g.C % kCW == 0; }

template <int KH_, int KW_, class Acc, class T>
void forward_cl(const ForwardArgs& a) {
  const Geom& g = a.g;
  const auto* in = static_cast<const T*>(a.input);
  const auto* wt = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const T*>(a.bias);
  auto* out = static_cast<T*>(a.output);
  const int64_t O = num_out_channels(g), K = num_taps(g);
  std::vector<Acc> w(K * O), b(O, Acc(0));  // weight as [tap][channel]
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t t = 0; t < K; ++t) w[t * O + o] = static_cast<Acc>(wt[o * K + t]);
    if (bias) b[o] = static_cast<Acc>(bias[o]);
  }
  const int64_t out_row = g.OW * O;
  if constexpr (cl_blocks_compiled<KH_, KW_, Acc, T>()) {
    if (cl_blocks_apply(g)) {
      const ClRowWalk rw{g.C, g.W, g.OW, g.SW, -g.PL, g.DW};
      parallel_tasks(g.N * g.OH, [&](int64_t begin, int64_t end) {
        const std::vector<T> zeros(g.W * g.C, T(0));
        RowPrefetch ahead;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / g.OH, oh = r % g.OH;
          const T* rows[KH_];
          tap_input_rows<KH_>(g, in, n, oh, zeros.data(), rows);
          int64_t in_bytes = 0;
          const T* next_in = next_row_inputs(g, in, r, r + 1 < end, &in_bytes);
          ahead.reset(next_in, in_bytes, r + 1 < end ? out + (r + 1) * out_row : nullptr,
                      r + 1 < end ? out_row * sizeof(T) : 0, g.C / kCW);
          cl_row_correlate<KH_, KW_, Acc>(rows, rw, w.data(), b.data(), out + r * out_row, &ahead, g.C);
        }
      });
      return;
    }
  }
  parallel_tasks(g.N * g.OH, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap(K * g.OW), off(K * g.OW), cnt(g.OW);
    RowPrefetch ahead;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      for (int64_t ow = 0; ow < g.OW; ++ow) cnt[ow] = valid_taps_out(g, n, oh, ow, &tap[ow * K], &off[ow * K]);
      int64_t in_bytes = 0;
      const T* next_in = next_row_inputs(g, in, r, r + 1 < end, &in_bytes);
      ahead.reset(next_in, in_bytes, r + 1 < end ? out + (r + 1) * out_row : nullptr, r + 1 < end ? out_row * sizeof(T) : 0,
                  row_pixel_steps(g.OW, O));
      // Pixels outermost: the taps' input pixels are contiguous runs of channels, and
      // neighbouring outputs share most of them in L1 (the weights fit in L1 too).
      row_pixels(b.data(), w.data(), O, in, tap.data(), off.data(), cnt.data(), g.OW, K, g.SW * g.C, O, g.M,
                 out + r * g.OW * O, O, &ahead);
    }
  });
}

// pt[q] += sum_k gr[k * gstep + q] * s[k * sstep + q], q < B, summed in registers.
template <int B, class Acc, class T>
inline void row_dot_block(const T* gr, const T* s, int64_t gstep, int64_t sstep, int64_t cnt, Acc* pt) {
  Acc acc[B];
#pragma GCC unroll 32
  for (int q = 0; q < B; ++q) acc[q] = Acc(0);
  for (int64_t k = 0; k < cnt; ++k) {
#pragma GCC unroll 32
    for (int q = 0; q < B; ++q) acc[q] += static_cast<Acc>(gr[k * gstep + q]) * static_cast<Acc>(s[k * sstep + q]);
  }
#pragma GCC unroll 32
  for (int q = 0; q < B; ++q) pt[q] += acc[q];
}

// grad_input and the grad_weight / grad_bias partials in one walk over the rows, where
// stride 1 keeps each image's size (padding 'same'): input row r and output row r read
// the same grad_out rows, so the row pass for grad_weight finds its grad_out row in
// cache, left there by the grad_input pass of the row before, and grad_out comes from
// memory once instead of twice. Against the two walks, float32, 2 threads, 3x3 pad 1,
// grad_input + grad_weight + grad_bias: (32,144,56,56) 12.0 -> 9.1 ms, (32,384,14,14)
// 1.47 -> 1.29 ms. Partials per fixed chunk of rows, as in backward_cl.
template <int KH_, int KW_, class Acc, class T>
void backward_cl_rows_fused(const BackwardArgs& a, const Acc* w, const T* zeros, Acc* part, int64_t chunks,
                            int64_t stride) {
  const Geom& g = a.g;
  const auto* go = static_cast<const T*>(a.grad_out);
  const auto* in = static_cast<const T*>(a.input);
  auto* gi = static_cast<T*>(a.grad_input);
  const int64_t C = g.C, row = g.W * C, rows = g.N * g.H;
  const int64_t row_bytes = row * static_cast<int64_t>(sizeof(T));
  const ClRowWalk gi_walk{C, g.OW, g.W, 1, g.PL, -g.DW}, gw_walk{C, g.W, g.OW, 1, -g.PL, g.DW};
  parallel_tasks(chunks, [&](int64_t begin, int64_t end) {
    RowPrefetch ahead;
    for (int64_t ch = begin; ch < end; ++ch) {
      Acc* P = part + ch * stride;
      const int64_t r_end = (ch + 1) * rows / chunks;
      for (int64_t r = ch * rows / chunks; r < r_end; ++r) {
        const int64_t n = r / g.H, h = r % g.H;
        const T* dyrows[KH_];
        const T* xrows[KH_];
        for (int i = 0; i < KH_; ++i) {
          const int64_t oh = h + g.PT - i * g.DH, ih = h - g.PT + i * g.DH;
          dyrows[i] = oh >= 0 && oh < g.OH ? go + (n * g.OH + oh) * row : zeros;
          xrows[i] = ih >= 0 && ih < g.H ? in + (n * g.H + ih) * row : zeros;
        }
        // The next row's newest grad_out and input rows, and its grad_input row.
        const bool more = r + 1 < r_end;
        const int64_t noh = (r + 1) % g.H + g.PT;
        const bool has_dy = more && noh < g.OH;
        int64_t x_bytes = 0;
        const T* next_x = next_row_inputs(g, in, r, more, &x_bytes);
        ahead.reset(has_dy ? go + ((r + 1) / g.H * g.OH + noh) * row : nullptr, has_dy ? row_bytes : 0,
                    more ? gi + (r + 1) * row : nullptr, more ? row_bytes : 0, 2 * C / kCW, next_x, x_bytes);
        cl_row_correlate<KH_, KW_, Acc>(dyrows, gi_walk, w, static_cast<const Acc*>(nullptr), gi + r * row, &ahead, C);
        cl_row_weight_grad<KH_, KW_, Acc>(xrows, gw_walk, go + r * row, P, &ahead);
      }
    }
  });
}

// channels_last grad_input at stride 2, dilation 1, by phase: input row ih takes the kernel
// rows i with ih + PT - i even, and the input columns of parity e the kernel columns j with
// e + PL - j even, reading grad_out ((ih + PT - i) / 2, (iw + PL - j) / 2). Each (row parity,
// column parity) is then a smaller correlation over grad_out rows, walked as at stride 1
// with that phase's weights in registers, its results every other pixel. Each input sums
// the same taps in the same order as the pixel-group gather it replaces. Against that gather,
// float32, 3x3 pad 1, 2 threads, alternating runs: grad_input of (32,144,56,56) 4.4 -> 2.9
// ms, (32,96,112,112) 12.7 -> 8.2, (32,144,28,28) 0.90 -> 0.55; forward+backward of
// (32,144,56,56) 10.2 -> 9.3 ms.
template <int KH_, int KW_, class Acc, class T>
void input_grad_cl_s2(const Geom& g, const T* go, const Acc* w, const T* zeros, T* gi) {
  const int64_t C = g.C, go_row = g.OW * C, gi_row = g.W * C;
  // Phase (p, q)'s weights: taps (p + 2 ii, q + 2 jj), as [tap][channel].
  std::vector<Acc> pw[2][2];
  for (int p = 0; p < 2; ++p)
    for (int q = 0; q < 2; ++q)
      for (int i = p; i < KH_; i += 2)
        for (int j = q; j < KW_; j += 2) {
          const Acc* tap = w + (i * KW_ + j) * C;
          pw[p][q].insert(pw[p][q].end(), tap, tap + C);
        }
  // Calls f(rows, cols): how many kernel rows and columns have parity p, at compile time.
  const auto parity = [](int p, const auto& f) {
    using std::integral_constant;
    if (p == 0) return f(integral_constant<int, (KH_ + 1) / 2>{}, integral_constant<int, (KW_ + 1) / 2>{});
    return f(integral_constant<int, KH_ / 2>{}, integral_constant<int, KW_ / 2>{});
  };
  parallel_tasks(g.N * g.H, [&](int64_t begin, int64_t end) {
    RowPrefetch ahead;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.H, ih = r % g.H;
      const int p = static_cast<int>((ih + g.PT) % 2);
      const T* rows[(KH_ + 1) / 2];
      for (int i = p, k = 0; i < KH_; i += 2, ++k) {
        const int64_t oh = (ih + g.PT - i) / 2;  // exact: ih + PT - i is even
        rows[k] = oh >= 0 && oh < g.OH ? go + (n * g.OH + oh) * go_row : zeros;
      }
      // The grad_out row the next input row adds (its kernel row 0 or 1), and its grad_input row.
      const bool more = r + 1 < end;
      const int64_t noh = ((r + 1) % g.H + g.PT) / 2, nn = (r + 1) / g.H;
      const bool has = more && noh < g.OH;
      ahead.reset(has ? go + (nn * g.OH + noh) * go_row : nullptr, has ? go_row * sizeof(T) : 0,
                  more ? gi + (r + 1) * gi_row : nullptr, more ? gi_row * sizeof(T) : 0, 2 * C / kCW);
      for (int e = 0; e < 2 && e < g.W; ++e) {
        const int q = static_cast<int>((e + g.PL) % 2);
        const ClRowWalk rw{C, g.OW, (g.W - e + 1) / 2, 1, (e + g.PL - q) / 2, -1};
        parity(p, [&](auto kh, auto) {
          parity(q, [&](auto, auto kw) {
            cl_row_correlate<decltype(kh)::value, decltype(kw)::value, Acc>(
                rows, rw, pw[p][q].data(), static_cast<const Acc*>(nullptr), gi + r * gi_row + e * C, &ahead, 2 * C);
          });
        });
      }
    }
  });
}

template <int KH_, int KW_, class Acc, class T>
void backward_cl(const BackwardArgs& a) {
  const Geom& g = a.g;
  const auto [go, in, wt, gi, gw, gb] = typed_buffers<T>(a);
  const int64_t O = num_out_channels(g), K = num_taps(g), C = g.C, M = g.M;
  std::vector<Acc> w(K * O);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t t = 0; t < K; ++t) w[t * O + o] = static_cast<Acc>(wt[o * K + t]);

  bool blocks = false;
  if constexpr (cl_blocks_compiled<KH_, KW_, Acc, T>()) blocks = cl_blocks_apply(g);
  // A row of zeros for kernel rows that fall outside the tensor (channel-block path).
  const std::vector<T> zeros(blocks ? std::max(g.W, g.OW) * C : 0, T(0));
  const int64_t go_row = g.OW * O, gi_row = g.W * C;
  // grad_weight partials per fixed chunk of output rows (not per thread), summed in
  // chunk order. Within a row: per channel block and tap, the products over the row's
  // outputs are summed in registers, then added to the chunk's partial once. At most 64
  // chunks, and fewer where the partials would pass kPartBytes (many channels): zeroing
  // and summing partials beyond the caches cost (32,960,7,7) grad_weight a quarter of
  // its time.
  constexpr int64_t kPartBytes = 256 << 10;
  const int64_t rows = g.N * g.OH;
  const int64_t stride = (K + 1) * O;
  const int64_t fit = kPartBytes / (stride * static_cast<int64_t>(sizeof(Acc)));
  const int64_t chunks = std::min<int64_t>(rows, std::clamp<int64_t>(fit, 8, 64));
  auto sum_partials = [&](const std::vector<Acc>& part) {
    sum_parts_in_order(part.data(), chunks, stride,
                       [&](int64_t e, Acc v) { put_weight_grad(gw, gb, K, e % O, e / O, v); });
  };
  if constexpr (cl_blocks_compiled<KH_, KW_, Acc, T>()) {
    if (blocks && gi && (gw || gb) && g.SH == 1 && g.SW == 1 && g.OH == g.H && g.OW == g.W) {
      std::vector<Acc> part(chunks * stride, Acc(0));
      backward_cl_rows_fused<KH_, KW_, Acc>(a, w.data(), zeros.data(), part.data(), chunks, stride);
      sum_partials(part);
      return;
    }
  }
  bool gi_done = false;
  if constexpr (cl_blocks_compiled<KH_, KW_, Acc, T>()) {
    if (gi && blocks && g.SH == 1 && g.SW == 1) {
      // Input pixel x, tap (i, j) takes the output at (ih + PT - i*DH, x + PL - j*DW).
      const ClRowWalk rw{C, g.OW, g.W, 1, g.PL, -g.DW};
      parallel_tasks(g.N * g.H, [&](int64_t begin, int64_t end) {
        RowPrefetch ahead;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / g.H, ih = r % g.H;
          const T* rows[KH_];
          for (int i = 0; i < KH_; ++i) {
            const int64_t oh = ih + g.PT - i * g.DH;
            rows[i] = oh >= 0 && oh < g.OH ? go + (n * g.OH + oh) * go_row : zeros.data();
          }
          // The next input row's newest grad_out row and its own grad_input row.
          const int64_t nn = (r + 1) / g.H, noh = (r + 1) % g.H + g.PT;
          const bool has = r + 1 < end && noh < g.OH;
          ahead.reset(has ? go + (nn * g.OH + noh) * go_row : nullptr, has ? go_row * sizeof(T) : 0,
                      r + 1 < end ? gi + (r + 1) * gi_row : nullptr, r + 1 < end ? gi_row * sizeof(T) : 0, C / kCW);
          cl_row_correlate<KH_, KW_, Acc>(rows, rw, w.data(), static_cast<const Acc*>(nullptr), gi + r * gi_row, &ahead,
                                          C);
        }
      });
      gi_done = true;
    }
  }
  if constexpr (cl_blocks_compiled<KH_, KW_, Acc, T>() && KH_ >= 2 && KW_ >= 2) {
    if (gi && !gi_done && blocks && g.SH == 2 && g.SW == 2 && g.DH == 1 && g.DW == 1) {
      input_grad_cl_s2<KH_, KW_, Acc>(g, go, w.data(), zeros.data(), gi);
      gi_done = true;
    }
  }
  if (gi && !gi_done) {
    // Gather: each input position sums the outputs whose taps read it.
    parallel_tasks(g.N * g.H, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> tap(K * g.W), off(K * g.W), cnt(g.W);
      RowPrefetch ahead;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.H, ih = r % g.H;
        for (int64_t iw = 0; iw < g.W; ++iw) cnt[iw] = valid_taps_in(g, n, ih, iw, &tap[iw * K], &off[iw * K]);
        if (M == 1) {
          // The next input row's newest grad_out row (the one its first tap reads) and
          // its own grad_input row.
          const int64_t nn = (r + 1) / g.H, noh = r + 1 < end ? tap_target((r + 1) % g.H, 0, g.SH, g.DH, g.PT, g.OH) : -1;
          ahead.reset(noh >= 0 ? go + (nn * g.OH + noh) * go_row : nullptr, noh >= 0 ? go_row * sizeof(T) : 0,
                      r + 1 < end ? gi + (r + 1) * gi_row : nullptr, r + 1 < end ? gi_row * sizeof(T) : 0,
                      row_pixel_steps(g.W, C));
          // Neighbouring inputs read neighbouring outputs (stride 1): O elements apart.
          row_pixels<Acc, T>(nullptr, w.data(), O, go, tap.data(), off.data(), cnt.data(), g.W, K, O, C, 1,
                             gi + r * g.W * C, C, &ahead);
          continue;
        }
        for (int64_t iw = 0; iw < g.W; ++iw) {
          T* dst = gi + (r * g.W + iw) * C;
          for (int64_t c = 0; c < C; ++c) {
            Acc acc = Acc(0);
            for (int64_t v = 0; v < cnt[iw]; ++v) {
              const int64_t t = tap[iw * K + v];
              const T* s = go + off[iw * K + v];
              for (int64_t m = 0; m < M; ++m) acc += w[t * O + c * M + m] * static_cast<Acc>(s[c * M + m]);
            }
            dst[c] = static_cast<T>(acc);
          }
        }
      }
    });
  }

  if (!gw && !gb) return;
  std::vector<Acc> part(chunks * stride, Acc(0));
  // Outputs ow whose tap j lands inside the input row: iw = ow*SW - PL + j*DW in [0, W).
  std::vector<int64_t> ow_lo(g.KW), ow_hi(g.KW);
  for (int64_t j = 0; j < g.KW; ++j) {
    int64_t lo = 0, hi = g.OW;
    while (lo < hi && tap_source(lo, j, g.SW, g.DW, g.PL) < 0) ++lo;
    while (hi > lo && tap_source(hi - 1, j, g.SW, g.DW, g.PL) >= g.W) --hi;
    ow_lo[j] = lo, ow_hi[j] = hi;
  }
  const int64_t steps = (O + kCB - 1) / kCB * K;  // one per channel block and tap
  parallel_tasks(chunks, [&](int64_t begin, int64_t end) {
    Prefetcher pf_x, pf_g;  // the input rows and the grad_out row the next row adds
    for (int64_t ch = begin; ch < end; ++ch) {
      Acc* P = part.data() + ch * stride;
      const int64_t r_end = (ch + 1) * rows / chunks;
      if constexpr (cl_blocks_compiled<KH_, KW_, Acc, T>()) {
        if (blocks) {
          const ClRowWalk rw{C, g.W, g.OW, g.SW, -g.PL, g.DW};
          RowPrefetch ahead;
          for (int64_t r = ch * rows / chunks; r < r_end; ++r) {
            const int64_t n = r / g.OH, oh = r % g.OH;
            const T* xrows[KH_];
            tap_input_rows<KH_>(g, in, n, oh, zeros.data(), xrows);
            // The next row's grad_out row and the input rows it adds.
            const bool more = r + 1 < r_end;
            int64_t x_bytes = 0;
            const T* next_x = next_row_inputs(g, in, r, more, &x_bytes);
            ahead.reset(next_x, x_bytes, nullptr, 0, C / kCW, go + (r + 1) * g.OW * O,
                        more ? g.OW * O * static_cast<int64_t>(sizeof(T)) : 0);
            cl_row_weight_grad<KH_, KW_, Acc>(xrows, rw, go + r * g.OW * O, P, &ahead);
          }
          continue;
        }
      }
      for (int64_t r = ch * rows / chunks; r < r_end; ++r) {
        const int64_t n = r / g.OH, oh = r % g.OH;
        const T* grow = go + r * g.OW * O;
        const bool more = r + 1 < r_end;
        int64_t x_bytes = 0;
        pf_x.reset(next_row_inputs(g, in, r, more, &x_bytes), x_bytes);
        const int64_t g_bytes = more ? g.OW * O * sizeof(T) : 0;
        pf_g.reset(more ? grow + g.OW * O : nullptr, g_bytes);
        const int x_lines = prefetch_lines_per_row(x_bytes, steps), g_lines = prefetch_lines_per_row(g_bytes, steps);
        for (int64_t o0 = 0; o0 < O; o0 += kCB) {
          const int64_t len = std::min(kCB, O - o0);
          Acc* pb = P + K * O + o0;
          for (int64_t ow = 0; ow < g.OW; ++ow)
            for (int64_t q = 0; q < len; ++q) pb[q] += static_cast<Acc>(grow[ow * O + o0 + q]);
        }
        // Per channel block, all taps: the block's slices of this grad_out row and of
        // the input rows it reads stay in L1.
        for (int64_t o0 = 0; o0 < O; o0 += kCB) {
          const int64_t len = std::min(kCB, O - o0);
          for (int64_t i = 0; i < g.KH; ++i) {
            const int64_t ih = tap_source(oh, i, g.SH, g.DH, g.PT);
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t j = 0; j < g.KW; ++j) {
              pf_x.step(x_lines);
              pf_g.step(g_lines);
              const int64_t lo = ow_lo[j], hi = ow_hi[j];
              if (lo >= hi) continue;
              const T* srow = in + ((n * g.H + ih) * g.W + tap_source(lo, j, g.SW, g.DW, g.PL)) * C;
              const int64_t sstep = g.SW * C;
              const T* grow_lo = grow + lo * O;
              Acc* pt = P + (i * g.KW + j) * O;
              int64_t o = o0;
              if (M == 1) {
                if (len == kCB) {
                  row_dot_block<kCB>(grow_lo + o, srow + o, O, sstep, hi - lo, pt + o);
                  continue;
                }
                for (; o + 8 <= o0 + len; o += 8) row_dot_block<8>(grow_lo + o, srow + o, O, sstep, hi - lo, pt + o);
              }
              for (; o < o0 + len; ++o) {
                Acc acc = Acc(0);
                for (int64_t k = 0; k < hi - lo; ++k)
                  acc += static_cast<Acc>(grow_lo[k * O + o]) * static_cast<Acc>(srow[k * sstep + o / M]);
                pt[o] += acc;
              }
            }
          }
        }
      }
    }
  });
  sum_partials(part);
}

}  // namespace

void forward(const ForwardArgs& a) {
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using Acc = decltype(s);
    with_kernel_size(a.g, [&](auto kh, auto kw) {
      constexpr int KH_ = decltype(kh)::value, KW_ = decltype(kw)::value;
      if constexpr (KH_ > 0)
        if (use_rows<KH_, KW_>(a.g, a.channels_last))
          return a.g.SH == 1 ? forward_rows<KH_, KW_, 1, Acc, T>(a) : forward_rows<KH_, KW_, 2, Acc, T>(a);
      if (use_blocks(a)) return forward_blocked<KH_, KW_, Acc, T>(a);
      if (a.channels_last) return forward_cl<KH_, KW_, Acc, T>(a);
      forward_nchw<KH_, KW_, Acc, T>(a);
    });
  });
}

void backward(const BackwardArgs& a) {
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using Acc = decltype(s);
    with_kernel_size(a.g, [&](auto kh, auto kw) {
      constexpr int KH_ = decltype(kh)::value, KW_ = decltype(kw)::value;
      if constexpr (KH_ > 0)
        if (use_rows<KH_, KW_>(a.g, a.channels_last))
          return a.g.SH == 1 ? backward_rows<KH_, KW_, 1, Acc, T>(a) : backward_rows<KH_, KW_, 2, Acc, T>(a);
      if (use_blocks(a)) return backward_blocks<KH_, KW_, Acc, T>(a);
      if (a.channels_last) return backward_cl<KH_, KW_, Acc, T>(a);
      backward_nchw<KH_, KW_, Acc, T>(a);
    });
  });
}

}  // namespace FO_CPU_NS
}  // namespace depthwise
}  // namespace fusedopt
