#pragma once
// Batch norm formulas, written once for the CPU kernels (scalars and SIMD lanes) and the
// CUDA kernels. V is the value type of the math (float, double, or a SIMD vector of
// them); S the per-channel scalar type (float, or double for double inputs).
//
// Statistics are kept as (count, mean, M2) and merged with Chan's parallel formula, so
// a large mean (1e4 + noise) costs no precision, unlike sum/sum-of-squares.
#include <cmath>
#include <cstdint>

#include "../common/macros.h"

namespace fusedopt {
namespace batchnorm {
namespace {

// Scalar helpers; the SIMD lane types provide the same names (found by lookup at
// instantiation).
FO_HD float bn_relu(float x) { return (x > 0.0f || x != x) ? x : 0.0f; }
FO_HD double bn_relu(double x) { return (x > 0.0 || x != x) ? x : 0.0; }
// dy where the forward output was positive, else 0 (the relu mask, recomputed from the
// saved output instead of saving a mask).
FO_HD float bn_keep_if_pos(float out, float dy) { return out > 0.0f ? dy : 0.0f; }
FO_HD double bn_keep_if_pos(double out, double dy) { return out > 0.0 ? dy : 0.0; }

// Running statistics of one channel over some elements.
struct Welford {
  double n = 0.0, mean = 0.0, m2 = 0.0;
};

// Chan et al.: merge b into a.
FO_HD void welford_merge(double& n_a, double& mean_a, double& m2_a, double n_b, double mean_b, double m2_b) {
  if (n_b == 0.0) return;
  const double n = n_a + n_b;
  const double delta = mean_b - mean_a;
  const double wb = n_b / n;
  mean_a = mean_a + delta * wb;
  m2_a = m2_a + m2_b + delta * delta * n_a * wb;
  n_a = n;
}
FO_HD void welford_merge(Welford& a, const Welford& b) { welford_merge(a.n, a.mean, a.m2, b.n, b.mean, b.m2); }

// A walk over one channel's N * inner elements (planes layout: element i of plane n at
// (n * C + c) * inner + i) at a fixed step, without a division per element: the CUDA
// reductions' threads take every step-th element of a run that crosses planes, so that
// small planes (14x14) still give each thread several loads in flight. off is the
// current element's offset in the tensor, i its place in its plane.
struct PlaneWalk {
  int64_t off, i;
  int64_t inner, di;  // step = whole planes + di elements, di < inner
  int64_t jump;       // offset change of one step that stays within the plane reached
  int64_t wrap;       // extra change where i passes the plane's end
};
// Starts at the channel's k-th element.
FO_HD PlaneWalk plane_walk(int64_t C, int64_t inner, int64_t c, int64_t k, int64_t step) {
  const int64_t n = k / inner, dn = step / inner;
  PlaneWalk w;
  w.i = k - n * inner;
  w.off = (n * C + c) * inner + w.i;
  w.inner = inner;
  w.di = step - dn * inner;
  w.jump = dn * C * inner + w.di;
  w.wrap = (C - 1) * inner;
  return w;
}
FO_HD void advance(PlaneWalk& w) {
  w.off += w.jump;
  w.i += w.di;
  if (w.i >= w.inner) {
    w.i -= w.inner;
    w.off += w.wrap;
  }
}

// Biased variance (the one that normalises) from M2.
FO_HD double biased_var(double n, double m2) { return n > 0.0 ? m2 / n : 0.0; }

template <class S>
FO_HD S inv_std(S var, double eps) {
  return static_cast<S>(1.0 / ::sqrt(static_cast<double>(var) + eps));
}

// Per-channel coefficients of the forward: y = (x - mean) * scale + bias.
template <class S>
struct FwdCoeffs {
  S mean, scale, bias;
};
template <class S>
FO_HD FwdCoeffs<S> fwd_coeffs(S mean, S var, const S* weight, const S* bias, int64_t c, double eps) {
  const S istd = inv_std<S>(var, eps);
  FwdCoeffs<S> k;
  k.mean = mean;
  k.scale = weight ? static_cast<S>(weight[c] * istd) : istd;
  k.bias = bias ? bias[c] : S(0);
  return k;
}

// One output element: normalise, affine, optional residual, optional relu.
template <class V>
FO_HD V bn_forward(V x, V mean, V scale, V bias) {
  return (x - mean) * scale + bias;
}
template <class V>
FO_HD V bn_finish(V y, V residual, bool has_residual, bool relu) {
  if (has_residual) y = y + residual;
  return relu ? bn_relu(y) : y;
}

// Running statistics update, as torch does: the unbiased variance (n / (n - 1)) enters
// the running variance.
FO_HD double running_update(double running, double stat, double momentum) {
  return (1.0 - momentum) * running + momentum * stat;
}
// momentum, or with none the cumulative average's 1 / num_batches_tracked (counted
// already for this batch), as torch's modules do.
FO_HD double update_factor(bool has_momentum, double momentum, const int64_t* num_batches_tracked) {
  return has_momentum ? momentum : 1.0 / static_cast<double>(*num_batches_tracked);
}
FO_HD double unbiased_var(double var, int64_t count) {
  return count > 1 ? var * static_cast<double>(count) / static_cast<double>(count - 1) : var;
}

// Per-channel coefficients of the backward, from the per-channel sums of dy' (the
// relu-masked grad) and dy' * (x - mean):
//   training: dx = (dy' - sum_dy/n - (x - mean) * sum_dy_xmu/n * istd^2) * w * istd
//   eval:     dx = dy' * w * istd   (the statistics are constants)
// Written around (x - mean) so that a large mean does not cancel.
template <class S>
struct BwdCoeffs {
  S mean, mean_dy, k, a;  // dx = (dy' - mean_dy - (x - mean) * k) * a
};
template <class S>
FO_HD BwdCoeffs<S> bwd_coeffs(S mean, S var, const S* weight, int64_t c, double sum_dy, double sum_dy_xmu, double count,
                              bool training, double eps) {
  const double istd = 1.0 / ::sqrt(static_cast<double>(var) + eps);
  BwdCoeffs<S> k;
  k.mean = mean;
  k.a = static_cast<S>(weight ? static_cast<double>(weight[c]) * istd : istd);
  if (training && count > 0.0) {
    k.mean_dy = static_cast<S>(sum_dy / count);
    k.k = static_cast<S>(sum_dy_xmu / count * istd * istd);
  } else {
    k.mean_dy = S(0);
    k.k = S(0);
  }
  return k;
}
template <class V>
FO_HD V bn_grad_input(V dy, V x, V mean, V mean_dy, V k, V a) {
  return (dy - mean_dy - (x - mean) * k) * a;
}
// grad_weight and grad_bias of one channel.
FO_HD double grad_weight(double sum_dy_xmu, double var, double eps) { return sum_dy_xmu / ::sqrt(var + eps); }

}  // namespace
}  // namespace batchnorm
}  // namespace fusedopt
