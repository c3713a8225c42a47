#pragma once
// The update formulas of every fused optimizer, written once.
//
// Each formula is a template over V, the value type it computes on: `float` or
// `double` in the CUDA kernels and the scalar tests, `at::vec::Vectorized<float>` in
// the CPU kernels. Coefficients arrive as scalars (S) and are lifted with V(x), a
// no-op for scalars and a broadcast for SIMD vectors. fo_sqrt and fo_max are
// overloaded here for scalars; the SIMD types bring theirs (found by ADL).
//
// The operation order follows torch.optim's single-tensor (foreach=False) code, so
// that float32 results agree with torch to a few ulps. Per-tensor coefficients are
// computed in double, as torch computes them in Python floats.
#include <cmath>

#include "../common/macros.h"

namespace fusedopt {
namespace optim {

FO_HD float fo_sqrt(float x) { return ::sqrtf(x); }
FO_HD double fo_sqrt(double x) { return ::sqrt(x); }
// NaN-propagating, like torch.maximum.
FO_HD float fo_max(float a, float b) { return (a > b || a != a) ? a : b; }
FO_HD double fo_max(double a, double b) { return (a > b || a != a) ? a : b; }

// torch.lerp picks one of two forms by |weight| < 0.5; the choice is uniform
// across a tensor, so it is decided once, on the host.
template <class V, class S>
FO_HD V lerp(V from, V to, S weight, bool low_weight) {
  return low_weight ? from + V(weight) * (to - from) : to - (to - from) * V(S(1) - weight);
}

// ---------------------------------------------------------------------------------
// Adam / AdamW
struct AdamHyper {
  double beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled_weight_decay;
};

template <class S>
struct AdamCoeffs {
  S inv_grad_scale;  // GradScaler unscaling; 1 without a scaler
  S grad_sign;       // -1 under maximize
  S beta1_w;      // lerp weight 1 - beta1
  bool lerp_low;
  S beta2, one_minus_beta2;
  S weight_decay, decay;  // L2 term, or the decoupled factor 1 - lr * wd
  bool l2, decoupled;
  S neg_step_size, inv_bias_correction2_sqrt, eps;
  bool amsgrad;
};

// `step` is the step count after this update's increment.
template <class S>
FO_HD AdamCoeffs<S> adam_coeffs(const AdamHyper& h, double lr, double step, double inv_grad_scale) {
  AdamCoeffs<S> c;
  c.inv_grad_scale = S(inv_grad_scale);
  c.grad_sign = S(h.maximize ? -1 : 1);
  c.beta1_w = S(1.0 - h.beta1);
  c.lerp_low = (1.0 - h.beta1) < 0.5;
  c.beta2 = S(h.beta2);
  c.one_minus_beta2 = S(1.0 - h.beta2);
  c.l2 = h.weight_decay != 0 && !h.decoupled_weight_decay;
  c.decoupled = h.weight_decay != 0 && h.decoupled_weight_decay;
  c.weight_decay = S(h.weight_decay);
  c.decay = S(1.0 - lr * h.weight_decay);
  const double bc1 = 1.0 - ::pow(h.beta1, step);
  const double bc2 = 1.0 - ::pow(h.beta2, step);
  c.neg_step_size = S(-(lr / bc1));
  // A multiply by the reciprocal where torch divides: one division fewer per element,
  // at most one ulp apart in the denominator.
  c.inv_bias_correction2_sqrt = S(1.0 / ::sqrt(bc2));
  c.eps = S(h.eps);
  c.amsgrad = h.amsgrad;
  return c;
}

template <class V, class S>
FO_HD void adam_update(V& p, V& g, V& m, V& v, V& vmax, const AdamCoeffs<S>& c) {
  g = g * V(c.inv_grad_scale);  // the caller writes g back only when unscaling
  V d = g * V(c.grad_sign);
  if (c.decoupled) p = p * V(c.decay);
  if (c.l2) d = d + V(c.weight_decay) * p;
  m = lerp(m, d, c.beta1_w, c.lerp_low);
  v = v * V(c.beta2) + V(c.one_minus_beta2) * d * d;
  V denom;
  if (c.amsgrad) {
    vmax = fo_max(vmax, v);
    denom = fo_sqrt(vmax) * V(c.inv_bias_correction2_sqrt) + V(c.eps);
  } else {
    denom = fo_sqrt(v) * V(c.inv_bias_correction2_sqrt) + V(c.eps);
  }
  p = p + V(c.neg_step_size) * (m / denom);
}

}  // namespace optim
}  // namespace fusedopt
