// CPU backend of the batch norm ops: the op shells and checks are Ops<CpuBackend>
// (batchnorm_ops.h); this file computes per-channel coefficients and calls the kernel
// variant (AVX-512, AVX2 or scalar) this CPU supports.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../common/cpu_features.h"
#include "../common/cpu_memory.h"
#include "../common/dispatch.h"
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

// The kernel variant for this CPU (or the one tests chose with _set_cpu_simd).
struct Kernels {
  void (*stats)(c10::ScalarType, const Geom&, const void*, const StatsOut&);
  void (*apply)(const FwdArgs&);
  void (*bwd_reduce)(const BwdArgs&);
  void (*bwd_elemt)(const BwdArgs&);
};
#define FO_BN_KERNELS(ns) \
  Kernels { ns::stats, ns::apply, ns::bwd_reduce, ns::bwd_elemt }
// float and double NCHW inputs take the AVX2 unit on an AVX-512 CPU too. The module's
// forward + backward on the thirteenth session's Zen 4, float32 (32,64,56,56), against
// torch's in alternating processes: 1.64-1.88x with the AVX-512 unit, 1.95-2.05x with
// the AVX2 one (five pairs; its 512-bit element passes were the slower part); the other
// two benchmark shapes level. The earlier machine had measured the units equal there.
// bf16 and channels_last keep AVX-512, which wins or draws for them.
const Kernels& kernels(const Prepared& p) {
  static const Kernels k512 = FO_BN_KERNELS(avx512), k2 = FO_BN_KERNELS(avx2), k1 = FO_BN_KERNELS(scalar);
  const c10::ScalarType dt = p.x.scalar_type();
  switch (cpu_simd()) {
    case CpuSimd::Avx512:
      return !p.g.rows && (dt == c10::kFloat || dt == c10::kDouble) ? k2 : k512;
    case CpuSimd::Avx2: return k2;
    default: return k1;
  }
}
#undef FO_BN_KERNELS

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
  kernels(p).stats(p.x.scalar_type(), p.g, p.x.data_ptr(), s.out());
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

// Per-channel coefficient rows in the math dtype S (float, or double for double
// inputs), held in plain memory: an ATen tensor and its row views cost more host time
// than the whole kernel on small inputs.
struct CoeffRows {
  std::vector<double> storage;  // room for rows of either S
  CoeffRows(int64_t rows, int64_t C) : storage(rows * C) {}
  template <class S>
  S* row(int64_t r, int64_t C) {
    return reinterpret_cast<S*>(storage.data()) + r * C;
  }
};

// The element pass (a's dx and dres): its coefficients (rows mean_dy, k, a) from the
// per-channel sums (nullptr: none, eval mode), then the kernel.
void elemt_pass(BwdArgs& a, const Prepared& p, const at::Tensor& mean, const at::Tensor& var, const OptTensor& w,
                const double* sum_dy, const double* sum_dy_xmu, double count, bool training, double eps) {
  const int64_t C = p.g.C;
  CoeffRows rows(3, C);
  dispatch_math(p.acc, [&](auto z) {
    using S = decltype(z);
    S* mdy = rows.row<S>(0, C);
    S* kk = rows.row<S>(1, C);
    S* aa = rows.row<S>(2, C);
    const S* wp = w ? w->data_ptr<S>() : nullptr;
    const S* m = mean.data_ptr<S>();
    const S* v = var.data_ptr<S>();
    for (int64_t c = 0; c < C; ++c) {
      const BwdCoeffs<S> k = bwd_coeffs<S>(m[c], v[c], wp, c, sum_dy ? sum_dy[c] : 0.0,
                                           sum_dy ? sum_dy_xmu[c] : 0.0, count, training, eps);
      mdy[c] = k.mean_dy;
      kk[c] = k.k;
      aa[c] = k.a;
    }
    a.mean_dy = mdy;
    a.k = kk;
    a.a = aa;
  });
  kernels(p).bwd_elemt(a);
}

struct CpuBackend {
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };

  static at::Tensor output(const Prepared& p) { return fresh_output(p); }

  static void train(const Prepared& p, const AffineArgs& affine, bool relu, double eps, at::Tensor& y,
                    at::Tensor& mean, at::Tensor& var) {
    stats(p, mean, var);
    normalise(p, mean, var, affine.w, affine.b, affine.r, relu, eps, y);
  }

  // y = finish((x - mean) * scale + bias) with scale/bias from the statistics and affine.
  static void normalise(const Prepared& p, const at::Tensor& mean, const at::Tensor& var, const OptTensor& w,
                        const OptTensor& b, const OptTensor& residual, bool relu, double eps, at::Tensor& y) {
    CoeffRows rows(2, p.g.C);
    dispatch_math(p.acc, [&](auto z) {
      using S = decltype(z);
      const S* wp = w ? w->data_ptr<S>() : nullptr;
      const S* bp = b ? b->data_ptr<S>() : nullptr;
      const S* m = mean.data_ptr<S>();
      const S* v = var.data_ptr<S>();
      S* scale = rows.row<S>(0, p.g.C);
      S* bias = rows.row<S>(1, p.g.C);
      for (int64_t c = 0; c < p.g.C; ++c) {
        const FwdCoeffs<S> k = fwd_coeffs<S>(m[c], v[c], wp, bp, c, eps);
        scale[c] = k.scale;
        bias[c] = k.bias;
      }
      FwdArgs a;
      a.dtype = p.x.scalar_type();
      a.g = p.g;
      a.x = p.x.data_ptr();
      a.y = y.data_ptr();
      a.residual = ptr_or_null(residual);
      a.relu = relu;
      a.mean = m;
      a.scale = scale;
      a.bias = bias;
      kernels(p).apply(a);
    });
  }

  static void stats(const Prepared& p, at::Tensor& mean, at::Tensor& var) {
    Stats s(p.g.C);
    local_stats(p, s);
    write_stats(p, s, mean, var);
  }

  static void update_stats(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& m,
                           const at::Tensor& v, std::optional<double> momentum, const OptTensor& num_batches_tracked,
                           int64_t count) {
    const int64_t C = running_mean.numel();
    const double factor = update_factor(momentum.has_value(), momentum.value_or(0.0),
                                        momentum ? nullptr : num_batches_tracked->data_ptr<int64_t>());
    // m, v: float32 or float64 (see update_stats_inputs), read in double.
    auto update = [&](const at::Tensor& t, const auto* stat_of, bool is_var) {
      AT_DISPATCH_FLOATING_TYPES_AND2(c10::kHalf, c10::kBFloat16, t.scalar_type(), "bn_update_stats", [&] {
        scalar_t* r = t.data_ptr<scalar_t>();
        for (int64_t c = 0; c < C; ++c) {
          const double s = static_cast<double>(stat_of[c]);
          const double stat = is_var ? unbiased_var(s, count) : s;
          r[c] = static_cast<scalar_t>(running_update(static_cast<double>(r[c]), stat, factor));
        }
      });
    };
    with_update_stats(m, v, [&](const auto* mp, const auto* vp) {
      update(running_mean, mp, false);
      update(running_var, vp, true);
    });
  }

  static void reduce(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const at::Tensor& mean,
                     double* sum_dy, double* sum_dy_xmu) {
    BwdArgs a = bwd_args(p, dy, out, mean);
    a.sum_dy = sum_dy;
    a.sum_dy_xmu = sum_dy_xmu;
    kernels(p).bwd_reduce(a);
  }

  static void elemt(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const OptTensor& w,
                    const at::Tensor& mean, const at::Tensor& var, const double* sum_dy, const double* sum_dy_xmu,
                    double count, double eps, at::Tensor& dx) {
    BwdArgs a = bwd_args(p, dy, out, mean);
    a.dx = dx.data_ptr();
    elemt_pass(a, p, mean, var, w, sum_dy, sum_dy_xmu, count, true, eps);
  }

  static void backward(const Prepared& p, const at::Tensor& dy, const at::Tensor* out, const OptTensor& w,
                       const at::Tensor& mean, const at::Tensor& var, bool training, double eps, bool want_sums,
                       double* sum_dy, double* sum_dy_xmu, double* gw, const ParamGrads& pg, at::Tensor* dx,
                       at::Tensor* dres) {
    const double count = static_cast<double>(p.g.count());
    BwdArgs a = bwd_args(p, dy, out, mean);
    a.dx = dx ? dx->data_ptr() : nullptr;
    a.dres = dres ? dres->data_ptr() : nullptr;
    if (want_sums) {
      a.sum_dy = sum_dy;
      a.sum_dy_xmu = sum_dy_xmu;
      kernels(p).bwd_reduce(a);
    }
    if (dx || dres) elemt_pass(a, p, mean, var, w, want_sums ? sum_dy : nullptr, sum_dy_xmu, count, training, eps);
    if (gw) {
      dispatch_math(p.acc, [&](auto z) {
        const auto* v = var.data_ptr<decltype(z)>();
        for (int64_t c = 0; c < p.g.C; ++c) gw[c] = grad_weight(sum_dy_xmu[c], static_cast<double>(v[c]), eps);
      });
    }
    dispatch_dtype(p.x.scalar_type(), [&](auto, auto s) {
      using S = decltype(s);
      for (int64_t c = 0; c < p.g.C; ++c) {
        if (pg.w) static_cast<S*>(pg.w)[c] = static_cast<S>(gw[c]);
        if (pg.b) static_cast<S*>(pg.b)[c] = static_cast<S>(sum_dy[c]);
      }
    });
  }
};

}  // namespace
}  // namespace batchnorm
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { FO_BATCHNORM_IMPLS(m, fusedopt::batchnorm::CpuBackend); }
