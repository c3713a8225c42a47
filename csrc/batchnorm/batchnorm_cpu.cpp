// CPU backend of the batch norm ops: checks and layout (batchnorm_ops.h), per-channel
// coefficients, then the kernel variant (AVX2 or scalar) this CPU supports.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../common/cpu_features.h"
#include "../common/cpu_memory.h"
#include "batchnorm_math.h"
#include "batchnorm_ops.h"

namespace fusedopt {
namespace batchnorm {
namespace {

// An output the kernels will write in full, fresh pages advised to be huge (cpu_memory.h).
at::Tensor fresh_output(const Prepared& p) {
  at::Tensor t = empty_output(p);
  advise_huge_pages(t);
  return t;
}

bool use_avx2() { return cpu_simd() == CpuSimd::Avx2; }

template <class Body>
void dispatch_math(c10::ScalarType acc, const Body& body) {
  if (acc == c10::kDouble) {
    body(double{});
  } else {
    body(float{});
  }
}

// Per-channel (n, mean, M2) -> mean and biased var in the math dtype.
struct Stats {
  std::vector<double> n, mean, m2;
  explicit Stats(int64_t C) : n(C), mean(C), m2(C) {}
  StatsOut out() { return StatsOut{n.data(), mean.data(), m2.data()}; }
};

void local_stats(const Prepared& p, Stats& s) {
  (use_avx2() ? avx2::stats : scalar::stats)(p.x.scalar_type(), p.g, p.x.data_ptr(), s.out());
}

void write_stats(const Prepared& p, const Stats& s, at::Tensor& mean, at::Tensor& var) {
  dispatch_math(p.acc, [&](auto z) {
    using S = decltype(z);
    S* m = mean.data_ptr<S>();
    S* v = var.data_ptr<S>();
    for (int64_t c = 0; c < p.g.C; ++c) {
      m[c] = static_cast<S>(s.n[c] > 0 ? s.mean[c] : NAN);
      v[c] = static_cast<S>(s.n[c] > 0 ? biased_var(s.n[c], s.m2[c]) : NAN);
    }
  });
}

// The fields every forward / backward kernel call shares.
FwdArgs fwd_args(const Prepared& p, at::Tensor& y, const OptTensor& residual, bool relu, void* mean) {
  FwdArgs a;
  a.dtype = p.x.scalar_type();
  a.g = p.g;
  a.x = p.x.data_ptr();
  a.y = y.data_ptr();
  a.residual = ptr_or_null(residual);
  a.relu = relu;
  a.mean = mean;
  return a;
}
BwdArgs bwd_args(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const at::Tensor& mean) {
  BwdArgs a;
  a.dtype = p.x.scalar_type();
  a.g = p.g;
  a.dy = dy.data_ptr();
  a.x = p.x.data_ptr();
  a.out = out && out->defined() ? out->data_ptr() : nullptr;
  a.mean = mean.data_ptr();
  return a;
}

// y = finish((x - mean) * scale + bias) with scale/bias from the statistics and affine.
void normalise(const Prepared& p, const at::Tensor& mean, const at::Tensor& var, const OptTensor& w, const OptTensor& b,
               const OptTensor& residual, bool relu, double eps, at::Tensor& y) {
  at::Tensor coeffs = at::empty({2, p.g.C}, mean.options());
  dispatch_math(p.acc, [&](auto z) {
    using S = decltype(z);
    const S* wp = w ? w->data_ptr<S>() : nullptr;
    const S* bp = b ? b->data_ptr<S>() : nullptr;
    const S* m = mean.data_ptr<S>();
    const S* v = var.data_ptr<S>();
    S* scale = coeffs.data_ptr<S>();
    S* bias = scale + p.g.C;
    for (int64_t c = 0; c < p.g.C; ++c) {
      const FwdCoeffs<S> k = fwd_coeffs<S>(m[c], v[c], wp, bp, c, eps);
      scale[c] = k.scale;
      bias[c] = k.bias;
    }
    FwdArgs a = fwd_args(p, y, residual, relu, const_cast<S*>(m));
    a.scale = scale;
    a.bias = bias;
    (use_avx2() ? avx2::apply : scalar::apply)(a);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train(const at::Tensor& input, const OptTensor& weight,
                                                                 const OptTensor& bias, const OptTensor& residual,
                                                                 bool relu, double eps) {
  const char* op = "fusedopt::batch_norm_train";
  const Prepared p = prepare_input(input, op);
  const auto [w, b, r] = affine_args(p, weight, bias, residual, eps, op);
  at::Tensor y = fresh_output(p);
  at::Tensor mean = channel_empty(p, p.acc), var = channel_empty(p, p.acc);
  if (trivial_stats(p, mean, var)) return {y, mean, var};
  if (!p.g.rows) {
    FwdArgs a = fwd_args(p, y, r, relu, mean.data_ptr());
    a.var = var.data_ptr();
    a.weight_in = ptr_or_null(w);
    a.bias_in = ptr_or_null(b);
    a.eps = eps;
    (use_avx2() ? avx2::train_fused : scalar::train_fused)(a);
  } else {
    Stats s(p.g.C);
    local_stats(p, s);
    write_stats(p, s, mean, var);
    normalise(p, mean, var, w, b, r, relu, eps, y);
  }
  return {y, mean, var};
}

at::Tensor batch_norm_eval(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
                           const OptTensor& weight, const OptTensor& bias, const OptTensor& residual, bool relu,
                           double eps) {
  const char* op = "fusedopt::batch_norm_eval";
  const Prepared p = prepare_input(input, op);
  const at::Tensor m = channel_param(mean, p, op, "mean");
  const at::Tensor v = channel_param(var, p, op, "var");
  const auto [w, b, r] = affine_args(p, weight, bias, residual, eps, op);
  at::Tensor y = fresh_output(p);
  if (y.numel() == 0) return y;
  normalise(p, m, v, w, b, r, relu, eps, y);
  return y;
}

void batch_norm_update_stats_(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                              const at::Tensor& var, std::optional<double> momentum,
                              const OptTensor& num_batches_tracked, int64_t count) {
  const auto [m, v] = check_update_stats(running_mean, running_var, mean, var, momentum, num_batches_tracked, count);
  const int64_t C = running_mean.numel();
  const double factor = update_factor(momentum.has_value(), momentum.value_or(0.0),
                                      momentum ? nullptr : num_batches_tracked->data_ptr<int64_t>());
  const double* mp = m.data_ptr<double>();
  const double* vp = v.data_ptr<double>();
  auto update = [&](const at::Tensor& t, bool is_var) {
    AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, t.scalar_type(), "bn_update_stats", [&] {
      scalar_t* r = t.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        const double stat = is_var ? unbiased_var(vp[c], count) : mp[c];
        r[c] = static_cast<scalar_t>(running_update(static_cast<double>(r[c]), stat, factor));
      }
    });
  };
  update(running_mean, false);
  update(running_var, true);
}

// Element-pass coefficients (rows mean_dy, k, a of a [3, C] table) from per-channel sums
// (nullptr: none, eval mode).
at::Tensor bwd_coeff_table(const Prepared& p, const at::Tensor& mean, const at::Tensor& var, const OptTensor& w,
                           const double* sum_dy, const double* sum_dy_xmu, double count, bool training, double eps) {
  at::Tensor coeffs = at::empty({3, p.g.C}, mean.options());
  dispatch_math(p.acc, [&](auto z) {
    using S = decltype(z);
    S* mdy = coeffs.data_ptr<S>();
    S* kk = mdy + p.g.C;
    S* aa = kk + p.g.C;
    const S* wp = w ? w->data_ptr<S>() : nullptr;
    const S* m = mean.data_ptr<S>();
    const S* v = var.data_ptr<S>();
    for (int64_t c = 0; c < p.g.C; ++c) {
      const BwdCoeffs<S> k = bwd_coeffs<S>(m[c], v[c], wp, c, sum_dy ? sum_dy[c] : 0.0,
                                           sum_dy ? sum_dy_xmu[c] : 0.0, count, training, eps);
      mdy[c] = k.mean_dy;
      kk[c] = k.k;
      aa[c] = k.a;
    }
  });
  return coeffs;
}

// The two backward passes; sums (double[C], for grad_weight/bias) are filled when given.
at::Tensor backward_core(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const OptTensor& w,
                         const at::Tensor& mean, const at::Tensor& var, bool training, double eps, double count,
                         double* sum_dy, double* sum_dy_xmu, bool want_dx, bool want_dres, at::Tensor& dres) {
  at::Tensor dx = want_dx ? fresh_output(p) : at::Tensor();
  if (want_dres) dres = fresh_output(p);
  BwdArgs a = bwd_args(p, dy, out, mean);
  a.var = var.data_ptr();
  a.weight = ptr_or_null(w);
  a.training = training;
  a.eps = eps;
  a.count = count;
  a.dx = want_dx ? dx.data_ptr() : nullptr;
  a.dres = want_dres ? dres.data_ptr() : nullptr;
  if (p.x.numel() == 0) {
    if (sum_dy)
      for (int64_t c = 0; c < p.g.C; ++c) sum_dy[c] = sum_dy_xmu[c] = 0.0;
    return dx;
  }
  std::vector<double> sd, sx;
  if (!sum_dy && training) {
    sd.resize(p.g.C);
    sx.resize(p.g.C);
    sum_dy = sd.data();
    sum_dy_xmu = sx.data();
  }
  if (!p.g.rows) {
    a.sum_dy = sum_dy;
    a.sum_dy_xmu = sum_dy_xmu;
    (use_avx2() ? avx2::bwd_fused : scalar::bwd_fused)(a);
    return dx;
  }
  if (sum_dy) {
    a.sum_dy = sum_dy;
    a.sum_dy_xmu = sum_dy_xmu;
    (use_avx2() ? avx2::bwd_reduce : scalar::bwd_reduce)(a);
  }
  if (want_dx || want_dres) {
    const at::Tensor coeffs = bwd_coeff_table(p, mean, var, w, sum_dy, sum_dy_xmu, count, training, eps);
    a.mean_dy = coeffs[0].data_ptr();
    a.k = coeffs[1].data_ptr();
    a.a = coeffs[2].data_ptr();
    (use_avx2() ? avx2::bwd_elemt : scalar::bwd_elemt)(a);
  }
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const OptTensor& weight, const at::Tensor& mean,
    const at::Tensor& var, const OptTensor& output, bool relu, bool training, double eps, std::array<bool, 4> mask) {
  const char* op = "fusedopt::batch_norm_backward";
  const Prepared p = prepare_input(input, op);
  const auto [dy, m, v, out, w] = grad_args(p, grad_out, weight, mean, var, output, relu, eps, op);
  const bool want_sums = mask[1] || mask[2];
  at::Tensor sums = at::empty({2, p.g.C}, m.options().dtype(c10::kDouble));
  double* sum_dy = want_sums ? sums.data_ptr<double>() : nullptr;
  at::Tensor dres;
  at::Tensor dx = backward_core(p, dy, relu ? &out : nullptr, w, m, v, training, eps,
                                static_cast<double>(p.g.count()), sum_dy, sum_dy ? sum_dy + p.g.C : nullptr, mask[0],
                                mask[3], dres);
  const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : p.acc;
  at::Tensor gw, gb;
  if (mask[1]) {
    gw = at::empty({p.g.C}, m.options().dtype(c10::kDouble));
    double* g = gw.data_ptr<double>();
    const at::Tensor vd = v.to(c10::kDouble).contiguous();
    const double* vv = vd.data_ptr<double>();
    for (int64_t c = 0; c < p.g.C; ++c) g[c] = grad_weight(sum_dy[p.g.C + c], vv[c], eps);
    gw = gw.to(param_dtype);
  } else {
    gw = not_requested(m);
  }
  gb = mask[2] ? sums[0].to(param_dtype, /*non_blocking=*/false, /*copy=*/true) : not_requested(m);
  if (!mask[0]) dx = not_requested(p.x);
  if (!mask[3]) dres = not_requested(p.x);
  return {dx, gw, gb, dres};
}

// ---- sync batch norm building blocks: local statistics, local backward sums, and the
// element pass from (globally reduced) sums.

std::tuple<at::Tensor, at::Tensor> batch_norm_stats(const at::Tensor& input) {
  const char* op = "fusedopt::batch_norm_stats";
  const Prepared p = prepare_input(input, op);
  at::Tensor mean = channel_empty(p, p.acc), var = channel_empty(p, p.acc);
  if (trivial_stats(p, mean, var)) return {mean, var};
  Stats s(p.g.C);
  local_stats(p, s);
  write_stats(p, s, mean, var);
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_backward_reduce(const at::Tensor& grad_out, const at::Tensor& input,
                                                              const at::Tensor& mean, const OptTensor& output) {
  const char* op = "fusedopt::batch_norm_backward_reduce";
  const Prepared p = prepare_input(input, op);
  const at::Tensor dy = like_input(grad_out, p, op, "grad_out");
  const at::Tensor m = channel_param(mean, p, op, "mean");
  const at::Tensor out = output_like(output, p, op);
  // Two separate tensors: outputs of an op must not alias each other.
  at::Tensor sdy = at::zeros({p.g.C}, m.options().dtype(c10::kDouble));
  at::Tensor sdx = at::zeros({p.g.C}, m.options().dtype(c10::kDouble));
  if (p.x.numel() == 0) return {sdy, sdx};
  BwdArgs a = bwd_args(p, dy, &out, m);
  a.sum_dy = sdy.data_ptr<double>();
  a.sum_dy_xmu = sdx.data_ptr<double>();
  (use_avx2() ? avx2::bwd_reduce : scalar::bwd_reduce)(a);
  return {sdy, sdx};
}

at::Tensor batch_norm_backward_elemt(const at::Tensor& grad_out, const at::Tensor& input, const OptTensor& weight,
                                     const at::Tensor& mean, const at::Tensor& var, const OptTensor& output,
                                     const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu, double count,
                                     double eps) {
  const char* op = "fusedopt::batch_norm_backward_elemt";
  const Prepared p = prepare_input(input, op);
  const auto [dy, m, v, ignored, w] = grad_args(p, grad_out, weight, mean, var, std::nullopt, false, eps, op);
  const at::Tensor sd = channel_sum(sum_dy, p, op, "sum_dy"), sx = channel_sum(sum_dy_xmu, p, op, "sum_dy_xmu");
  TORCH_CHECK_VALUE(count > 0, op, ": count must be positive, got ", count);
  const at::Tensor out = output_like(output, p, op);
  at::Tensor dx = fresh_output(p);
  if (p.x.numel() == 0) return dx;
  // Coefficients from the given (global) sums, then the element pass alone.
  const at::Tensor coeffs =
      bwd_coeff_table(p, m, v, w, sd.data_ptr<double>(), sx.data_ptr<double>(), count, true, eps);
  BwdArgs a = bwd_args(p, dy, &out, m);
  a.mean_dy = coeffs[0].data_ptr();
  a.k = coeffs[1].data_ptr();
  a.a = coeffs[2].data_ptr();
  a.dx = dx.data_ptr();
  (use_avx2() ? avx2::bwd_elemt : scalar::bwd_elemt)(a);
  return dx;
}

}  // namespace
}  // namespace batchnorm
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  using namespace fusedopt::batchnorm;
  m.impl("batch_norm_train", &batch_norm_train);
  m.impl("batch_norm_eval", &batch_norm_eval);
  m.impl("batch_norm_update_stats_", &batch_norm_update_stats_);
  m.impl("batch_norm_backward", &batch_norm_backward);
  m.impl("batch_norm_stats", &batch_norm_stats);
  m.impl("batch_norm_backward_reduce", &batch_norm_backward_reduce);
  m.impl("batch_norm_backward_elemt", &batch_norm_backward_elemt);
}
