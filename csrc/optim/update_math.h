#pragma once
// The update formulas of every fused optimizer, written once.
//
// Each formula is a template over V, the value type it computes on: `float` or
// `double` in the CUDA kernels, the scalar CPU path and the native tests; an AVX2
// vector (simd_avx2.h) in the AVX2 CPU kernels. Coefficients arrive as scalars (S) and are lifted with V(x), a
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

// Per-call hyperparameters, passed from the op layer to the kernels.
struct AdamHyper {
  double beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled_weight_decay;
};
struct SgdHyper {
  double momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;  // first_step: the buffer starts as the grad
};
struct RmspropHyper {
  double alpha, eps, weight_decay, momentum;
  bool centered, maximize;
};
struct AdagradHyper {
  double lr_decay, weight_decay, eps;
  bool maximize;
};
struct AdadeltaHyper {
  double rho, eps, weight_decay;
  bool maximize;
};

// Per-tensor scalars every optimizer gets: lr, the step count *after* this update's
// increment (0 for optimizers without one), and 1/grad_scale (1 without a GradScaler).
struct StepScalars {
  double lr, step, inv_grad_scale;
};

// The math below has internal linkage (see macros.h): each unit that
// includes this header, AVX2 or not, gets its own copy.
namespace {

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

// What every optimizer does to the grad first: unscale (GradScaler), negate
// (maximize), add L2 weight decay. The unscaled g is what the caller writes back.
template <class S>
struct GradCoeffs {
  S inv_grad_scale, grad_sign, weight_decay;
  bool l2;
};

template <class S>
FO_HD GradCoeffs<S> grad_coeffs(const StepScalars& s, bool maximize, double weight_decay, bool l2) {
  return GradCoeffs<S>{S(s.inv_grad_scale), S(maximize ? -1 : 1), S(weight_decay), l2 && weight_decay != 0};
}

template <class V, class S>
FO_HD V prepare_grad(V& g, const V& p, const GradCoeffs<S>& c) {
  g = g * V(c.inv_grad_scale);
  V d = g * V(c.grad_sign);
  if (c.l2) d = d + V(c.weight_decay) * p;
  return d;
}

// Each optimizer below is a traits struct: Hyper (per call), Coeffs<S> (per tensor,
// from Hyper and StepScalars), and update(p, g, s0, s1, s2, coeffs) on registers. The
// state slots s0..s2 are the op's state lists in schema order; unused slots are ignored.

// ---------------------------------------------------------------------------------
// Adam / AdamW. States: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad).
struct Adam {
  using Hyper = AdamHyper;
  template <class S>
  struct Coeffs {
    GradCoeffs<S> grad;
    S beta1_w;  // lerp weight 1 - beta1
    bool lerp_low;
    S beta2, one_minus_beta2;
    S decay;  // decoupled weight decay factor 1 - lr * wd
    bool decoupled;
    S neg_step_size, inv_bias_correction2_sqrt, eps;
    bool amsgrad;
  };

  template <class S>
  FO_HD static Coeffs<S> coeffs(const Hyper& h, const StepScalars& s) {
    Coeffs<S> c;
    c.grad = grad_coeffs<S>(s, h.maximize, h.weight_decay, !h.decoupled_weight_decay);
    c.beta1_w = S(1.0 - h.beta1);
    c.lerp_low = (1.0 - h.beta1) < 0.5;
    c.beta2 = S(h.beta2);
    c.one_minus_beta2 = S(1.0 - h.beta2);
    c.decoupled = h.weight_decay != 0 && h.decoupled_weight_decay;
    c.decay = S(1.0 - s.lr * h.weight_decay);
    const double bc1 = 1.0 - ::pow(h.beta1, s.step);
    const double bc2 = 1.0 - ::pow(h.beta2, s.step);
    c.neg_step_size = S(-(s.lr / bc1));
    // A multiply by the reciprocal where torch divides: one division fewer per
    // element, at most one ulp apart in the denominator.
    c.inv_bias_correction2_sqrt = S(1.0 / ::sqrt(bc2));
    c.eps = S(h.eps);
    c.amsgrad = h.amsgrad;
    return c;
  }

  template <class V, class S>
  FO_HD static void update(V& p, V& g, V& m, V& v, V& vmax, const Coeffs<S>& c) {
    if (c.decoupled) p = p * V(c.decay);
    const V d = prepare_grad(g, p, c.grad);
    m = lerp(m, d, c.beta1_w, c.lerp_low);
    v = v * V(c.beta2) + V(c.one_minus_beta2) * d * d;
    if (c.amsgrad) vmax = fo_max(vmax, v);
    const V denom = fo_sqrt(c.amsgrad ? vmax : v) * V(c.inv_bias_correction2_sqrt) + V(c.eps);
    p = p + V(c.neg_step_size) * (m / denom);
  }
};

// ---------------------------------------------------------------------------------
// SGD with momentum, dampening and Nesterov. State: momentum_buffer (momentum != 0).
struct Sgd {
  using Hyper = SgdHyper;
  template <class S>
  struct Coeffs {
    GradCoeffs<S> grad;
    S momentum, one_minus_dampening, neg_lr;
    bool has_momentum, nesterov, first_step;
  };

  template <class S>
  FO_HD static Coeffs<S> coeffs(const Hyper& h, const StepScalars& s) {
    return Coeffs<S>{grad_coeffs<S>(s, h.maximize, h.weight_decay, true), S(h.momentum), S(1.0 - h.dampening),
                     S(-s.lr), h.momentum != 0, h.nesterov, h.first_step};
  }

  template <class V, class S>
  FO_HD static void update(V& p, V& g, V& buf, V&, V&, const Coeffs<S>& c) {
    V d = prepare_grad(g, p, c.grad);
    if (c.has_momentum) {
      buf = c.first_step ? d : buf * V(c.momentum) + V(c.one_minus_dampening) * d;
      d = c.nesterov ? d + V(c.momentum) * buf : buf;
    }
    p = p + V(c.neg_lr) * d;
  }
};

// ---------------------------------------------------------------------------------
// RMSprop (eps outside the square root). States: square_avg, momentum_buffer
// (momentum > 0), grad_avg (centered).
struct Rmsprop {
  using Hyper = RmspropHyper;
  template <class S>
  struct Coeffs {
    GradCoeffs<S> grad;
    S alpha, one_minus_alpha, eps, momentum, neg_lr;
    bool lerp_low, centered, has_momentum;
  };

  template <class S>
  FO_HD static Coeffs<S> coeffs(const Hyper& h, const StepScalars& s) {
    return Coeffs<S>{grad_coeffs<S>(s, h.maximize, h.weight_decay, true), S(h.alpha), S(1.0 - h.alpha), S(h.eps),
                     S(h.momentum), S(-s.lr), (1.0 - h.alpha) < 0.5, h.centered, h.momentum > 0};
  }

  template <class V, class S>
  FO_HD static void update(V& p, V& g, V& square_avg, V& buf, V& grad_avg, const Coeffs<S>& c) {
    const V d = prepare_grad(g, p, c.grad);
    square_avg = square_avg * V(c.alpha) + V(c.one_minus_alpha) * d * d;
    V avg;
    if (c.centered) {
      grad_avg = lerp(grad_avg, d, c.one_minus_alpha, c.lerp_low);
      avg = fo_sqrt(square_avg + V(S(-1)) * grad_avg * grad_avg);
    } else {
      avg = fo_sqrt(square_avg);
    }
    avg = avg + V(c.eps);
    if (c.has_momentum) {
      buf = buf * V(c.momentum) + d / avg;
      p = p + V(c.neg_lr) * buf;
    } else {
      p = p + V(c.neg_lr) * (d / avg);
    }
  }
};

// ---------------------------------------------------------------------------------
// Adagrad with lr decay. State: sum.
struct Adagrad {
  using Hyper = AdagradHyper;
  template <class S>
  struct Coeffs {
    GradCoeffs<S> grad;
    S eps, neg_clr;
  };

  template <class S>
  FO_HD static Coeffs<S> coeffs(const Hyper& h, const StepScalars& s) {
    const double clr = s.lr / (1.0 + (s.step - 1.0) * h.lr_decay);
    return Coeffs<S>{grad_coeffs<S>(s, h.maximize, h.weight_decay, true), S(h.eps), S(-clr)};
  }

  template <class V, class S>
  FO_HD static void update(V& p, V& g, V& sum, V&, V&, const Coeffs<S>& c) {
    const V d = prepare_grad(g, p, c.grad);
    sum = sum + d * d;
    p = p + V(c.neg_clr) * (d / (fo_sqrt(sum) + V(c.eps)));
  }
};

// ---------------------------------------------------------------------------------
// Adadelta (eps inside both square roots). States: square_avg, acc_delta.
struct Adadelta {
  using Hyper = AdadeltaHyper;
  template <class S>
  struct Coeffs {
    GradCoeffs<S> grad;
    S rho, one_minus_rho, eps, neg_lr;
  };

  template <class S>
  FO_HD static Coeffs<S> coeffs(const Hyper& h, const StepScalars& s) {
    return Coeffs<S>{grad_coeffs<S>(s, h.maximize, h.weight_decay, true), S(h.rho), S(1.0 - h.rho), S(h.eps),
                     S(-s.lr)};
  }

  template <class V, class S>
  FO_HD static void update(V& p, V& g, V& square_avg, V& acc_delta, V&, const Coeffs<S>& c) {
    const V d = prepare_grad(g, p, c.grad);
    square_avg = square_avg * V(c.rho) + V(c.one_minus_rho) * d * d;
    const V delta = fo_sqrt(acc_delta + V(c.eps)) / fo_sqrt(square_avg + V(c.eps)) * d;
    acc_delta = acc_delta * V(c.rho) + V(c.one_minus_rho) * delta * delta;
    p = p + V(c.neg_lr) * delta;
  }
};

// The traits struct of each optimizer, looked up from its Hyper type.
template <class H>
struct OpFor;
template <>
struct OpFor<AdamHyper> { using type = Adam; };
template <>
struct OpFor<SgdHyper> { using type = Sgd; };
template <>
struct OpFor<RmspropHyper> { using type = Rmsprop; };
template <>
struct OpFor<AdagradHyper> { using type = Adagrad; };
template <>
struct OpFor<AdadeltaHyper> { using type = Adadelta; };

}  // namespace

// Every optimizer, for code generated once per optimizer (X(Name) with NameHyper).
#define FO_FOR_EACH_OPTIMIZER(X) X(Adam) X(Sgd) X(Rmsprop) X(Adagrad) X(Adadelta)

}  // namespace optim
}  // namespace fusedopt
