#pragma once
// Depthwise convolution formulas shared by the CPU and CUDA kernels: the geometry
// (output extent, which input a tap reads, which output a tap of an input feeds) and
// the tap loops of one output element, one input-grad element and one weight-grad term.
// The CUDA kernels run these per thread; the CPU kernels use the geometry everywhere
// and the element loops on their generic path (channels_last with depth multiplier > 1).
//
// Conventions: output channel o reads input channel o / M (M = depth multiplier, as
// nn.Conv2d(groups=C) with C*M outputs); weight is (C*M, 1, KH, KW) contiguous; padding
// is (top, bottom, left, right); Acc is float for float/half/bf16 and double for double.
#include <cstdint>

#include "../common/macros.h"

namespace fusedopt {
namespace depthwise {

// Plain data, no member functions: it crosses from the op layer into both CPU units,
// whose code must stay apart (see common/macros.h).
struct Geom {
  int64_t N, C, M, H, W;  // input batch, channels, depth multiplier, height, width
  int64_t OH, OW;         // output height, width
  int64_t KH, KW, SH, SW, DH, DW;
  int64_t PT, PB, PL, PR;
};

// Element strides of a 4-D (n, c, h, w) tensor: NCHW or channels_last.
struct Strides4 {
  int64_t n, c, h, w;
};

namespace {

FO_HD int64_t num_out_channels(const Geom& g) { return g.C * g.M; }

// Input channel of output channel o. Depth multiplier 1 takes no division: in a GPU
// thread's tap loop, a 64-bit division per tap outweighed the tap.
FO_HD int64_t in_channel(const Geom& g, int64_t o) { return g.M == 1 ? o : o / g.M; }
FO_HD int64_t num_taps(const Geom& g) { return g.KH * g.KW; }

// Output extent along one axis; <= 0 means the padded input is smaller than the kernel.
FO_HD int64_t out_extent(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pad_lo, int64_t pad_hi) {
  const int64_t span = in + pad_lo + pad_hi - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

// Input coordinate read by tap t of output coordinate o (may fall in the padding).
FO_HD int64_t tap_source(int64_t o, int64_t t, int64_t s, int64_t d, int64_t pad_lo) { return o * s - pad_lo + t * d; }

// Output coordinate whose tap t reads input coordinate i, or -1 if none does. Strides
// 1 and 2 (nearly every layer) take no division: on a GPU, the 64-bit divisions of a
// 3x3 input-grad element cost more than all its loads and multiplies.
FO_HD int64_t tap_target(int64_t i, int64_t t, int64_t s, int64_t d, int64_t pad_lo, int64_t out_n) {
  const int64_t num = i + pad_lo - t * d;
  if (num < 0) return -1;
  int64_t o;
  if (s == 1) {
    o = num;
  } else if (s == 2) {
    if (num & 1) return -1;
    o = num >> 1;
  } else {
    if (num % s != 0) return -1;
    o = num / s;
  }
  return o < out_n ? o : -1;
}

// The (n, oh, ow) of the output positions pos, pos + step, pos + 2 * step, ... (flat
// index n * OH * OW + oh * OW + ow), stepped without a division: the step's own
// decomposition is added with carries. For the CUDA grad_weight walks, where 64-bit
// divisions per position cost more than a 3x3 tap loop.
struct PositionWalk {
  int64_t n, oh, ow;     // the current position
  int64_t dn, doh, dow;  // the step, decomposed the same way
  int64_t OH, OW;
};

FO_HD PositionWalk position_walk(const Geom& g, int64_t pos, int64_t step) {
  const int64_t plane = g.OH * g.OW;
  return {pos / plane, (pos / g.OW) % g.OH, pos % g.OW, step / plane, (step / g.OW) % g.OH, step % g.OW, g.OH, g.OW};
}

// One step. ow + dow < 2 * OW and oh + doh + 1 < 2 * OH, so one carry each suffices.
FO_HD void advance(PositionWalk& p) {
  p.ow += p.dow;
  p.oh += p.doh;
  p.n += p.dn;
  if (p.ow >= p.OW) p.ow -= p.OW, ++p.oh;
  if (p.oh >= p.OH) p.oh -= p.OH, ++p.n;
}

template <class Acc, class T>
FO_HD Acc to_acc(const T& x) {
  return static_cast<Acc>(x);
}

// f(i, j, ih, iw) for each tap (i, j) of output (oh, ow) that reads inside the input.
template <class F>
FO_HD void for_input_taps(const Geom& g, int64_t oh, int64_t ow, const F& f) {
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t ih = tap_source(oh, i, g.SH, g.DH, g.PT);
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t j = 0; j < g.KW; ++j) {
      const int64_t iw = tap_source(ow, j, g.SW, g.DW, g.PL);
      if (iw < 0 || iw >= g.W) continue;
      f(i, j, ih, iw);
    }
  }
}

// f(i, j, oh, ow) for each output (oh, ow) whose tap (i, j) reads input (ih, iw).
template <class F>
FO_HD void for_output_taps(const Geom& g, int64_t ih, int64_t iw, const F& f) {
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t oh = tap_target(ih, i, g.SH, g.DH, g.PT, g.OH);
    if (oh < 0) continue;
    for (int64_t j = 0; j < g.KW; ++j) {
      const int64_t ow = tap_target(iw, j, g.SW, g.DW, g.PL, g.OW);
      if (ow < 0) continue;
      f(i, j, oh, ow);
    }
  }
}

// out[n, o, oh, ow] before the bias: sum over taps of weight * input (padding reads 0).
template <class Acc, class T>
FO_HD Acc forward_element(const T* in, const Strides4& is, const T* w, const Geom& g, int64_t n, int64_t o, int64_t oh,
                          int64_t ow) {
  const T* plane = in + n * is.n + in_channel(g, o) * is.c;
  const T* wo = w + o * num_taps(g);
  Acc acc = Acc(0);
  for_input_taps(g, oh, ow, [&](int64_t i, int64_t j, int64_t ih, int64_t iw) {
    acc += to_acc<Acc>(wo[i * g.KW + j]) * to_acc<Acc>(plane[ih * is.h + iw * is.w]);
  });
  return acc;
}

// grad_input[n, c, ih, iw]: every output of the M channels of c whose tap reads (ih, iw).
template <class Acc, class T>
FO_HD Acc input_grad_element(const T* go, const Strides4& gs, const T* w, const Geom& g, int64_t n, int64_t c,
                             int64_t ih, int64_t iw) {
  Acc acc = Acc(0);
  for (int64_t m = 0; m < g.M; ++m) {
    const int64_t o = c * g.M + m;
    const T* plane = go + n * gs.n + o * gs.c;
    const T* wo = w + o * num_taps(g);
    for_output_taps(g, ih, iw, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
      acc += to_acc<Acc>(plane[oh * gs.h + ow * gs.w]) * to_acc<Acc>(wo[i * g.KW + j]);
    });
  }
  return acc;
}

// The term of output position (n, oh, ow) in grad_weight[o, 0, i, j]: dy, grad_out
// there, times the input that tap (i, j) read (0 in the padding). plane: the input's
// (n, in_channel(o)) plane. dy and the plane are the same for every tap of a position.
template <class Acc, class T>
FO_HD Acc weight_grad_term(Acc dy, const T* plane, const Strides4& is, const Geom& g, int64_t oh, int64_t ow,
                           int64_t i, int64_t j) {
  const int64_t ih = tap_source(oh, i, g.SH, g.DH, g.PT);
  const int64_t iw = tap_source(ow, j, g.SW, g.DW, g.PL);
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return Acc(0);
  return dy * to_acc<Acc>(plane[ih * is.h + iw * is.w]);
}

}  // namespace
}  // namespace depthwise
}  // namespace fusedopt
