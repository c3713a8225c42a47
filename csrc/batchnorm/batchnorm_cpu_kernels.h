// CPU kernel bodies of batch norm, compiled once per instruction set by
// batchnorm_cpu_avx512.cpp, batchnorm_cpu_avx2.cpp and batchnorm_cpu_scalar.cpp (no
// include guard on purpose).
// The including unit defines FO_CPU_NS and brings Lanes<T> into it, plus bn_hsum,
// bn_relu and bn_keep_if_pos for its vector type.
//
// Memory walks:
//  - planes (NCHW): threads over channels. A channel's N planes are walked for the
//    statistics and then again to normalise; the second walk finds them in L2 (a
//    (32, 56x56) float channel is 400 KB), so x comes from memory once. The backward
//    does the same with (dy, x[, out]).
//  - rows (channels_last): threads over blocks of rows with C-wide accumulators per
//    block, merged in block order (deterministic for a given thread count).
// Statistics are taken per chunk (a piece of a plane, or a few rows) in two passes
// from L1: a pivot-shifted sum for the chunk mean, then sum (x - m) and (x - m)^2
// (the corrected two-pass formula); chunks are merged in double (Chan).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "batchnorm_kernels.h"
#include "batchnorm_math.h"

namespace fusedopt {
namespace batchnorm {
namespace FO_CPU_NS {

using fusedopt::FO_CPU_NS::Lanes;

inline float bn_hsum(float x) { return x; }
inline double bn_hsum(double x) { return x; }

template <class T>
using MathOf = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

template <class Body>
void dispatch(c10::ScalarType dt, const Body& body) {
  switch (dt) {
    case c10::ScalarType::Float: return body(float{});
    case c10::ScalarType::Double: return body(double{});
    case c10::ScalarType::BFloat16: return body(c10::BFloat16{});
    case c10::ScalarType::Half: return body(c10::Half{});
    default: break;
  }
}

constexpr int64_t kPlaneChunk = 2048;   // elements of one plane per statistics chunk
constexpr int64_t kRowChunkElems = 16384;  // elements (rows x C) per statistics chunk

// At least 64 rows, as each chunk costs C merges (divisions); at most 1024, as a
// channel's sums are float lanes within a chunk.
inline int64_t row_chunk(int64_t C) {
  return std::min<int64_t>(1024, std::max<int64_t>(64, kRowChunkElems / std::max<int64_t>(C, 1)));
}
// Rows of the statistics chunks after a block's first: those are shifted by the block's
// mean so far and walked once, so they need not fit in L1, and longer ones cut the
// merges (C divisions each): (64,256,14,14) float32 channels_last, 2 threads,
// alternating runs, statistics 0.43 -> 0.36 ms and the training forward 1.01 -> 0.91 ms
// (64 -> 512 rows; a plain sum over x takes 0.28 ms).
inline int64_t row_chunk_shifted(int64_t C) { return std::max<int64_t>(row_chunk(C), 512); }

// ---------------------------------------------------------------- planes

// The last, partial vector of a run: loaded through a zero-padded buffer and stored
// back element by element, so that the full-width formula serves the tail too (a
// scalar tail per small plane, converting bf16 one element at a time, cost more than
// the vector body on 14x14 planes).
template <class T>
inline typename Lanes<T>::V load_part(const T* p, int64_t n) {
  T buf[Lanes<T>::N];
  for (int k = 0; k < Lanes<T>::N; ++k) buf[k] = k < n ? p[k] : T(0);
  return Lanes<T>::load(buf);
}
template <class T>
inline void store_part(T* p, int64_t n, typename Lanes<T>::V v) {
  T buf[Lanes<T>::N];
  Lanes<T>::store(buf, v);
  for (int64_t k = 0; k < n; ++k) p[k] = buf[k];
}
// v in lanes [0, n), zero in the others.
template <class T>
inline typename Lanes<T>::V first_lanes(typename Lanes<T>::V v, int64_t n) {
  using S = MathOf<T>;
  S rem[Lanes<T>::N];
  for (int k = 0; k < Lanes<T>::N; ++k) rem[k] = static_cast<S>(n - k);
  return bn_keep_if_pos(Lanes<S>::load(rem), v);
}
// Runs of at least one vector end with the vector that ends at the run's end,
// overlapping the body: element passes simply rewrite the overlap (outputs never alias
// inputs), reductions mask it with this: positive in the last n lanes.
template <class T>
inline typename Lanes<T>::V last_lanes_mask(int64_t n) {
  using S = MathOf<T>;
  constexpr int N = Lanes<T>::N;
  S m[N];
  for (int k = 0; k < N; ++k) m[k] = static_cast<S>(k - (N - n) + 1);
  return Lanes<S>::load(m);
}

// The next plane of a channel (image n + 1), requested line by line while the current
// one is walked: a plane is a few KiB of its own pages, where the hardware prefetcher
// stops, and a store to a line not in cache waits for it. Reads are requested on the
// first walk over a plane (statistics of large planes, backward sums), whose data comes
// from memory; the second walk finds the channel in L2. Forward+backward interleaved with
// torch's, medians of alternating runs: the read requests took (32,64,56,56) float32
// from 6.9 to 6.2 ms, bfloat16 from 3.6 to 3.2 ms, and (8,32,112,112) float32 from 2.84
// to 2.71 ms. The write requests had taken about 8% off before that.
template <class T, int kWrite>
struct PlaneAhead {
  const char* next = nullptr;
  PlaneAhead() = default;
  // Element `offset` of plane (n + 1, c) of `base` (nothing for the last image).
  PlaneAhead(const T* base, const Geom& g, int64_t n, int64_t c, int64_t offset = 0) {
    if (base && n + 1 < g.N) next = reinterpret_cast<const char*>(base + ((n + 1) * g.C + c) * g.inner + offset);
  }
  // Call for every step [i, i + n) of the walk: requests the lines that start there.
  void at(int64_t i, int64_t n) const {
    constexpr int64_t kLine = 64 / sizeof(T);
    if (!next) return;
    for (int64_t j = (i + kLine - 1) / kLine * kLine; j < i + n; j += kLine)
      __builtin_prefetch(next + j * sizeof(T), kWrite, 3);
  }
};
template <class T>
using ReadAhead = PlaneAhead<T, 0>;
template <class T>
using WriteAhead = PlaneAhead<T, 1>;

// ReadAhead on up to three inputs (null: none) of the backward's first walk (the sums),
// large planes and small: a small plane's next image is a page away, where the hardware
// prefetcher does not follow. Medians of three alternating runs of two builds, the
// backward op alone after 256 MB of other writes: (64,256,14,14) bfloat16 1.20-1.26 ->
// 0.88-1.02 ms, (32,960,7,7) float32 1.11-1.23 -> 0.95-1.05 ms, (64,256,14,14) float32
// level; the module's forward+backward interleaved with torch's: 0-10% less, none
// slower. The same request in the statistics walk of small planes measured level, and
// in the element walks of eval mode, whose inputs also come from memory, slower:
// (32,64,56,56) float32 grad_input 1.9 -> 2.1 ms, interleaved with torch's eval forward.
template <class T>
struct InputsAhead {
  ReadAhead<T> in[3];
  InputsAhead(const Geom& g, int64_t n, int64_t c, const T* a, const T* b, const T* d) {
    in[0] = ReadAhead<T>(a, g, n, c);
    in[1] = ReadAhead<T>(b, g, n, c);
    in[2] = ReadAhead<T>(d, g, n, c);
  }
  void at(int64_t i, int64_t n) const {
    for (const ReadAhead<T>& r : in) r.at(i, n);
  }
};

// (count, mean, M2) of a chunk: `planes` runs of len contiguous elements, plane_stride
// apart (several small planes of one channel, or a piece of one large plane). Taken
// from the sums of (x - m) and (x - m)^2 around a shift m near their mean (the
// corrected two-pass formula, exact for any m but precise only when m is close). The
// first chunk of a channel finds m with a pivot-shifted walk over the chunk (served by
// L1/L2 the second time); later chunks shift by the channel's mean so far, in one walk.
// `ahead` requests the next chunk during the sums walk.
template <class T>
Welford chunk_stats(const T* p, int64_t plane_stride, int64_t planes, int64_t len, const MathOf<T>* shift,
                    const ReadAhead<T>& ahead = {}) {
  using L = Lanes<T>;
  using V = typename L::V;
  using S = MathOf<T>;
  constexpr int N = L::N;
  Welford w;
  if (len <= 0 || planes <= 0) return w;
  const V tail = last_lanes_mask<T>(len % N);
  S m;
  if (shift) {
    m = *shift;
  } else {
    const S pivot = static_cast<S>(p[0]);
    const V vp(pivot);
    V a0(S(0)), a1(S(0));
    S sum = 0;
    for (int64_t k = 0; k < planes; ++k) {
      const T* q = p + k * plane_stride;
      int64_t i = 0;
      for (; i + 2 * N <= len; i += 2 * N) {
        V u0, u1;
        L::load2(q + i, u0, u1);
        a0 = a0 + (u0 - vp);
        a1 = a1 + (u1 - vp);
      }
      for (; i + N <= len; i += N) a0 = a0 + (L::load(q + i) - vp);
      if (i < len)
        a1 = a1 + (len >= N ? bn_keep_if_pos(tail, L::load(q + len - N) - vp)
                            : first_lanes<T>(load_part(q + i, len - i) - vp, len - i));
    }
    sum += bn_hsum(a0 + a1);
    m = pivot + sum / static_cast<S>(len * planes);
  }
  const double n = static_cast<double>(len * planes);
  // A shift further than one standard deviation from the chunk's mean (samples whose
  // means differ a lot) costs precision: walk the chunk again around the corrected mean.
  for (int attempt = 0;; ++attempt) {
    const V vm(m);
    V d0(S(0)), d1(S(0)), q0(S(0)), q1(S(0));
    double d = 0.0, q = 0.0;
    for (int64_t k = 0; k < planes; ++k) {
      const T* r = p + k * plane_stride;
      int64_t i = 0;
      for (; i + 2 * N <= len; i += 2 * N) {
        ahead.at(i, 2 * N);
        V e0, e1;
        L::load2(r + i, e0, e1);
        e0 = e0 - vm;
        e1 = e1 - vm;
        d0 = d0 + e0;
        d1 = d1 + e1;
        q0 = q0 + e0 * e0;
        q1 = q1 + e1 * e1;
      }
      for (; i + N <= len; i += N) {
        const V e0 = L::load(r + i) - vm;
        d0 = d0 + e0;
        q0 = q0 + e0 * e0;
      }
      if (i < len) {
        const V e1 = len >= N ? bn_keep_if_pos(tail, L::load(r + len - N) - vm)
                              : first_lanes<T>(load_part(r + i, len - i) - vm, len - i);
        d1 = d1 + e1;
        q1 = q1 + e1 * e1;
      }
    }
    d += bn_hsum(d0 + d1);
    q += bn_hsum(q0 + q1);
    if (attempt == 0 && shift && d * d > n * (q - d * d / n)) {
      m = static_cast<S>(static_cast<double>(m) + d / n);
      continue;
    }
    w.n = n;
    w.mean = static_cast<double>(m) + d / n;
    w.m2 = std::max(0.0, q - d * d / n);
    return w;
  }
}

// Channels per block of the fused plane walks. Small planes (under kPlaneChunk
// elements) are walked image by image across a block of channels, whose planes lie
// side by side in memory: one run of several KB per image instead of scattered runs of a
// few hundred bytes. A block's planes, up to 512 KB per tensor, stay in L2 for the second
// walk. Each channel's own sums are those of a walk of that channel alone, in the same
// order, so results do not depend on the block. Forward alone, interleaved with torch's
// forward+backward as in the benchmark, (64,256,14,14): float32 1.35 -> 1.08 ms, bf16
// 0.83 -> 0.72 ms.
constexpr int64_t kMaxPlaneBlock = 8;
inline int64_t plane_block(const Geom& g, size_t elem_bytes, int64_t block_bytes = int64_t{512} << 10) {
  if (g.inner >= kPlaneChunk) return 1;
  const int64_t channel_bytes = std::max<int64_t>(1, g.N * g.inner * static_cast<int64_t>(elem_bytes));
  return std::clamp<int64_t>(block_bytes / channel_bytes, 1, kMaxPlaneBlock);
}
// Blocks of bwd_fused, whose element pass on one block runs beside the reduction of the
// next: smaller, as both blocks' inputs share L2. (64,256,14,14) float32 backward op
// after 256 MB of other writes, alternating runs: 128 KB 1.76-1.79 ms, 192 KB
// 1.68-1.73, 256 KB 1.75-1.85, 512 KB 1.90-1.96 (one block after the other: 1.83-1.97).
constexpr int64_t kPipeBlockBytes = int64_t{192} << 10;
// Elements per turn of bwd_fused's two walks (a multiple of every 2N): 128 and 256
// measured alike.
constexpr int64_t kBwdPiece = 256;

// Blocks of B channels per thread task: enough for kTaskElems elements (torch's own
// grain, at::internal::GRAIN_SIZE), so that a small input runs inline instead of waking
// the other threads for a parallel region.
constexpr int64_t kTaskElems = 32768;
inline int64_t plane_grain(const Geom& g, int64_t B) {
  return std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, B * g.N * g.inner));
}
// Calls f(b0, b1) for ranges of the blocks of B channels, threads over blocks.
template <class F>
void parallel_plane_blocks(const Geom& g, int64_t B, const F& f) {
  at::parallel_for(0, (g.C + B - 1) / B, plane_grain(g, B), f);
}
// Calls f(c0, c1) for the plane_block blocks of channels, threads over blocks.
template <class F>
void for_plane_blocks(const Geom& g, size_t elem_bytes, const F& f) {
  const int64_t B = plane_block(g, elem_bytes);
  parallel_plane_blocks(g, B, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) f(blk * B, std::min(g.C, (blk + 1) * B));
  });
}

// The planes (n, c) of channels [c0, c1), image by image (see plane_block), one per
// next(), so that two walks can run side by side.
struct BlockPlanes {
  int64_t N, c0, c1, n = 0, c = c0;
  bool next(int64_t& pn, int64_t& pc) {
    if (c0 >= c1 || n >= N) return false;
    pn = n;
    pc = c;
    if (++c == c1) {
      c = c0;
      ++n;
    }
    return true;
  }
};
// Calls f(n, c) for the planes of channels [c0, c1), in BlockPlanes' order.
template <class F>
void for_block_planes(const Geom& g, int64_t c0, int64_t c1, const F& f) {
  BlockPlanes walk{g.N, c0, c1};
  for (int64_t n, c; walk.next(n, c);) f(n, c);
}

// (count, mean, M2) of each channel of [c0, c1): chunks of kPlaneChunk elements, a
// piece of a plane or several small planes, merged in image order (Chan); each chunk is
// shifted by its channel's mean so far (see chunk_stats). Small planes go image group by
// image group across the channels (see plane_block); a channel's chunks and merges do
// not depend on the block.
template <class T>
void plane_block_stats(const T* x, const Geom& g, int64_t c0, int64_t c1, Welford* out) {
  using S = MathOf<T>;
  S shift[kMaxPlaneBlock];
  auto take = [&](int64_t c, const T* p, int64_t planes, int64_t len, const ReadAhead<T>& ahead = {}) {
    Welford& acc = out[c - c0];
    welford_merge(acc, chunk_stats(p, g.C * g.inner, planes, len, acc.n > 0 ? &shift[c - c0] : nullptr, ahead));
    shift[c - c0] = static_cast<S>(acc.mean);
  };
  for (int64_t c = c0; c < c1; ++c) out[c - c0] = Welford{};
  if (g.inner >= kPlaneChunk) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t s = 0; s < g.inner; s += kPlaneChunk)
          take(c, x + (n * g.C + c) * g.inner + s, 1, std::min(kPlaneChunk, g.inner - s),
               ReadAhead<T>(x, g, n, c, s));
    return;
  }
  // Small planes: several per chunk, so that per-chunk costs (merge, sums) stay small.
  const int64_t per = std::max<int64_t>(1, kPlaneChunk / std::max<int64_t>(g.inner, 1));
  for (int64_t n = 0; n < g.N; n += per)
    for (int64_t c = c0; c < c1; ++c) take(c, x + (n * g.C + c) * g.inner, std::min(per, g.N - n), g.inner);
}

// Plane (n, c) of the output.
template <class T, class S>
void plane_apply(const T* x, T* y, const T* res, bool relu, const Geom& g, int64_t n, int64_t c, S mean, S scale,
                 S bias) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int N = L::N;
  const V vm(mean), vs(scale), vb(bias), zero(S(0));
  const bool has_res = res != nullptr;
  const int64_t off = (n * g.C + c) * g.inner;
  const T* px = x + off;
  T* py = y + off;
  const T* pr = has_res ? res + off : nullptr;
  const WriteAhead<T> ahead(y, g, n, c);
  int64_t i = 0;
  for (; i + 2 * N <= g.inner; i += 2 * N) {
    ahead.at(i, 2 * N);
    V v0, v1, r0 = zero, r1 = zero;
    L::load2(px + i, v0, v1);
    if (has_res) L::load2(pr + i, r0, r1);
    L::store2(py + i, bn_finish(bn_forward(v0, vm, vs, vb), r0, has_res, relu),
              bn_finish(bn_forward(v1, vm, vs, vb), r1, has_res, relu));
  }
  for (; i + N <= g.inner; i += N) {
    ahead.at(i, N);
    const V v = bn_forward(L::load(px + i), vm, vs, vb);
    L::store(py + i, bn_finish(v, has_res ? L::load(pr + i) : zero, has_res, relu));
  }
  if (i < g.inner && g.inner >= N) {
    const int64_t j = g.inner - N;
    const V v = bn_forward(L::load(px + j), vm, vs, vb);
    L::store(py + j, bn_finish(v, has_res ? L::load(pr + j) : zero, has_res, relu));
  } else if (i < g.inner) {
    const int64_t rem = g.inner - i;
    const V v = bn_forward(load_part(px + i, rem), vm, vs, vb);
    store_part(py + i, rem, bn_finish(v, has_res ? load_part(pr + i, rem) : zero, has_res, relu));
  }
}

// dy' of 2N elements (load2's lane order): dy, kept where the forward output (out, the
// relu mask; null without relu) was positive.
template <class T>
inline void load2_dy(const T* dy, const T* out, typename Lanes<T>::V& d0, typename Lanes<T>::V& d1) {
  Lanes<T>::load2(dy, d0, d1);
  if (out) {
    typename Lanes<T>::V o0, o1;
    Lanes<T>::load2(out, o0, o1);
    d0 = bn_keep_if_pos(o0, d0);
    d1 = bn_keep_if_pos(o1, d1);
  }
}

// Sums of dy' and dy' * (x - mean) over one channel, added to plane by plane (in image
// order): float lanes, flushed into double every kPlaneChunk elements (several small
// planes share one flush).
template <class T>
struct PlaneSums {
  using V = typename Lanes<T>::V;
  V a = V(MathOf<T>(0)), b = V(MathOf<T>(0));
  double ta = 0.0, tb = 0.0;
  int64_t pending = 0;
  double sum_dy() const { return ta + bn_hsum(a); }
  double sum_dy_xmu() const { return tb + bn_hsum(b); }
};

// The reduction over plane (n, c) into `sums`, in runs: run(s0, s1) adds elements
// [s0, s1) (s0 a multiple of 2N), so that another walk can take turns with it within
// the plane.
template <class T>
class PlaneReduce {
  using L = Lanes<T>;
  using V = typename L::V;
  using S = MathOf<T>;
  static constexpr int N = L::N;

 public:
  PlaneReduce(const T* dy, const T* x, const T* out, const Geom& g, int64_t n, int64_t c, S mean,
              PlaneSums<T>& sums)
      : pd_(dy + (n * g.C + c) * g.inner),
        px_(x + (n * g.C + c) * g.inner),
        po_(out ? out + (n * g.C + c) * g.inner : nullptr),
        vm_(mean),
        tail_(last_lanes_mask<T>(g.inner % N)),  // for the plane's last, partial vector
        ahead_(g, n, c, dy, x, out),
        sums_(sums) {}

  void run(int64_t s0, int64_t s1) {
    const T *pd = pd_, *px = px_, *po = po_;
    const V vm = vm_, tail = tail_;
    // Field by field: a copy of the whole struct would wait on the stores at the end of
    // the last run (store forwarding); that took 5% of a bf16 (64,256,14,14) backward.
    V a = sums_.a, b = sums_.b;
    double ta = sums_.ta, tb = sums_.tb;
    int64_t pending = sums_.pending;
    for (int64_t s = s0, e; s < s1; s = e) {
      e = std::min(s1, (s / kPlaneChunk + 1) * kPlaneChunk);  // flushes stay at chunk ends
      int64_t i = s;
      if (po) {
        for (; i + 2 * N <= e; i += 2 * N) {
          ahead_.at(i, 2 * N);
          V d0, d1, x0, x1;
          load2_dy(pd + i, po + i, d0, d1);
          L::load2(px + i, x0, x1);
          a = a + (d0 + d1);
          b = b + (d0 * (x0 - vm) + d1 * (x1 - vm));
        }
        for (; i + N <= e; i += N) {
          const V d = bn_keep_if_pos(L::load(po + i), L::load(pd + i));
          a = a + d;
          b = b + d * (L::load(px + i) - vm);
        }
      } else {
        for (; i + 2 * N <= e; i += 2 * N) {
          ahead_.at(i, 2 * N);
          V d0, d1, x0, x1;
          L::load2(pd + i, d0, d1);
          L::load2(px + i, x0, x1);
          a = a + (d0 + d1);
          b = b + (d0 * (x0 - vm) + d1 * (x1 - vm));
        }
        for (; i + N <= e; i += N) {
          const V d = L::load(pd + i);
          a = a + d;
          b = b + d * (L::load(px + i) - vm);
        }
      }
      if (i < e && e - s >= N) {  // the overlapping last vector, its first lanes masked
        const int64_t j = e - N;
        V d = bn_keep_if_pos(tail, L::load(pd + j));
        if (po) d = bn_keep_if_pos(L::load(po + j), d);
        a = a + d;
        b = b + d * (L::load(px + j) - vm);
      } else if (i < e) {  // zero padding: dy' = 0 adds nothing
        V d = load_part(pd + i, e - i);
        if (po) d = bn_keep_if_pos(load_part(po + i, e - i), d);
        a = a + d;
        b = b + d * (load_part(px + i, e - i) - vm);
      }
      pending += e - s;
      if (pending >= kPlaneChunk) {
        ta += bn_hsum(a);
        tb += bn_hsum(b);
        a = V(S(0));
        b = V(S(0));
        pending = 0;
      }
    }
    sums_.a = a;
    sums_.b = b;
    sums_.ta = ta;
    sums_.tb = tb;
    sums_.pending = pending;
  }

 private:
  const T *pd_, *px_, *po_;
  V vm_, tail_;
  InputsAhead<T> ahead_;
  PlaneSums<T>& sums_;
};

template <class T, class S>
void plane_reduce(const T* dy, const T* x, const T* out, const Geom& g, int64_t n, int64_t c, S mean,
                  PlaneSums<T>& sums) {
  PlaneReduce<T>(dy, x, out, g, n, c, mean, sums).run(0, g.inner);
}

// grad_input (and the residual's grad) of plane (n, c), in runs as PlaneReduce.
template <class T>
class PlaneElemt {
  using L = Lanes<T>;
  using V = typename L::V;
  using S = MathOf<T>;
  static constexpr int N = L::N;

 public:
  PlaneElemt(const T* dy, const T* x, const T* out, T* dx, T* dres, const Geom& g, int64_t n, int64_t c,
             const BwdCoeffs<S>& k)
      : off_((n * g.C + c) * g.inner),
        dy_(dy),
        x_(x),
        out_(out),
        dx_(dx),
        dres_(dres),
        vm_(k.mean),
        vmd_(k.mean_dy),
        vk_(k.k),
        va_(k.a),
        ahead_(dx ? dx : dres, g, n, c) {}

  void run(int64_t s0, int64_t s1) const {
    const V vm = vm_, vmd = vmd_, vk = vk_, va = va_;
    const WriteAhead<T> ahead = ahead_;  // a local, which the stores below cannot alias
    const T* pd = dy_ + off_;
    const T* px = x_ + off_;
    const T* po = out_ ? out_ + off_ : nullptr;
    T* pdx = dx_ ? dx_ + off_ : nullptr;
    T* pdr = dres_ ? dres_ + off_ : nullptr;
    int64_t i = s0;
    for (; i + 2 * N <= s1; i += 2 * N) {
      ahead.at(i, 2 * N);
      V d0, d1, x0, x1;
      load2_dy(pd + i, po ? po + i : nullptr, d0, d1);
      if (pdr) L::store2(pdr + i, d0, d1);
      if (pdx) {
        L::load2(px + i, x0, x1);
        L::store2(pdx + i, bn_grad_input(d0, x0, vm, vmd, vk, va), bn_grad_input(d1, x1, vm, vmd, vk, va));
      }
    }
    for (; i + N <= s1; i += N) {
      ahead.at(i, N);
      V d = L::load(pd + i);
      if (po) d = bn_keep_if_pos(L::load(po + i), d);
      if (pdr) L::store(pdr + i, d);
      if (pdx) L::store(pdx + i, bn_grad_input(d, L::load(px + i), vm, vmd, vk, va));
    }
    if (i < s1 && s1 >= N) {  // the vector that ends at s1, overlapping what came before
      const int64_t j = s1 - N;
      V d = L::load(pd + j);
      if (po) d = bn_keep_if_pos(L::load(po + j), d);
      if (pdr) L::store(pdr + j, d);
      if (pdx) L::store(pdx + j, bn_grad_input(d, L::load(px + j), vm, vmd, vk, va));
    } else if (i < s1) {
      const int64_t rem = s1 - i;
      V d = load_part(pd + i, rem);
      if (po) d = bn_keep_if_pos(load_part(po + i, rem), d);
      if (pdr) store_part(pdr + i, rem, d);
      if (pdx) store_part(pdx + i, rem, bn_grad_input(d, load_part(px + i, rem), vm, vmd, vk, va));
    }
  }

 private:
  int64_t off_;
  const T *dy_, *x_, *out_;
  T *dx_, *dres_;
  V vm_, vmd_, vk_, va_;
  WriteAhead<T> ahead_;
};

template <class T, class S>
void plane_elemt(const T* dy, const T* x, const T* out, T* dx, T* dres, const Geom& g, int64_t n, int64_t c,
                 const BwdCoeffs<S>& k) {
  PlaneElemt<T>(dy, x, out, dx, dres, g, n, c, k).run(0, g.inner);
}

// ---------------------------------------------------------------- rows

// Row blocks: one per thread, in a fixed order, so merged results do not depend on
// scheduling.
inline int64_t row_blocks(int64_t M) {
  const int64_t per = 64;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (M + per - 1) / per));
}

// Statistics of K vectors of channels [c0, c0 + K*N) over rows [s, e) of one chunk, with
// the accumulators in registers: chunk mean m (pivot-shifted sum), then the sums of
// (x - m) and (x - m)^2. The chunk (a few KB) is in L1 for the second walk.
// With shift (the block's per-channel means so far), the shift replaces the first walk,
// as in chunk_stats.
template <int K, class T, class S>
inline void rows_chunk_stats(const T* x, int64_t C, int64_t s, int64_t e, int64_t c0, const S* shift, S* m, S* dsum,
                             S* qsum) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int N = L::N;
  V mm[K], d[K], q[K];
  if (shift) {
#pragma GCC unroll 4
    for (int j = 0; j < K; ++j) mm[j] = Lanes<S>::load(shift + c0 + j * N);
  } else {
    V piv[K], a[K];
#pragma GCC unroll 4
    for (int j = 0; j < K; ++j) {
      piv[j] = L::load(x + s * C + c0 + j * N);
      a[j] = V(S(0));
    }
    for (int64_t r = s; r < e; ++r) {
      const T* p = x + r * C + c0;
#pragma GCC unroll 4
      for (int j = 0; j < K; ++j) a[j] = a[j] + (L::load(p + j * N) - piv[j]);
    }
    const V inv_len(S(1) / static_cast<S>(e - s));
#pragma GCC unroll 4
    for (int j = 0; j < K; ++j) mm[j] = piv[j] + a[j] * inv_len;
  }
#pragma GCC unroll 4
  for (int j = 0; j < K; ++j) {
    d[j] = V(S(0));
    q[j] = V(S(0));
  }
  for (int64_t r = s; r < e; ++r) {
    const T* p = x + r * C + c0;
#pragma GCC unroll 4
    for (int j = 0; j < K; ++j) {
      const V t = L::load(p + j * N) - mm[j];
      d[j] = d[j] + t;
      q[j] = q[j] + t * t;
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < K; ++j) {
    Lanes<S>::store(m + c0 + j * N, mm[j]);
    Lanes<S>::store(dsum + c0 + j * N, d[j]);
    Lanes<S>::store(qsum + c0 + j * N, q[j]);
  }
}

template <class T>
void rows_stats(const T* x, const Geom& g, const StatsOut& o) {
  using L = Lanes<T>;
  using S = MathOf<T>;
  constexpr int N = L::N;
  const int64_t C = g.C, M = g.count();
  const int64_t B = row_blocks(M);
  std::vector<double> bn(B * C, 0.0), bmean(B * C, 0.0), bm2(B * C, 0.0);
  const int64_t R = row_chunk(C), R_shifted = row_chunk_shifted(C);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<S> m(C), dsum(C), qsum(C), shift(C);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = M * b / B, r1 = M * (b + 1) / B;
      double* wn = &bn[b * C];
      double* wm = &bmean[b * C];
      double* w2 = &bm2[b * C];
      for (int64_t s = r0, e; s < r1; s = e) {
        e = std::min(r1, s + (s > r0 ? R_shifted : R));
        const S* sh = s > r0 ? shift.data() : nullptr;
        int64_t c = 0;
        for (; c + 4 * N <= C; c += 4 * N) rows_chunk_stats<4>(x, C, s, e, c, sh, m.data(), dsum.data(), qsum.data());
        for (; c + 2 * N <= C; c += 2 * N) rows_chunk_stats<2>(x, C, s, e, c, sh, m.data(), dsum.data(), qsum.data());
        for (; c + N <= C; c += N) rows_chunk_stats<1>(x, C, s, e, c, sh, m.data(), dsum.data(), qsum.data());
        for (; c < C; ++c) {  // channels past the last full vector
          if (sh) {
            m[c] = sh[c];
          } else {
            const S piv = static_cast<S>(x[s * C + c]);
            S acc = 0;
            for (int64_t r = s; r < e; ++r) acc += static_cast<S>(x[r * C + c]) - piv;
            m[c] = piv + acc / static_cast<S>(e - s);
          }
          S dd = 0, qq = 0;
          for (int64_t r = s; r < e; ++r) {
            const S t = static_cast<S>(x[r * C + c]) - m[c];
            dd += t;
            qq += t * t;
          }
          dsum[c] = dd;
          qsum[c] = qq;
        }
        const double n = static_cast<double>(e - s);
        if (sh) {
          // As in chunk_stats: shifts further than a standard deviation from the chunk's
          // means are replaced by the corrected means and the chunk walked again.
          bool redo = false;
          for (int64_t cc = 0; cc < C; ++cc) {
            const double d = dsum[cc], q = qsum[cc];
            if (d * d > n * (q - d * d / n)) redo = true;
          }
          if (redo) {
            for (int64_t cc = 0; cc < C; ++cc) shift[cc] = static_cast<S>(static_cast<double>(m[cc]) + dsum[cc] / n);
            c = 0;
            for (; c + 4 * N <= C; c += 4 * N)
              rows_chunk_stats<4>(x, C, s, e, c, sh, m.data(), dsum.data(), qsum.data());
            for (; c + 2 * N <= C; c += 2 * N)
              rows_chunk_stats<2>(x, C, s, e, c, sh, m.data(), dsum.data(), qsum.data());
            for (; c + N <= C; c += N) rows_chunk_stats<1>(x, C, s, e, c, sh, m.data(), dsum.data(), qsum.data());
            for (; c < C; ++c) {
              m[c] = sh[c];
              S dd = 0, qq = 0;
              for (int64_t r = s; r < e; ++r) {
                const S t = static_cast<S>(x[r * C + c]) - m[c];
                dd += t;
                qq += t * t;
              }
              dsum[c] = dd;
              qsum[c] = qq;
            }
          }
        }
        for (int64_t cc = 0; cc < C; ++cc) {
          const double d = dsum[cc];
          welford_merge(wn[cc], wm[cc], w2[cc], n, static_cast<double>(m[cc]) + d / n,
                        std::max(0.0, static_cast<double>(qsum[cc]) - d * d / n));
          shift[cc] = static_cast<S>(wm[cc]);
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    Welford w;
    for (int64_t b = 0; b < B; ++b) welford_merge(w.n, w.mean, w.m2, bn[b * C + c], bmean[b * C + c], bm2[b * C + c]);
    o.n[c] = w.n;
    o.mean[c] = w.mean;
    o.m2[c] = w.m2;
  }
}

// The row kernels take channels 2N at a time with load2/store2 only where that form
// permutes lanes (bf16), as it saves shuffles there. For float it measured slower (about
// 8% on a (32,64,56,56) channels_last forward+backward) than the plain vector loop.
template <class T>
constexpr bool kRowsPaired = Lanes<T>::pair_lane(Lanes<T>::N) != Lanes<T>::N;

// Per-channel coefficients reordered so that, for each 2N channels, two plain vector
// loads give them in the lane order of Lanes<T>::load2.
// (Empty where kRowsPaired is false: nothing reads it.)
template <class T, class S>
std::vector<S> paired_coeffs(const S* src, int64_t C) {
  if constexpr (!kRowsPaired<T>) return {};
  constexpr int N2 = 2 * Lanes<T>::N;
  std::vector<S> out(src, src + C);
  for (int64_t c = 0; c + N2 <= C; c += N2)
    for (int j = 0; j < N2; ++j) out[c + j] = src[c + Lanes<T>::pair_lane(j)];
  return out;
}

template <class T, class S>
void rows_apply(const T* x, T* y, const T* res, bool relu, const Geom& g, const S* mean, const S* scale,
                const S* bias) {
  using L = Lanes<T>;
  using LS = Lanes<S>;
  using V = typename L::V;
  constexpr int N = L::N;
  const int64_t C = g.C, M = g.count();
  const bool has_res = res != nullptr;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  const std::vector<S> pm = paired_coeffs<T>(mean, C), ps = paired_coeffs<T>(scale, C), pb = paired_coeffs<T>(bias, C);
  at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
    const V zero(S(0));
    for (int64_t r = r0; r < r1; ++r) {
      const T* px = x + r * C;
      T* py = y + r * C;
      const T* pr = has_res ? res + r * C : nullptr;
      int64_t c = 0;
      for (; kRowsPaired<T> && c + 2 * N <= C; c += 2 * N) {
        V x0, x1, r0 = zero, r1 = zero;
        L::load2(px + c, x0, x1);
        if (has_res) L::load2(pr + c, r0, r1);
        const V v0 = bn_forward(x0, LS::load(&pm[c]), LS::load(&ps[c]), LS::load(&pb[c]));
        const V v1 = bn_forward(x1, LS::load(&pm[c + N]), LS::load(&ps[c + N]), LS::load(&pb[c + N]));
        L::store2(py + c, bn_finish(v0, r0, has_res, relu), bn_finish(v1, r1, has_res, relu));
      }
      for (; c + N <= C; c += N) {
        const V v = bn_forward(L::load(px + c), LS::load(mean + c), LS::load(scale + c), LS::load(bias + c));
        L::store(py + c, bn_finish(v, has_res ? L::load(pr + c) : zero, has_res, relu));
      }
      for (; c < C; ++c) {
        const S v = bn_forward(static_cast<S>(px[c]), mean[c], scale[c], bias[c]);
        py[c] = static_cast<T>(bn_finish(v, has_res ? static_cast<S>(pr[c]) : S(0), has_res, relu));
      }
    }
  });
}

// Sums of dy' and dy' * (x - mean) of K vectors of channels over rows [s, e), in registers.
template <int K, class T, class S>
inline void rows_chunk_reduce(const T* dy, const T* x, const T* out, int64_t C, int64_t s, int64_t e, int64_t c0,
                              const S* mean, S* sa, S* sb) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int N = L::N;
  V mm[K], a[K], b[K];
#pragma GCC unroll 4
  for (int j = 0; j < K; ++j) {
    mm[j] = Lanes<S>::load(mean + c0 + j * N);
    a[j] = V(S(0));
    b[j] = V(S(0));
  }
  for (int64_t r = s; r < e; ++r) {
    const int64_t off = r * C + c0;
#pragma GCC unroll 4
    for (int j = 0; j < K; ++j) {
      V d = L::load(dy + off + j * N);
      if (out) d = bn_keep_if_pos(L::load(out + off + j * N), d);
      a[j] = a[j] + d;
      b[j] = b[j] + d * (L::load(x + off + j * N) - mm[j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < K; ++j) {
    Lanes<S>::store(sa + c0 + j * N, a[j]);
    Lanes<S>::store(sb + c0 + j * N, b[j]);
  }
}

template <class T, class S>
void rows_reduce(const T* dy, const T* x, const T* out, const Geom& g, const S* mean, double* sum_dy,
                 double* sum_dy_xmu) {
  using L = Lanes<T>;
  constexpr int N = L::N;
  const int64_t C = g.C, M = g.count();
  const int64_t B = row_blocks(M);
  std::vector<double> bsd(B * C, 0.0), bsx(B * C, 0.0);
  const int64_t R = row_chunk(C);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<S> a(C), b(C);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = M * blk / B, r1 = M * (blk + 1) / B;
      double* wd = &bsd[blk * C];
      double* wx = &bsx[blk * C];
      for (int64_t s = r0; s < r1; s += R) {
        const int64_t e = std::min(r1, s + R);
        int64_t c = 0;
        for (; c + 4 * N <= C; c += 4 * N) rows_chunk_reduce<4>(dy, x, out, C, s, e, c, mean, a.data(), b.data());
        for (; c + 2 * N <= C; c += 2 * N) rows_chunk_reduce<2>(dy, x, out, C, s, e, c, mean, a.data(), b.data());
        for (; c + N <= C; c += N) rows_chunk_reduce<1>(dy, x, out, C, s, e, c, mean, a.data(), b.data());
        for (; c < C; ++c) {
          S ta = 0, tb = 0;
          for (int64_t r = s; r < e; ++r) {
            S d = static_cast<S>(dy[r * C + c]);
            if (out) d = bn_keep_if_pos(static_cast<S>(out[r * C + c]), d);
            ta += d;
            tb += d * (static_cast<S>(x[r * C + c]) - mean[c]);
          }
          a[c] = ta;
          b[c] = tb;
        }
        for (int64_t cc = 0; cc < C; ++cc) {
          wd[cc] += a[cc];
          wx[cc] += b[cc];
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double sd = 0.0, sx = 0.0;
    for (int64_t blk = 0; blk < B; ++blk) {
      sd += bsd[blk * C + c];
      sx += bsx[blk * C + c];
    }
    sum_dy[c] = sd;
    sum_dy_xmu[c] = sx;
  }
}

template <class T, class S>
void rows_elemt(const T* dy, const T* x, const T* out, T* dx, T* dres, const Geom& g, const S* mean,
                const S* mean_dy, const S* k, const S* a) {
  using L = Lanes<T>;
  using LS = Lanes<S>;
  using V = typename L::V;
  constexpr int N = L::N;
  const int64_t C = g.C, M = g.count();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  const std::vector<S> pm = paired_coeffs<T>(mean, C), pmd = paired_coeffs<T>(mean_dy, C);
  const std::vector<S> pk = paired_coeffs<T>(k, C), pa = paired_coeffs<T>(a, C);
  at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* pd = dy + r * C;
      const T* px = x + r * C;
      const T* po = out ? out + r * C : nullptr;
      T* pdx = dx ? dx + r * C : nullptr;
      T* pdr = dres ? dres + r * C : nullptr;
      int64_t c = 0;
      for (; kRowsPaired<T> && c + 2 * N <= C; c += 2 * N) {
        V d0, d1, x0, x1;
        load2_dy(pd + c, po ? po + c : nullptr, d0, d1);
        if (pdr) L::store2(pdr + c, d0, d1);
        if (pdx) {
          L::load2(px + c, x0, x1);
          L::store2(pdx + c,
                    bn_grad_input(d0, x0, LS::load(&pm[c]), LS::load(&pmd[c]), LS::load(&pk[c]), LS::load(&pa[c])),
                    bn_grad_input(d1, x1, LS::load(&pm[c + N]), LS::load(&pmd[c + N]), LS::load(&pk[c + N]),
                                  LS::load(&pa[c + N])));
        }
      }
      for (; c + N <= C; c += N) {
        V d = L::load(pd + c);
        if (po) d = bn_keep_if_pos(L::load(po + c), d);
        if (pdr) L::store(pdr + c, d);
        if (pdx)
          L::store(pdx + c, bn_grad_input(d, L::load(px + c), LS::load(mean + c), LS::load(mean_dy + c), LS::load(k + c),
                                          LS::load(a + c)));
      }
      for (; c < C; ++c) {
        S d = static_cast<S>(pd[c]);
        if (po) d = bn_keep_if_pos(static_cast<S>(po[c]), d);
        if (pdr) pdr[c] = static_cast<T>(d);
        if (pdx) pdx[c] = static_cast<T>(bn_grad_input(d, static_cast<S>(px[c]), mean[c], mean_dy[c], k[c], a[c]));
      }
    }
  });
}

// ---------------------------------------------------------------- entries

void stats(c10::ScalarType dt, const Geom& g, const void* xv, const StatsOut& o) {
  dispatch(dt, [&](auto t) {
    using T = decltype(t);
    const T* x = static_cast<const T*>(xv);
    if (g.rows) {
      rows_stats(x, g, o);
      return;
    }
    for_plane_blocks(g, sizeof(T), [&](int64_t c0, int64_t c1) {
      Welford st[kMaxPlaneBlock];
      plane_block_stats(x, g, c0, c1, st);
      for (int64_t c = c0; c < c1; ++c) {
        o.n[c] = st[c - c0].n;
        o.mean[c] = st[c - c0].mean;
        o.m2[c] = st[c - c0].m2;
      }
    });
  });
}

void apply(const FwdArgs& a) {
  dispatch(a.dtype, [&](auto t) {
    using T = decltype(t);
    using S = MathOf<T>;
    const T* x = static_cast<const T*>(a.x);
    T* y = static_cast<T*>(a.y);
    const T* res = static_cast<const T*>(a.residual);
    const S* mean = static_cast<const S*>(a.mean);
    const S* scale = static_cast<const S*>(a.scale);
    const S* bias = static_cast<const S*>(a.bias);
    if (a.g.rows) {
      rows_apply(x, y, res, a.relu, a.g, mean, scale, bias);
      return;
    }
    for_plane_blocks(a.g, sizeof(T), [&](int64_t c0, int64_t c1) {
      for_block_planes(a.g, c0, c1, [&](int64_t n, int64_t c) {
        plane_apply(x, y, res, a.relu, a.g, n, c, mean[c], scale[c], bias[c]);
      });
    });
  });
}

// Planes only: statistics and normalisation of each channel back to back, for a block
// of channels at a time (plane_block).
void train_fused(const FwdArgs& a) {
  dispatch(a.dtype, [&](auto t) {
    using T = decltype(t);
    using S = MathOf<T>;
    const T* x = static_cast<const T*>(a.x);
    T* y = static_cast<T*>(a.y);
    const T* res = static_cast<const T*>(a.residual);
    S* mean = static_cast<S*>(a.mean);
    S* var = static_cast<S*>(a.var);
    const S* w = static_cast<const S*>(a.weight_in);
    const S* b = static_cast<const S*>(a.bias_in);
    for_plane_blocks(a.g, sizeof(T), [&](int64_t c0, int64_t c1) {
      Welford st[kMaxPlaneBlock];
      FwdCoeffs<S> k[kMaxPlaneBlock];
      plane_block_stats(x, a.g, c0, c1, st);
      for (int64_t c = c0; c < c1; ++c) {
        mean[c] = static_cast<S>(st[c - c0].mean);
        var[c] = static_cast<S>(biased_var(st[c - c0].n, st[c - c0].m2));
        k[c - c0] = fwd_coeffs<S>(mean[c], var[c], w, b, c, a.eps);
      }
      for_block_planes(a.g, c0, c1, [&](int64_t n, int64_t c) {
        const FwdCoeffs<S>& kc = k[c - c0];
        plane_apply(x, y, res, a.relu, a.g, n, c, kc.mean, kc.scale, kc.bias);
      });
    });
  });
}

// The tensor pointers every backward entry reads from BwdArgs, typed.
template <class T>
struct BwdView {
  const T *dy, *x, *out;  // out: the forward output (relu mask), may be null
  T *dx, *dres;           // may be null
  const MathOf<T>* mean;
  explicit BwdView(const BwdArgs& a)
      : dy(static_cast<const T*>(a.dy)),
        x(static_cast<const T*>(a.x)),
        out(static_cast<const T*>(a.out)),
        dx(static_cast<T*>(a.dx)),
        dres(static_cast<T*>(a.dres)),
        mean(static_cast<const MathOf<T>*>(a.mean)) {}
};

void bwd_reduce(const BwdArgs& a) {
  dispatch(a.dtype, [&](auto t) {
    using T = decltype(t);
    using S = MathOf<T>;
    const BwdView<T> v(a);
    const T *dy = v.dy, *x = v.x, *out = v.out;
    const S* mean = v.mean;
    if (a.g.rows) {
      rows_reduce(dy, x, out, a.g, mean, a.sum_dy, a.sum_dy_xmu);
      return;
    }
    for_plane_blocks(a.g, sizeof(T), [&](int64_t c0, int64_t c1) {
      PlaneSums<T> sums[kMaxPlaneBlock];
      for_block_planes(a.g, c0, c1,
                       [&](int64_t n, int64_t c) { plane_reduce(dy, x, out, a.g, n, c, mean[c], sums[c - c0]); });
      for (int64_t c = c0; c < c1; ++c) {
        a.sum_dy[c] = sums[c - c0].sum_dy();
        a.sum_dy_xmu[c] = sums[c - c0].sum_dy_xmu();
      }
    });
  });
}

void bwd_elemt(const BwdArgs& a) {
  dispatch(a.dtype, [&](auto t) {
    using T = decltype(t);
    using S = MathOf<T>;
    const BwdView<T> v(a);
    const T *dy = v.dy, *x = v.x, *out = v.out;
    T *dx = v.dx, *dres = v.dres;
    const S *mean = v.mean, *mdy = static_cast<const S*>(a.mean_dy);
    const S *kk = static_cast<const S*>(a.k), *aa = static_cast<const S*>(a.a);
    if (a.g.rows) {
      rows_elemt(dy, x, out, dx, dres, a.g, mean, mdy, kk, aa);
      return;
    }
    for_plane_blocks(a.g, sizeof(T), [&](int64_t c0, int64_t c1) {
      for_block_planes(a.g, c0, c1, [&](int64_t n, int64_t c) {
        plane_elemt(dy, x, out, dx, dres, a.g, n, c, BwdCoeffs<S>{mean[c], mdy[c], kk[c], aa[c]});
      });
    });
  });
}

// Planes only: reduction and element pass of each block of channels, back to back, and
// writes the sums (for grad_weight / grad_bias). The element pass of one block
// (kPipeBlockBytes) takes turns with the reduction of the next, plane by plane and
// kBwdPiece elements at a time, so that the reduction's reads from memory overlap the
// element pass's writes as in one streaming pass, instead of alternating read-only and
// write-mostly phases. Backward op after 256 MB of other writes, six alternating runs,
// median ms (and time over torch.mul(x, dy, out=dx)'s in the same state), float32:
// (32,64,56,56) 3.78 (1.35) -> 3.61 (1.29), (64,256,14,14) 1.95 (1.35) -> 1.84 (1.26),
// (8,32,112,112) 1.96 (1.38) -> 1.83 (1.27). Whole large planes in turn (8 KB steps)
// had lost: (32,64,56,56) 3.59-3.64 -> 3.74-3.82 ms. In cache (the op repeated) the
// large planes take 5-10% longer; the benchmark, like a network's backward, finds its
// inputs mostly in memory.
void bwd_fused(const BwdArgs& a) {
  dispatch(a.dtype, [&](auto t) {
    using T = decltype(t);
    using S = MathOf<T>;
    const BwdView<T> v(a);
    const T *dy = v.dy, *x = v.x, *out = v.out;
    T *dx = v.dx, *dres = v.dres;
    const S *mean = v.mean, *var = static_cast<const S*>(a.var), *w = static_cast<const S*>(a.weight);
    const Geom& g = a.g;
    const bool reduce = a.training || a.sum_dy, elemt = dx || dres;
    const int64_t B = plane_block(g, sizeof(T), kPipeBlockBytes);
    parallel_plane_blocks(g, B, [&](int64_t b0, int64_t b1) {
      auto first = [&](int64_t blk) { return std::min(g.C, blk * B); };
      PlaneSums<T> sums[2][kMaxPlaneBlock];  // this block's and the next one's
      BwdCoeffs<S> k[kMaxPlaneBlock];
      const int64_t start = first(b0);
      if (reduce)
        for_block_planes(g, start, first(b0 + 1),
                         [&](int64_t n, int64_t c) { plane_reduce(dy, x, out, g, n, c, mean[c], sums[0][c - start]); });
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t c0 = first(blk), c1 = first(blk + 1), c2 = blk + 1 < b1 ? first(blk + 2) : c1;
        const PlaneSums<T>* mine = sums[(blk - b0) & 1];
        PlaneSums<T>* next = sums[(blk - b0 + 1) & 1];
        for (int64_t c = c0; c < c1; ++c) {
          const double sdy = mine[c - c0].sum_dy(), sdx = mine[c - c0].sum_dy_xmu();
          if (a.sum_dy) {
            a.sum_dy[c] = sdy;
            a.sum_dy_xmu[c] = sdx;
          }
          k[c - c0] = bwd_coeffs<S>(mean[c], var[c], w, c, sdy, sdx, a.count, a.training, a.eps);
        }
        for (int64_t c = c1; c < c2; ++c) next[c - c1] = PlaneSums<T>{};
        BlockPlanes el{g.N, c0, elemt ? c1 : c0}, rd{g.N, c1, reduce ? c2 : c1};
        int64_t ne, ce, nr, cr;
        bool has_el = el.next(ne, ce), has_rd = rd.next(nr, cr);
        for (; has_el && has_rd; has_el = el.next(ne, ce), has_rd = rd.next(nr, cr)) {
          const PlaneElemt<T> e(dy, x, out, dx, dres, g, ne, ce, k[ce - c0]);
          PlaneReduce<T> r(dy, x, out, g, nr, cr, mean[cr], next[cr - c1]);
          for (int64_t s0 = 0; s0 < g.inner; s0 += kBwdPiece) {
            const int64_t s1 = std::min(g.inner, s0 + kBwdPiece);
            e.run(s0, s1);
            r.run(s0, s1);
          }
        }
        for (; has_el; has_el = el.next(ne, ce)) plane_elemt(dy, x, out, dx, dres, g, ne, ce, k[ce - c0]);
        for (; has_rd; has_rd = rd.next(nr, cr)) plane_reduce(dy, x, out, g, nr, cr, mean[cr], next[cr - c1]);
      }
    });
  });
}

}  // namespace FO_CPU_NS
}  // namespace batchnorm
}  // namespace fusedopt
