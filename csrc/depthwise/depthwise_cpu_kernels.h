// CPU kernel bodies of the depthwise convolution, compiled once per instruction set by
// depthwise_cpu_avx2.cpp and depthwise_cpu_scalar.cpp (no include guard on purpose).
//
// NCHW: one task per input plane (n, c). The plane is copied once into a zero-padded
// float buffer whose columns are split by phase (column x goes to phase x % stride), so
// that every tap of every stride and dilation reads a contiguous run over the output
// width: the inner loops are unit-stride over W and vectorise. 3x3 and 5x5 keep all
// taps of an output in registers; other kernels accumulate tap by tap in a row buffer.
// channels_last: one task per image row; the inner loops run over contiguous channels.
// grad_weight: per-plane (NCHW) or per-fixed-chunk-of-rows (channels_last) partials,
// summed in a fixed order at the end, so results do not depend on the thread count.
#include "../common/dispatch.h"
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

// The padded, phase-split plane buffer: `rows` rows of `row_len` = stride_w * q values.
struct PlaneLayout {
  int64_t rows, q, row_len;
};

inline PlaneLayout plane_layout(const Geom& g) {
  const int64_t wp = g.W + g.PL + g.PR;
  const int64_t q = (wp + g.SW - 1) / g.SW;
  return {g.H + g.PT + g.PB, q, q * g.SW};
}

// Where padded column x sits in a buffer row.
inline int64_t col_offset(const PlaneLayout& L, int64_t sw, int64_t x) { return (x % sw) * L.q + x / sw; }

template <class Acc, class T>
void fill_plane(const T* src, const Geom& g, const PlaneLayout& L, Acc* buf) {
  std::fill(buf, buf + L.rows * L.row_len, Acc(0));
  for (int64_t h = 0; h < g.H; ++h) {
    Acc* row = buf + (g.PT + h) * L.row_len;
    const T* s = src + h * g.W;
    if (g.SW == 1) {
      load_row(s, row + g.PL, g.W);
      continue;
    }
    for (int64_t p = 0; p < g.SW; ++p) {
      const int64_t w0 = ((p - g.PL) % g.SW + g.SW) % g.SW;  // first w with (PL + w) % SW == p
      Acc* d = row + p * L.q + (g.PL + w0) / g.SW;
      const int64_t cnt = w0 < g.W ? (g.W - w0 + g.SW - 1) / g.SW : 0;
      for (int64_t k = 0; k < cnt; ++k) d[k] = static_cast<Acc>(s[w0 + k * g.SW]);
    }
  }
}

// Calls body(KH, KW) with compile-time kernel sizes for the hot cases, (0, 0) otherwise.
template <class Body>
void with_kernel_size(const Geom& g, const Body& body) {
  using std::integral_constant;
  if (g.KH == 3 && g.KW == 3) return body(integral_constant<int, 3>{}, integral_constant<int, 3>{});
  if (g.KH == 5 && g.KW == 5) return body(integral_constant<int, 5>{}, integral_constant<int, 5>{});
  return body(integral_constant<int, 0>{}, integral_constant<int, 0>{});
}

// ---------------------------------------------------------------- NCHW

// Pointers to the first value each tap reads for output row oh (add ow).
inline void tap_rows(const Geom& g, const PlaneLayout& L, int64_t oh, int64_t kh, int64_t kw, int64_t* off) {
  for (int64_t i = 0; i < kh; ++i)
    for (int64_t j = 0; j < kw; ++j)
      off[i * kw + j] = tap_source(oh, i, g.SH, g.DH, 0) * L.row_len + col_offset(L, g.SW, j * g.DW);
}

template <int KH_, int KW_, class Acc, class T>
void forward_plane(const Acc* buf, const PlaneLayout& L, const Geom& g, const Acc* w, Acc bias, T* out, Acc* tmp,
                   int64_t* off) {
  constexpr int K_ = KH_ * KW_;
  const int64_t K = num_taps(g);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    Acc* dst = std::is_same_v<T, Acc> ? reinterpret_cast<Acc*>(out + oh * g.OW) : tmp;
    tap_rows(g, L, oh, g.KH, g.KW, off);
    if constexpr (K_ > 0) {
      const Acc* src[K_];
      Acc wk[K_];
      for (int t = 0; t < K_; ++t) src[t] = buf + off[t], wk[t] = w[t];
#pragma omp simd
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        Acc a = bias;
#pragma GCC unroll 25
        for (int t = 0; t < K_; ++t) a += wk[t] * src[t][ow];
        dst[ow] = a;
      }
    } else {
      for (int64_t ow = 0; ow < g.OW; ++ow) dst[ow] = bias;
      for (int64_t t = 0; t < K; ++t) {
        const Acc* src = buf + off[t];
        const Acc wv = w[t];
#pragma omp simd
        for (int64_t ow = 0; ow < g.OW; ++ow) dst[ow] += wv * src[ow];
      }
    }
    if constexpr (!std::is_same_v<T, Acc>) store_row(tmp, out + oh * g.OW, g.OW);
  }
}

template <int KH_, int KW_, class Acc, class T>
void forward_nchw(const ForwardArgs& a) {
  const Geom& g = a.g;
  const auto* in = static_cast<const T*>(a.input);
  const auto* wt = static_cast<const T*>(a.weight);
  const auto* bias = static_cast<const T*>(a.bias);
  auto* out = static_cast<T*>(a.output);
  const int64_t O = num_out_channels(g), K = num_taps(g);
  std::vector<Acc> w(O * K);
  load_row(wt, w.data(), O * K);
  const PlaneLayout L = plane_layout(g);
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> buf(L.rows * L.row_len), tmp(g.OW);
    std::vector<int64_t> off(K);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      fill_plane(in + p * g.H * g.W, g, L, buf.data());
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = c * g.M + m;
        const Acc b = bias ? static_cast<Acc>(bias[o]) : Acc(0);
        forward_plane<KH_, KW_>(buf.data(), L, g, w.data() + o * K, b, out + (n * O + o) * g.OH * g.OW, tmp.data(),
                                off.data());
      }
    }
  });
}

// Dot products of one grad_out plane with each tap's view of the input plane, plus
// its sum (the bias term), into part[0..K]. Eight lanes per tap keep the adds in
// registers and in a fixed order.
template <int KH_, int KW_, class Acc>
void weight_grad_plane(const Acc* xbuf, const PlaneLayout& L, const Geom& g, const Acc* gop, Acc* part, Acc* lanes,
                       int64_t* off) {
  constexpr int K_ = KH_ * KW_;
  const int64_t K = K_ > 0 ? K_ : num_taps(g);
  std::fill(lanes, lanes + (K + 1) * 8, Acc(0));
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    tap_rows(g, L, oh, g.KH, g.KW, off);
    const Acc* gr = gop + oh * g.OW;
    int64_t ow = 0;
    for (; ow + 8 <= g.OW; ow += 8) {
#pragma GCC unroll 25
      for (int64_t t = 0; t < K; ++t) {
        const Acc* s = xbuf + off[t] + ow;
        Acc* l = lanes + t * 8;
#pragma omp simd
        for (int q = 0; q < 8; ++q) l[q] += gr[ow + q] * s[q];
      }
      Acc* l = lanes + K * 8;
#pragma omp simd
      for (int q = 0; q < 8; ++q) l[q] += gr[ow + q];
    }
    for (; ow < g.OW; ++ow) {
      for (int64_t t = 0; t < K; ++t) lanes[t * 8] += gr[ow] * xbuf[off[t] + ow];
      lanes[K * 8] += gr[ow];
    }
  }
  for (int64_t t = 0; t <= K; ++t) {
    Acc s = Acc(0);
    for (int q = 0; q < 8; ++q) s += lanes[t * 8 + q];
    part[t] = s;
  }
}

// Adds one grad_out plane times each tap's weight into the padded grad_input buffer,
// at the places that tap read in the forward pass.
template <class Acc>
void input_grad_plane(Acc* gbuf, const PlaneLayout& L, const Geom& g, const Acc* gop, const Acc* w, int64_t* off) {
  const int64_t K = num_taps(g);
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    tap_rows(g, L, oh, g.KH, g.KW, off);
    const Acc* gr = gop + oh * g.OW;
    for (int64_t t = 0; t < K; ++t) {
      Acc* d = gbuf + off[t];
      const Acc wv = w[t];
#pragma omp simd
      for (int64_t ow = 0; ow < g.OW; ++ow) d[ow] += wv * gr[ow];
    }
  }
}

// Stride 1: grad_input as a correlation of grad_out with the flipped kernel, all taps
// in registers. gbuf holds grad_out zero-padded so that every input position reads
// KH x KW values: row r of gbuf is grad_out row r - ((KH-1)*DH - PT), likewise columns.
template <int KH_, int KW_, class Acc, class T>
void input_grad_plane_s1(const Acc* gpad, int64_t gpad_w, const Geom& g, const Acc* w, T* gi, Acc* tmp) {
  constexpr int K_ = KH_ * KW_;
  for (int64_t ih = 0; ih < g.H; ++ih) {
    const Acc* src[K_];
    Acc wk[K_];
    for (int i = 0; i < KH_; ++i)
      for (int j = 0; j < KW_; ++j) {
        // output row oh = ih + PT - i*DH sits at gpad row oh + (KH-1)*DH - PT
        src[i * KW_ + j] = gpad + (ih + (KH_ - 1 - i) * g.DH) * gpad_w + (KW_ - 1 - j) * g.DW;
        wk[i * KW_ + j] = w[i * KW_ + j];
      }
    Acc* dst = std::is_same_v<T, Acc> ? reinterpret_cast<Acc*>(gi + ih * g.W) : tmp;
#pragma omp simd
    for (int64_t iw = 0; iw < g.W; ++iw) {
      Acc a = Acc(0);
#pragma GCC unroll 25
      for (int t = 0; t < K_; ++t) a += wk[t] * src[t][iw];
      dst[iw] = a;
    }
    if constexpr (!std::is_same_v<T, Acc>) store_row(tmp, gi + ih * g.W, g.W);
  }
}

template <int KH_, int KW_, class Acc, class T>
void backward_nchw(const BackwardArgs& a) {
  const Geom& g = a.g;
  const auto* go = static_cast<const T*>(a.grad_out);
  const auto* in = static_cast<const T*>(a.input);
  const auto* wt = static_cast<const T*>(a.weight);
  auto* gi = static_cast<T*>(a.grad_input);
  auto* gw = static_cast<T*>(a.grad_weight);
  auto* gb = static_cast<T*>(a.grad_bias);
  const int64_t O = num_out_channels(g), K = num_taps(g), OHW = g.OH * g.OW;
  const bool need_part = gw || gb;
  std::vector<Acc> w(O * K);
  load_row(wt, w.data(), O * K);
  std::vector<Acc> part(need_part ? g.N * O * (K + 1) : 0);
  const PlaneLayout L = plane_layout(g);
  // Stride 1 with a fixed kernel and M == 1: the register-blocked correlation. Its
  // padded grad_out needs (KH-1)*DH - PT rows above it and (KH-1)*DH - PB below
  // (both >= 0 unless padding exceeds the kernel's reach), likewise columns.
  constexpr bool fixed = KH_ > 0;
  const int64_t gpt = (g.KH - 1) * g.DH - g.PT, gpl = (g.KW - 1) * g.DW - g.PL;
  const bool s1 = fixed && g.SH == 1 && g.SW == 1 && g.M == 1 && gpt >= 0 && gpl >= 0 &&
                  g.PB <= (g.KH - 1) * g.DH && g.PR <= (g.KW - 1) * g.DW;
  const int64_t gpad_h = g.H + (g.KH - 1) * g.DH, gpad_w = g.W + (g.KW - 1) * g.DW;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> xbuf(need_part ? L.rows * L.row_len : 0);
    std::vector<Acc> gbuf(gi ? (s1 ? gpad_h * gpad_w : L.rows * L.row_len) : 0);
    std::vector<Acc> gacc(std::is_same_v<T, Acc> ? 0 : OHW), tmp(std::max(g.W, g.OW)), lanes((K + 1) * 8);
    std::vector<int64_t> off(K);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      if (need_part) fill_plane(in + p * g.H * g.W, g, L, xbuf.data());
      if (gi && !s1) std::fill(gbuf.begin(), gbuf.end(), Acc(0));
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = c * g.M + m;
        const T* gop_t = go + (n * O + o) * OHW;
        const Acc* gop;
        if constexpr (std::is_same_v<T, Acc>) {
          gop = gop_t;
        } else {
          load_row(gop_t, gacc.data(), OHW);
          gop = gacc.data();
        }
        if (need_part)
          weight_grad_plane<KH_, KW_>(xbuf.data(), L, g, gop, part.data() + (n * O + o) * (K + 1), lanes.data(),
                                      off.data());
        if (!gi) continue;
        if constexpr (fixed) {
          if (s1) {
            std::fill(gbuf.begin(), gbuf.end(), Acc(0));
            for (int64_t oh = 0; oh < g.OH; ++oh)
              std::copy(gop + oh * g.OW, gop + (oh + 1) * g.OW, gbuf.data() + (oh + gpt) * gpad_w + gpl);
            input_grad_plane_s1<KH_, KW_>(gbuf.data(), gpad_w, g, w.data() + o * K, gi + p * g.H * g.W, tmp.data());
            continue;
          }
        }
        input_grad_plane(gbuf.data(), L, g, gop, w.data() + o * K, off.data());
      }
      if (!gi || s1) continue;
      T* gip = gi + p * g.H * g.W;
      for (int64_t h = 0; h < g.H; ++h) {
        const Acc* row = gbuf.data() + (g.PT + h) * L.row_len;
        if (g.SW == 1) {
          store_row(row + g.PL, gip + h * g.W, g.W);
        } else {
          for (int64_t x = 0; x < g.W; ++x) gip[h * g.W + x] = static_cast<T>(row[col_offset(L, g.SW, g.PL + x)]);
        }
      }
    }
  });
  if (!need_part) return;
  // Fixed order over the batch: the same bits for any thread count.
  at::parallel_for(0, O, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o)
      for (int64_t t = 0; t <= K; ++t) {
        Acc s = Acc(0);
        for (int64_t n = 0; n < g.N; ++n) s += part[(n * O + o) * (K + 1) + t];
        if (t < K && gw) gw[o * K + t] = static_cast<T>(s);
        if (t == K && gb) gb[o] = static_cast<T>(s);
      }
  });
}

// ---------------------------------------------------------------- channels_last

constexpr int64_t kChannelBlock = 64;

// The valid taps of output (oh, ow): their indices and input offsets (in elements).
inline int64_t valid_taps_out(const Geom& g, int64_t n, int64_t oh, int64_t ow, int64_t* tap, int64_t* off) {
  int64_t cnt = 0;
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t ih = tap_source(oh, i, g.SH, g.DH, g.PT);
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t j = 0; j < g.KW; ++j) {
      const int64_t iw = tap_source(ow, j, g.SW, g.DW, g.PL);
      if (iw < 0 || iw >= g.W) continue;
      tap[cnt] = i * g.KW + j;
      off[cnt++] = ((n * g.H + ih) * g.W + iw) * g.C;
    }
  }
  return cnt;
}

template <class Acc, class T>
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
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap(K), off(K);
    Acc acc[kChannelBlock];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t cnt = valid_taps_out(g, n, oh, ow, tap.data(), off.data());
        T* dst = out + (r * g.OW + ow) * O;
        for (int64_t o0 = 0; o0 < O; o0 += kChannelBlock) {
          const int64_t len = std::min(kChannelBlock, O - o0);
#pragma omp simd
          for (int64_t q = 0; q < len; ++q) acc[q] = b[o0 + q];
          for (int64_t v = 0; v < cnt; ++v) {
            const Acc* wr = w.data() + tap[v] * O + o0;
            const T* s = in + off[v];
            if (g.M == 1) {
              s += o0;
#pragma omp simd
              for (int64_t q = 0; q < len; ++q) acc[q] += wr[q] * static_cast<Acc>(s[q]);
            } else {
              for (int64_t q = 0; q < len; ++q) acc[q] += wr[q] * static_cast<Acc>(s[(o0 + q) / g.M]);
            }
          }
          store_row(acc, dst + o0, len);
        }
      }
    }
  });
}

template <class Acc, class T>
void backward_cl(const BackwardArgs& a) {
  const Geom& g = a.g;
  const auto* go = static_cast<const T*>(a.grad_out);
  const auto* in = static_cast<const T*>(a.input);
  const auto* wt = static_cast<const T*>(a.weight);
  auto* gi = static_cast<T*>(a.grad_input);
  auto* gw = static_cast<T*>(a.grad_weight);
  auto* gb = static_cast<T*>(a.grad_bias);
  const int64_t O = num_out_channels(g), K = num_taps(g), C = g.C, M = g.M;
  std::vector<Acc> w(K * O);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t t = 0; t < K; ++t) w[t * O + o] = static_cast<Acc>(wt[o * K + t]);

  if (gi) {
    // Gather: each input position sums the outputs whose taps read it.
    at::parallel_for(0, g.N * g.H, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> tap(K), off(K);
      Acc acc[kChannelBlock];
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.H, ih = r % g.H;
        for (int64_t iw = 0; iw < g.W; ++iw) {
          int64_t cnt = 0;
          for (int64_t i = 0; i < g.KH; ++i) {
            const int64_t oh = tap_target(ih, i, g.SH, g.DH, g.PT, g.OH);
            if (oh < 0) continue;
            for (int64_t j = 0; j < g.KW; ++j) {
              const int64_t ow = tap_target(iw, j, g.SW, g.DW, g.PL, g.OW);
              if (ow < 0) continue;
              tap[cnt] = i * g.KW + j;
              off[cnt++] = ((n * g.OH + oh) * g.OW + ow) * O;
            }
          }
          T* dst = gi + (r * g.W + iw) * C;
          for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
            const int64_t len = std::min(kChannelBlock, C - c0);
#pragma omp simd
            for (int64_t q = 0; q < len; ++q) acc[q] = Acc(0);
            for (int64_t v = 0; v < cnt; ++v) {
              const Acc* wr = w.data() + tap[v] * O;
              const T* s = go + off[v];
              if (M == 1) {
#pragma omp simd
                for (int64_t q = 0; q < len; ++q) acc[q] += wr[c0 + q] * static_cast<Acc>(s[c0 + q]);
              } else {
                for (int64_t q = 0; q < len; ++q)
                  for (int64_t m = 0; m < M; ++m) {
                    const int64_t o = (c0 + q) * M + m;
                    acc[q] += wr[o] * static_cast<Acc>(s[o]);
                  }
              }
            }
            store_row(acc, dst + c0, len);
          }
        }
      }
    });
  }

  if (!gw && !gb) return;
  // Partials per fixed chunk of output rows (not per thread), summed in chunk order.
  const int64_t rows = g.N * g.OH;
  const int64_t chunks = std::min<int64_t>(rows, 64);
  const int64_t stride = (K + 1) * O;
  std::vector<Acc> part(chunks * stride, Acc(0));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap(K), off(K);
    for (int64_t ch = begin; ch < end; ++ch) {
      Acc* P = part.data() + ch * stride;
      for (int64_t r = ch * rows / chunks; r < (ch + 1) * rows / chunks; ++r) {
        const int64_t n = r / g.OH, oh = r % g.OH;
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const T* gr = go + (r * g.OW + ow) * O;
          Acc* pb = P + K * O;
#pragma omp simd
          for (int64_t o = 0; o < O; ++o) pb[o] += static_cast<Acc>(gr[o]);
          const int64_t cnt = valid_taps_out(g, n, oh, ow, tap.data(), off.data());
          for (int64_t v = 0; v < cnt; ++v) {
            Acc* pt = P + tap[v] * O;
            const T* s = in + off[v];
            if (M == 1) {
#pragma omp simd
              for (int64_t o = 0; o < O; ++o) pt[o] += static_cast<Acc>(gr[o]) * static_cast<Acc>(s[o]);
            } else {
              for (int64_t o = 0; o < O; ++o) pt[o] += static_cast<Acc>(gr[o]) * static_cast<Acc>(s[o / M]);
            }
          }
        }
      }
    }
  });
  at::parallel_for(0, stride, 256, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      Acc s = Acc(0);
      for (int64_t ch = 0; ch < chunks; ++ch) s += part[ch * stride + e];
      const int64_t t = e / O, o = e % O;
      if (t < K && gw) gw[o * K + t] = static_cast<T>(s);
      if (t == K && gb) gb[o] = static_cast<T>(s);
    }
  });
}

}  // namespace

void forward(const ForwardArgs& a) {
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using Acc = decltype(s);
    if (a.channels_last) return forward_cl<Acc, T>(a);
    with_kernel_size(a.g, [&](auto kh, auto kw) { forward_nchw<decltype(kh)::value, decltype(kw)::value, Acc, T>(a); });
  });
}

void backward(const BackwardArgs& a) {
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using Acc = decltype(s);
    if (a.channels_last) return backward_cl<Acc, T>(a);
    with_kernel_size(a.g, [&](auto kh, auto kw) { backward_nchw<decltype(kh)::value, decltype(kw)::value, Acc, T>(a); });
  });
}

}  // namespace FO_CPU_NS
}  // namespace depthwise
}  // namespace fusedopt
