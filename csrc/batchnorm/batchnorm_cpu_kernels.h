// CPU kernel bodies of batch norm, compiled once per instruction set by
// batchnorm_cpu_avx512.cpp, batchnorm_cpu_avx2.cpp and batchnorm_cpu_scalar.cpp (no
// include guard on purpose).
// The including unit defines FO_CPU_NS and brings Lanes<T> into it, plus bn_hsum,
// bn_relu and bn_keep_if_pos for its vector type.
//
// Memory walks, two passes each (statistics or sums, then the element pass):
//  - planes (NCHW): threads over planes in memory order (the reductions over planes
//    shorter than kPlaneChunk: a channel's planes in several images at a time,
//    for_plane_runs); the reductions are taken per block of images (a fixed split, so
//    results do not depend on the thread count) and merged in block order.
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

// NCHW walks go through memory in order, in two passes: the statistics (in the backward,
// the sums) over the whole input, then the element pass. Each pass is one long stream
// that the hardware prefetcher follows, and the second finds what the last-level cache
// kept of the first. Until the thirteenth session the walks took one block of channels
// at a time, N planes a channel-stride apart, so that the element pass found the block in
// L2; on a 1 MB-L2, 32 MB-L3 machine memory order won or drew on every benchmark row
// (module forward + backward against torch's, the two builds in alternating processes;
// README, Benchmarks).

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

// Plane statistics come from the sums of (x - m) and (x - m)^2 around a shift m near
// the mean (the corrected two-pass formula: exact for any m, precise when m is within
// about a standard deviation of the mean). A channel's first run in an image block finds
// m with a pivot-shifted walk over the run (served by L1 the second time); its later
// runs add their sums around the same m, in one walk and without a division.

// Mean of a run of len elements: the pivot p[0] plus the mean of x - p[0].
template <class T>
MathOf<T> run_mean(const T* p, int64_t len) {
  using L = Lanes<T>;
  using V = typename L::V;
  using S = MathOf<T>;
  constexpr int N = L::N;
  const S pivot = static_cast<S>(p[0]);
  const V vp(pivot);
  V a0(S(0)), a1(S(0));
  int64_t i = 0;
  for (; i + 2 * N <= len; i += 2 * N) {
    V u0, u1;
    L::load2(p + i, u0, u1);
    a0 = a0 + (u0 - vp);
    a1 = a1 + (u1 - vp);
  }
  for (; i + N <= len; i += N) a0 = a0 + (L::load(p + i) - vp);
  if (i < len)
    a1 = a1 + (len >= N ? bn_keep_if_pos(last_lanes_mask<T>(len % N), L::load(p + len - N) - vp)
                        : first_lanes<T>(load_part(p + i, len - i) - vp, len - i));
  return pivot + bn_hsum(a0 + a1) / static_cast<S>(len);
}

// The sums of (x - m) and (x - m)^2 over a run of len elements (len > 0).
struct ShiftedSums {
  double n = 0.0, d = 0.0, q = 0.0;
  // Whether m lies further than a standard deviation from the run's mean:
  // d^2 / n > (q - d^2 / n) / n.
  bool far() const { return 2.0 * d * d > n * q; }
  Welford welford(double m) const { return n > 0 ? Welford{n, m + d / n, std::max(0.0, q - d * d / n)} : Welford{}; }
};
// The sums of (x - m) and (x - m)^2 over `count` runs of len elements (len > 0), each
// `stride` elements after the last: the same channel's plane in consecutive images.
template <class T>
ShiftedSums shifted_sums(const T* p, int64_t len, MathOf<T> m, int64_t count = 1, int64_t stride = 0) {
  using L = Lanes<T>;
  using V = typename L::V;
  using S = MathOf<T>;
  constexpr int N = L::N;
  const V vm(m);
  const V tail = last_lanes_mask<T>(len % N);
  V d0(S(0)), d1(S(0)), q0(S(0)), q1(S(0));
  for (int64_t r = 0; r < count; ++r) {
    const T* pr = p + r * stride;  // no pointer past the last run
    int64_t i = 0;
    for (; i + 2 * N <= len; i += 2 * N) {
      V e0, e1;
      L::load2(pr + i, e0, e1);
      e0 = e0 - vm;
      e1 = e1 - vm;
      d0 = d0 + e0;
      d1 = d1 + e1;
      q0 = q0 + e0 * e0;
      q1 = q1 + e1 * e1;
    }
    for (; i + N <= len; i += N) {
      const V e0 = L::load(pr + i) - vm;
      d0 = d0 + e0;
      q0 = q0 + e0 * e0;
    }
    if (i < len) {
      const V e1 = len >= N ? bn_keep_if_pos(tail, L::load(pr + len - N) - vm)
                            : first_lanes<T>(load_part(pr + i, len - i) - vm, len - i);
      d1 = d1 + e1;
      q1 = q1 + e1 * e1;
    }
  }
  return ShiftedSums{static_cast<double>(len * count), bn_hsum(d0 + d1), bn_hsum(q0 + q1)};
}

// One channel's statistics within an image block: runs whose shift is close go into
// `sums` around `shift`; a run whose mean is far from it (samples whose means differ a
// lot) is walked again around its own mean and merged into `w` (Chan).
template <class S>
struct PlaneAcc {
  Welford w;
  ShiftedSums sums;
  S shift = 0;
  bool started = false;
  Welford result() const {
    Welford r = w;
    welford_merge(r, sums.welford(shift));
    return r;
  }
};
// Adds `count` runs of len elements, `stride` apart (see shifted_sums), to acc.
template <class T>
void add_run(PlaneAcc<MathOf<T>>& acc, const T* p, int64_t len, int64_t count = 1, int64_t stride = 0) {
  using S = MathOf<T>;
  if (len <= 0 || count <= 0) return;
  if (!acc.started) {
    acc.shift = run_mean(p, len);
    acc.started = true;
  }
  const ShiftedSums r = shifted_sums(p, len, acc.shift, count, stride);
  if (!r.far()) {
    acc.sums.n += r.n;
    acc.sums.d += r.d;
    acc.sums.q += r.q;
    return;
  }
  const S m = static_cast<S>(static_cast<double>(acc.shift) + r.d / r.n);
  welford_merge(acc.w, shifted_sums(p, len, m, count, stride).welford(m));
}

// Threads take kTaskElems elements or more (torch's own grain, at::internal::GRAIN_SIZE),
// so that a small input runs inline instead of waking the other threads.
constexpr int64_t kTaskElems = 32768;

// The per-channel reductions (statistics, backward sums) are taken per block of images
// and merged in block order: a fixed split, so that results do not depend on the number
// of threads.
constexpr int64_t kImageBlocks = 16;
inline int64_t image_blocks(const Geom& g) { return std::clamp<int64_t>(g.N, 1, kImageBlocks); }

// Calls f(b, n0, n1, c0, c1) for tiles of images [n0, n1) of block b by channels
// [c0, c1), threads over tiles in memory order. Blocks are cut into channel ranges only
// when they are fewer than twice the threads.
template <class F>
void for_plane_tiles(const Geom& g, const F& f) {
  const int64_t NB = image_blocks(g), threads = at::get_num_threads();
  const int64_t CB = std::clamp<int64_t>((2 * threads + NB - 1) / NB, 1, std::max<int64_t>(g.C, 1));
  const int64_t tiles = NB * CB;
  const int64_t grain = g.N * g.C * g.inner <= kTaskElems ? tiles : 1;
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / CB, r = t % CB;
      f(b, g.N * b / NB, g.N * (b + 1) / NB, g.C * r / CB, g.C * (r + 1) / CB);
    }
  });
}

// Calls f(n, c, count) for runs of `count` planes of channel c from image n on, a channel
// stride apart, covering images [n0, n1) by channels [c0, c1) of a tile: single planes in
// memory order, except that planes shorter than kPlaneChunk (14x14) go a channel at a
// time, up to a chunk's worth of images per run (one stream per image, each still in
// order), so that a reduction's horizontal sums and far-shift test come once per run
// rather than once per plane. Sixteenth session, (64,256,14,14), 2 threads, statistics op
// from cache: bf16 0.26-0.28 -> 0.17-0.20 ms, float 0.31-0.34 -> 0.20-0.27 ms; from DRAM,
// and in the module's forward + backward against torch, within the noise (README).
template <class F>
void for_plane_runs(const Geom& g, int64_t n0, int64_t n1, int64_t c0, int64_t c1, const F& f) {
  const int64_t images = kPlaneChunk / std::max<int64_t>(g.inner, 1);
  if (images > 1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t n = n0; n < n1; n += images) f(n, c, std::min(images, n1 - n));
    return;
  }
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c = c0; c < c1; ++c) f(n, c, int64_t{1});
}

// Calls f(n, c) for every plane, threads over planes in memory order.
template <class F>
void for_planes(const Geom& g, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, g.inner));
  at::parallel_for(0, g.N * g.C, grain, [&](int64_t i0, int64_t i1) {
    int64_t n = i0 / std::max<int64_t>(g.C, 1), c = i0 - n * g.C;
    for (int64_t i = i0; i < i1; ++i) {
      f(n, c);
      if (++c == g.C) {
        c = 0;
        ++n;
      }
    }
  });
}

// (count, mean, M2) of each channel: runs of up to kPlaneChunk elements of a plane,
// added per image block in memory order (PlaneAcc), then merged across blocks (Chan).
template <class T>
void plane_stats(const T* x, const Geom& g, const StatsOut& o) {
  using S = MathOf<T>;
  const int64_t C = g.C, NB = image_blocks(g);
  std::vector<PlaneAcc<S>> part(NB * C);
  for_plane_tiles(g, [&](int64_t b, int64_t n0, int64_t n1, int64_t c0, int64_t c1) {
    PlaneAcc<S>* acc = &part[b * C];
    for_plane_runs(g, n0, n1, c0, c1, [&](int64_t n, int64_t c, int64_t count) {
      for (int64_t s = 0; s < g.inner; s += kPlaneChunk)  // count > 1: one chunk per plane
        add_run(acc[c], x + (n * C + c) * g.inner + s, std::min(kPlaneChunk, g.inner - s), count, C * g.inner);
    });
  });
  for (int64_t c = 0; c < C; ++c) {
    Welford w;
    for (int64_t b = 0; b < NB; ++b) welford_merge(w, part[b * C + c].result());
    o.n[c] = w.n;
    o.mean[c] = w.mean;
    o.m2[c] = w.m2;
  }
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
  int64_t i = 0;
  for (; i + 2 * N <= g.inner; i += 2 * N) {
    V v0, v1, r0 = zero, r1 = zero;
    L::load2(px + i, v0, v1);
    if (has_res) L::load2(pr + i, r0, r1);
    L::store2(py + i, bn_finish(bn_forward(v0, vm, vs, vb), r0, has_res, relu),
              bn_finish(bn_forward(v1, vm, vs, vb), r1, has_res, relu));
  }
  for (; i + N <= g.inner; i += N) {
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

// Adds the sums of dy' and dy' * (x - mean) over plane (n, c), and over the same
// channel's planes in the count - 1 images after n, to sum_dy and sum_dy_xmu: float
// lanes, flushed into double every kPlaneChunk elements of a plane. count > 1 only for
// planes shorter than that, whose lanes gather over all count planes (for_plane_runs).
template <class T, class S>
void plane_reduce(const T* dy, const T* x, const T* out, const Geom& g, int64_t n, int64_t c, S mean, double& sum_dy,
                  double& sum_dy_xmu, int64_t count = 1) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int N = L::N;
  const int64_t off = (n * g.C + c) * g.inner, stride = g.C * g.inner;
  const V vm(mean);
  double ta = 0.0, tb = 0.0;
  for (int64_t s = 0, e; s < g.inner; s = e) {
    e = std::min(g.inner, s + kPlaneChunk);
    const V tail = last_lanes_mask<T>((e - s) % N);
    V a(S(0)), b(S(0));
    for (int64_t r = 0; r < count; ++r) {
      const T* pd = dy + off + r * stride;
      const T* px = x + off + r * stride;
      const T* po = out ? out + off + r * stride : nullptr;
      int64_t i = s;
      if (po) {
        for (; i + 2 * N <= e; i += 2 * N) {
          V d0, d1, x0, x1;
          load2_dy(pd + i, po + i, d0, d1);
          L::load2(px + i, x0, x1);
          a = a + (d0 + d1);
          b = b + (d0 * (x0 - vm) + d1 * (x1 - vm));
        }
      } else {
        for (; i + 2 * N <= e; i += 2 * N) {
          V d0, d1, x0, x1;
          L::load2(pd + i, d0, d1);
          L::load2(px + i, x0, x1);
          a = a + (d0 + d1);
          b = b + (d0 * (x0 - vm) + d1 * (x1 - vm));
        }
      }
      for (; i + N <= e; i += N) {
        V d = L::load(pd + i);
        if (po) d = bn_keep_if_pos(L::load(po + i), d);
        a = a + d;
        b = b + d * (L::load(px + i) - vm);
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
    }
    ta += bn_hsum(a);
    tb += bn_hsum(b);
  }
  sum_dy += ta;
  sum_dy_xmu += tb;
}

// Per-channel sums of dy' and dy' * (x - mean), per image block and in runs of planes as
// plane_stats.
template <class T, class S>
void planes_reduce(const T* dy, const T* x, const T* out, const Geom& g, const S* mean, double* sum_dy,
                   double* sum_dy_xmu) {
  const int64_t C = g.C, NB = image_blocks(g);
  std::vector<double> part(NB * C * 2, 0.0);
  for_plane_tiles(g, [&](int64_t b, int64_t n0, int64_t n1, int64_t c0, int64_t c1) {
    double* sd = &part[2 * b * C];
    double* sx = sd + C;
    for_plane_runs(g, n0, n1, c0, c1, [&](int64_t n, int64_t c, int64_t count) {
      plane_reduce(dy, x, out, g, n, c, mean[c], sd[c], sx[c], count);
    });
  });
  for (int64_t c = 0; c < C; ++c) {
    double a = 0.0, b = 0.0;
    for (int64_t k = 0; k < NB; ++k) {
      a += part[2 * k * C + c];
      b += part[(2 * k + 1) * C + c];
    }
    sum_dy[c] = a;
    sum_dy_xmu[c] = b;
  }
}

// grad_input (and the residual's grad) of plane (n, c).
template <class T, class S>
void plane_elemt(const T* dy, const T* x, const T* out, T* dx, T* dres, const Geom& g, int64_t n, int64_t c,
                 const BwdCoeffs<S>& k) {
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int N = L::N;
  const V vm(k.mean), vmd(k.mean_dy), vk(k.k), va(k.a);
  const int64_t off = (n * g.C + c) * g.inner, len = g.inner;
  const T* pd = dy + off;
  const T* px = x + off;
  const T* po = out ? out + off : nullptr;
  T* pdx = dx ? dx + off : nullptr;
  T* pdr = dres ? dres + off : nullptr;
  int64_t i = 0;
  for (; i + 2 * N <= len; i += 2 * N) {
    V d0, d1, x0, x1;
    load2_dy(pd + i, po ? po + i : nullptr, d0, d1);
    if (pdr) L::store2(pdr + i, d0, d1);
    if (pdx) {
      L::load2(px + i, x0, x1);
      L::store2(pdx + i, bn_grad_input(d0, x0, vm, vmd, vk, va), bn_grad_input(d1, x1, vm, vmd, vk, va));
    }
  }
  for (; i + N <= len; i += N) {
    V d = L::load(pd + i);
    if (po) d = bn_keep_if_pos(L::load(po + i), d);
    if (pdr) L::store(pdr + i, d);
    if (pdx) L::store(pdx + i, bn_grad_input(d, L::load(px + i), vm, vmd, vk, va));
  }
  if (i < len && len >= N) {  // the vector that ends at len, overlapping what came before
    const int64_t j = len - N;
    V d = L::load(pd + j);
    if (po) d = bn_keep_if_pos(L::load(po + j), d);
    if (pdr) L::store(pdr + j, d);
    if (pdx) L::store(pdx + j, bn_grad_input(d, L::load(px + j), vm, vmd, vk, va));
  } else if (i < len) {
    const int64_t rem = len - i;
    V d = load_part(pd + i, rem);
    if (po) d = bn_keep_if_pos(load_part(po + i, rem), d);
    if (pdr) store_part(pdr + i, rem, d);
    if (pdx) store_part(pdx + i, rem, bn_grad_input(d, load_part(px + i, rem), vm, vmd, vk, va));
  }
}

// ---------------------------------------------------------------- rows

// The row kernels take channels 2N at a time with load2/store2 only where that form
// permutes lanes (bf16), as it saves shuffles there. For float it measured slower (about
// 8% on a (32,64,56,56) channels_last forward+backward) than the plain vector loop.
template <class T>
constexpr bool kRowsPaired = Lanes<T>::pair_lane(Lanes<T>::N) != Lanes<T>::N;

// The row reductions (statistics, backward sums) walk a chunk of rows once per group of
// up to kRowGroupMax vectors of channels, the group's sums in registers. A group that
// spans the whole row walks memory in order, which the prefetchers follow; narrower
// groups take a slice of every row, a row apart, at half the speed or less. A plain C++
// walk over 12544 x 256 floats (the (64,256,14,14) benchmark case), 2 threads, against
// a flat sum: 16-vector (whole-row) groups as fast (0.34-0.48 ms from DRAM, 0.08-0.11
// from cache, flat 0.39-0.49 and 0.07-0.09); 4-vector groups 0.71-0.78 and 0.14-0.15;
// row by row with the sums in L1 (rows_chunk_reduce_wide) 0.47-0.52 and 0.17-0.39.
// 16 vectors use 32 registers for two sums, all that AVX-512 has.
constexpr int kRowGroupMax = 16;

// Calls f(std::integral_constant<int, K>{}, c0) for the column groups of a row of C
// channels from channel c on: groups of K = kRowGroupMax, 8, 4, 2 and 1 vectors of N
// lanes, widest first. Returns the first channel past the last full vector.
template <int N, int K = kRowGroupMax, class F>
int64_t for_row_groups(int64_t c, int64_t C, const F& f) {
  for (; c + K * N <= C; c += K * N) f(std::integral_constant<int, K>{}, c);
  if constexpr (K > 1) {
    return for_row_groups<N, K / 2>(c, C, f);
  } else {
    return c;
  }
}

// Row blocks: one per thread, in a fixed order, so merged results do not depend on
// scheduling.
inline int64_t row_blocks(int64_t M) {
  const int64_t per = 64;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (M + per - 1) / per));
}

// Statistics of K vectors of channels [c0, c0 + K*N) over rows [s, e) of one chunk, with
// the sums in registers: chunk mean m (pivot-shifted sum), then the sums of (x - m) and
// (x - m)^2. The chunk (a few KB) is in L1 or L2 for the second walk. With shift (the
// block's per-channel means so far), the shift replaces the first walk, as in add_run.
// The means are read from m (L1) rather than held, so that K = 16 keeps its 32 sums in
// the 32 AVX-512 registers: a group as wide as the row walks memory in order (see
// kRowGroupMax).
template <int K, class T, class S>
inline void rows_chunk_stats(const T* x, int64_t C, int64_t s, int64_t e, int64_t c0, const S* shift, S* m, S* dsum,
                             S* qsum) {
  using L = Lanes<T>;
  using LS = Lanes<S>;
  using V = typename L::V;
  constexpr int N = L::N;
  S* pm = m + c0;
  if (shift) {
    std::copy(shift + c0, shift + c0 + K * N, pm);
  } else {
    const T* piv = x + s * C + c0;
    V a[K];
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) a[j] = V(S(0));
    for (int64_t r = s + 1; r < e; ++r) {
      const T* p = x + r * C + c0;
#pragma GCC unroll 16
      for (int j = 0; j < K; ++j) a[j] = a[j] + (L::load(p + j * N) - L::load(piv + j * N));
    }
    const V inv_len(S(1) / static_cast<S>(e - s));
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) LS::store(pm + j * N, L::load(piv + j * N) + a[j] * inv_len);
  }
  V d[K], q[K];
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) {
    d[j] = V(S(0));
    q[j] = V(S(0));
  }
  for (int64_t r = s; r < e; ++r) {
    const T* p = x + r * C + c0;
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) {
      const V t = L::load(p + j * N) - LS::load(pm + j * N);
      d[j] = d[j] + t;
      q[j] = q[j] + t * t;
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) {
    LS::store(dsum + c0 + j * N, d[j]);
    LS::store(qsum + c0 + j * N, q[j]);
  }
}

// rows_chunk_stats for the single channel c (past the last full vector).
template <class T, class S>
void rows_channel_stats(const T* x, int64_t C, int64_t s, int64_t e, int64_t c, const S* shift, S* m, S* dsum,
                        S* qsum) {
  if (shift) {
    m[c] = shift[c];
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
        // m, dsum and qsum of every channel over rows [s, e), around sh (or, without it,
        // around the chunk's own means).
        auto take = [&](const S* around) {
          S *pm = m.data(), *pd = dsum.data(), *pq = qsum.data();
          int64_t c = for_row_groups<N>(0, C, [&](auto k, int64_t c0) {
            rows_chunk_stats<decltype(k)::value>(x, C, s, e, c0, around, pm, pd, pq);
          });
          for (; c < C; ++c) rows_channel_stats(x, C, s, e, c, around, pm, pd, pq);
        };
        take(sh);
        const double n = static_cast<double>(e - s);
        if (sh) {
          // As in add_run: shifts further than a standard deviation from the chunk's
          // means are replaced by the corrected means and the chunk walked again.
          bool redo = false;
          for (int64_t cc = 0; cc < C; ++cc) {
            const double d = dsum[cc], q = qsum[cc];
            if (d * d > n * (q - d * d / n)) redo = true;
          }
          if (redo) {
            for (int64_t cc = 0; cc < C; ++cc) shift[cc] = static_cast<S>(static_cast<double>(m[cc]) + dsum[cc] / n);
            take(sh);
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

// The row loops of rows_apply and rows_elemt read their pointers and flags through the
// lambda's captures, which the compiler reloads after every vector store. Without those
// reloads (by-value arguments or local copies: tried in the fourteenth, fifteenth and
// seventeenth sessions) the loops ran faster from cache but float32 slower from memory,
// e.g. channels_last (64,256,14,14), module forward against torch's, five pairs of
// processes, 1.21-1.38x -> 1.02-1.22x (README, Benchmarks).
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

// Sums of dy' and dy' * (x - mean) of K vectors of channels over rows [s, e), in registers
// (mean read from L1, as in rows_chunk_stats).
template <int K, class T, class S>
inline void rows_chunk_reduce(const T* dy, const T* x, const T* out, int64_t C, int64_t s, int64_t e, int64_t c0,
                              const S* mean, S* sa, S* sb) {
  using L = Lanes<T>;
  using LS = Lanes<S>;
  using V = typename L::V;
  constexpr int N = L::N;
  const S* pm = mean + c0;
  V a[K], b[K];
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) {
    a[j] = V(S(0));
    b[j] = V(S(0));
  }
  for (int64_t r = s; r < e; ++r) {
    const int64_t off = r * C + c0;
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) {
      V d = L::load(dy + off + j * N);
      if (out) d = bn_keep_if_pos(L::load(out + off + j * N), d);
      a[j] = a[j] + d;
      b[j] = b[j] + d * (L::load(x + off + j * N) - LS::load(pm + j * N));
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) {
    LS::store(sa + c0 + j * N, a[j]);
    LS::store(sb + c0 + j * N, b[j]);
  }
}

// The same sums over rows [s, e) for all C channels, walked row by row (one contiguous
// run per tensor per row) into sa/sb, which stay in L1: for float and double rows wider
// than the widest register group (kRowGroupMax vectors), whose walks would each take a
// slice of every row. It had served rows over 4 vectors, when groups were at most 4:
// (64,256,14,14) float32 channels_last forward + backward against torch's, 0.94-0.96x ->
// 1.01-1.07x then; the whole-row group of 16 vectors took it to 1.09-1.14x (three
// alternating pairs, against 0.96-1.02x).
template <class T, class S>
void rows_chunk_reduce_wide(const T* dy, const T* x, const T* out, int64_t C, int64_t s, int64_t e, const S* mean,
                            S* sa, S* sb) {
  using L = Lanes<T>;
  using LS = Lanes<S>;
  using V = typename L::V;
  constexpr int N = L::N;
  const int64_t CV = C / N * N;  // channels in full vectors
  std::fill(sa, sa + C, S(0));
  std::fill(sb, sb + C, S(0));
  for (int64_t r = s; r < e; ++r) {
    const T* pd = dy + r * C;
    const T* px = x + r * C;
    const T* po = out ? out + r * C : nullptr;
    for (int64_t c = 0; c < CV; c += N) {
      V d = L::load(pd + c);
      if (po) d = bn_keep_if_pos(L::load(po + c), d);
      LS::store(sa + c, LS::load(sa + c) + d);
      LS::store(sb + c, LS::load(sb + c) + d * (L::load(px + c) - LS::load(mean + c)));
    }
    for (int64_t c = CV; c < C; ++c) {
      S d = static_cast<S>(pd[c]);
      if (po) d = bn_keep_if_pos(static_cast<S>(po[c]), d);
      sa[c] += d;
      sb[c] += d * (static_cast<S>(px[c]) - mean[c]);
    }
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
        int64_t c = C;
        if (!kRowsPaired<T> && C > kRowGroupMax * N) {
          rows_chunk_reduce_wide(dy, x, out, C, s, e, mean, a.data(), b.data());
        } else {
          c = for_row_groups<N>(0, C, [&](auto k, int64_t c0) {
            rows_chunk_reduce<decltype(k)::value>(dy, x, out, C, s, e, c0, mean, a.data(), b.data());
          });
        }
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
    } else {
      plane_stats(x, g, o);
    }
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
    for_planes(a.g, [&](int64_t n, int64_t c) {
      plane_apply(x, y, res, a.relu, a.g, n, c, mean[c], scale[c], bias[c]);
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
    const BwdView<T> v(a);
    if (a.g.rows) {
      rows_reduce(v.dy, v.x, v.out, a.g, v.mean, a.sum_dy, a.sum_dy_xmu);
    } else {
      planes_reduce(v.dy, v.x, v.out, a.g, v.mean, a.sum_dy, a.sum_dy_xmu);
    }
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
    for_planes(a.g, [&](int64_t n, int64_t c) {
      plane_elemt(dy, x, out, dx, dres, a.g, n, c, BwdCoeffs<S>{mean[c], mdy[c], kk[c], aa[c]});
    });
  });
}

}  // namespace FO_CPU_NS
}  // namespace batchnorm
}  // namespace fusedopt
