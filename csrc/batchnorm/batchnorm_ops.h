#pragma once
// The batch norm op layer shared by the CPU (batchnorm_cpu.cpp) and CUDA
// (batchnorm_cuda.cu) backends: argument checks, done before anything is written, and
// the memory layout the kernels walk.
//
// Layouts: an input whose (n, c) planes are contiguous (NCHW-style) runs the "planes"
// kernels; one whose channels are the innermost dimension (channels_last,
// channels_last_3d, (N, C), or any layout where moving dim 1 last is contiguous) runs
// the "rows" kernels. Any other strides are copied to a contiguous tensor first. The
// output has the (possibly copied) input's strides, so channels_last stays channels_last.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "../common/optional_tensor.h"
#include "batchnorm_kernels.h"

namespace fusedopt {
namespace batchnorm {

using OptTensor = std::optional<at::Tensor>;

inline bool supported_dtype(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kBFloat16 || t == c10::kHalf;
}
// The per-channel math type: double for double inputs, float otherwise.
inline c10::ScalarType math_dtype(c10::ScalarType t) { return t == c10::kDouble ? c10::kDouble : c10::kFloat; }

struct Prepared {
  at::Tensor x;
  Geom g;
  c10::ScalarType acc;
};

inline Prepared prepare_input(const at::Tensor& input, const char* op) {
  TORCH_CHECK_VALUE(input.defined(), op, ": input is undefined");
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": expected an input of shape (N, C, *) with at least 2 dims, got ",
                    input.dim(), "D input of shape ", input.sizes());
  TORCH_CHECK_TYPE(supported_dtype(input.scalar_type()), op,
                   ": input must be float32, float64, float16 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK_VALUE(input.layout() == c10::kStrided, op, ": input must be a dense (strided) tensor");
  Prepared p;
  p.acc = math_dtype(input.scalar_type());
  p.g.N = input.size(0);
  p.g.C = input.size(1);
  p.g.inner = 1;
  for (int64_t d = 2; d < input.dim(); ++d) p.g.inner *= input.size(d);
  at::Tensor x = input;
  if (x.is_contiguous()) {
    p.g.rows = p.g.inner == 1;  // (N, C): the same addresses either way
  } else if (x.movedim(1, -1).is_contiguous()) {
    p.g.rows = true;
  } else {
    x = x.contiguous();  // other strides: one copy, documented in the Python wrappers
    p.g.rows = p.g.inner == 1;
  }
  p.x = x;
  return p;
}

// A tensor of the input's shape, laid out like the (prepared) input so that one linear
// walk serves both.
inline bool same_layout(const at::Tensor& t, const at::Tensor& x) {
  if (t.sizes() != x.sizes()) return false;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (x.size(d) > 1 && t.stride(d) != x.stride(d)) return false;
  return true;
}
inline at::Tensor like_input(const at::Tensor& t, const Prepared& p, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_VALUE(t.sizes() == p.x.sizes(), op, ": ", name, " must have the input's shape ", p.x.sizes(), ", got ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == p.x.scalar_type(), op, ": ", name, " must have the input's dtype ",
                   p.x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == p.x.device(), op, ": ", name, " is on ", t.device(), " but input is on ",
                    p.x.device());
  TORCH_CHECK_VALUE(t.layout() == c10::kStrided, op, ": ", name, " must be a dense (strided) tensor");
  if (same_layout(t, p.x)) return t;
  at::Tensor out = at::empty_like(p.x);
  out.copy_(t);
  return out;
}
inline at::Tensor empty_output(const Prepared& p) { return at::empty_like(p.x); }

// A per-channel tensor (weight, bias, mean, var): 1-D with C elements, of the input's
// dtype or its math dtype; returned contiguous in the math dtype.
inline at::Tensor channel_param(const at::Tensor& t, const Prepared& p, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == p.g.C, op, ": ", name, " should contain ", p.g.C,
                    " elements (one per channel of the input) but has shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == p.acc || t.scalar_type() == p.x.scalar_type(), op, ": ", name,
                   " must be ", p.acc, (p.acc == p.x.scalar_type() ? "" : " or the input's dtype"), " for a ",
                   p.x.scalar_type(), " input, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == p.x.device(), op, ": ", name, " is on ", t.device(), " but input is on ",
                    p.x.device());
  TORCH_CHECK_VALUE(t.layout() == c10::kStrided, op, ": ", name, " must be a dense (strided) tensor");
  return t.to(p.acc).contiguous();
}
inline OptTensor channel_param(const OptTensor& t, const Prepared& p, const char* op, const char* name) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return channel_param(*t, p, op, name);
}
inline const void* ptr_or_null(const OptTensor& t) { return t.has_value() ? t->data_ptr() : nullptr; }

inline at::Tensor channel_empty(const Prepared& p, c10::ScalarType dt) {
  return at::empty({p.g.C}, p.x.options().dtype(dt));
}
// Outputs the caller did not ask for (output_mask false) are empty tensors, so that
// every return is a defined tensor of a shape known in advance.
inline at::Tensor not_requested(const at::Tensor& like) { return at::empty({0}, like.options()); }

inline void check_eps(double eps, const char* op) {
  TORCH_CHECK_VALUE(eps >= 0.0, op, ": eps must be non-negative, got ", eps);
}

inline OptTensor residual_like(const OptTensor& r, const Prepared& p, const char* op) {
  if (!r.has_value() || !r->defined()) return std::nullopt;
  return like_input(*r, p, op, "residual");
}
inline at::Tensor output_like(const OptTensor& out, const Prepared& p, const char* op) {
  return out.has_value() && out->defined() ? like_input(*out, p, op, "output") : at::Tensor();
}

// The checked and converted arguments of each op, the same on every backend. Backends
// call these after prepare_input (the CUDA one under its device guard, since converting
// a per-channel tensor may launch a kernel) and before writing anything.
struct AffineArgs {
  OptTensor w, b, r;  // weight, bias, residual
};
inline AffineArgs affine_args(const Prepared& p, const OptTensor& weight, const OptTensor& bias,
                              const OptTensor& residual, double eps, const char* op) {
  check_eps(eps, op);
  return {channel_param(weight, p, op, "weight"), channel_param(bias, p, op, "bias"), residual_like(residual, p, op)};
}

struct GradArgs {
  at::Tensor dy, m, v, out;  // grad_out, mean, var (math dtype), output (undefined: no relu mask)
  OptTensor w;
};
inline GradArgs grad_args(const Prepared& p, const at::Tensor& grad_out, const OptTensor& weight,
                          const at::Tensor& mean, const at::Tensor& var, const OptTensor& output, bool relu,
                          double eps, const char* op) {
  check_eps(eps, op);
  TORCH_CHECK_VALUE(!relu || (output.has_value() && output->defined()), op,
                    ": relu=True needs the forward output (the relu mask is recomputed from it)");
  return {like_input(grad_out, p, op, "grad_out"), channel_param(mean, p, op, "mean"),
          channel_param(var, p, op, "var"), relu ? output_like(output, p, op) : at::Tensor(),
          channel_param(weight, p, op, "weight")};
}

// A global per-channel sum handed to batch_norm_backward_elemt, as contiguous float64.
inline at::Tensor channel_sum(const at::Tensor& t, const Prepared& p, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == p.g.C, op, ": ", name, " should contain ", p.g.C,
                    " elements, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == p.x.device(), op, ": ", name, " is on ", t.device(), " but input is on ",
                    p.x.device());
  return t.to(c10::kDouble).contiguous();
}

// Statistics of an input without channels or values need no kernel: empty, or NaN as
// torch's. Returns true when it filled them.
inline bool trivial_stats(const Prepared& p, at::Tensor& mean, at::Tensor& var) {
  if (p.g.C == 0) return true;
  if (p.g.count() != 0) return false;
  mean.fill_(NAN);
  var.fill_(NAN);
  return true;
}

// Checks of the running-statistics update (batch_norm_update_stats_, and
// batch_norm_train given running buffers), the same on every backend.
inline void check_update_stats(
    const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean, const at::Tensor& var,
    std::optional<double> momentum, const OptTensor& num_batches_tracked, int64_t count,
    const char* op = "fusedopt::batch_norm_update_stats_") {
  const int64_t C = running_mean.numel();
  auto check = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == C, op, ": ", name, " should contain ", C, " elements, got shape ",
                      t.sizes());
    TORCH_CHECK_TYPE(supported_dtype(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == running_mean.device(), op, ": ", name, " is on ", t.device(),
                      " but running_mean is on ", running_mean.device());
  };
  check(running_mean, "running_mean");
  check(running_var, "running_var");
  check(mean, "mean");
  check(var, "var");
  TORCH_CHECK_VALUE(running_mean.is_contiguous() && running_var.is_contiguous(), op,
                    ": running_mean and running_var must be contiguous 1-D tensors");
  TORCH_CHECK_TYPE(running_mean.scalar_type() == running_var.scalar_type(), op,
                   ": running_mean and running_var must have one dtype");
  TORCH_CHECK_VALUE(count >= 0, op, ": count must be non-negative, got ", count);
  TORCH_CHECK_VALUE(momentum.has_value() || given(num_batches_tracked), op,
                    ": momentum=None (cumulative average) needs num_batches_tracked");
  if (given(num_batches_tracked)) {
    const at::Tensor& n = *num_batches_tracked;
    TORCH_CHECK_VALUE(n.numel() == 1 && n.scalar_type() == c10::kLong && n.device() == running_mean.device(), op,
                      ": num_batches_tracked must be a one-element int64 tensor on ", running_mean.device(), ", got ",
                      n.scalar_type(), " of shape ", n.sizes(), " on ", n.device());
  }
}

// The batch mean and var of batch_norm_update_stats_ as the update kernels read them:
// float32 or float64 statistics of one dtype (what batch_norm_train returns) as they
// are, since a cast each would cost two more launches per training step on CUDA;
// anything else cast to float64. (batch_norm_train passes its own statistics directly.)
inline std::pair<at::Tensor, at::Tensor> update_stats_inputs(const at::Tensor& mean, const at::Tensor& var) {
  const auto dt = mean.scalar_type();
  const bool direct = dt == var.scalar_type() && (dt == c10::kFloat || dt == c10::kDouble);
  const auto read = direct ? dt : c10::kDouble;
  return {mean.to(read).contiguous(), var.to(read).contiguous()};
}

// f(mean, var) with typed pointers to float32 or float64 statistics.
template <class F>
void with_update_stats(const at::Tensor& m, const at::Tensor& v, const F& f) {
  if (m.scalar_type() == c10::kDouble)
    f(m.data_ptr<double>(), v.data_ptr<double>());
  else
    f(m.data_ptr<float>(), v.data_ptr<float>());
}

// The seven ops, written once over a backend B (CpuBackend in batchnorm_cpu.cpp,
// CudaBackend in batchnorm_cuda.cu): checks and outputs here, kernels there. B has
//   Guard(tensor)                        the device guard (nothing on the CPU)
//   output(p)                            a tensor like the prepared input, to be written in full
//   train(p, affine, relu, eps, y, mean, var)        statistics, then the element pass
//   normalise(p, mean, var, w, b, r, relu, eps, y)   the element pass from given statistics
//   stats(p, mean, var)                  statistics alone
//   update_stats(running_mean, running_var, mean64, var64, momentum, num_batches_tracked, count)
//   reduce(p, dy, out, mean, sum_dy, sum_dy_xmu)     per-channel backward sums (double[C])
//   elemt(p, dy, out, w, mean, var, sum_dy, sum_dy_xmu, count, eps, dx)   grad_input from given sums
//   backward(p, dy, out, w, mean, var, training, eps, want_sums, sum_dy, sum_dy_xmu, gw, pg, dx, dres)
//                                        sums (when wanted), grad_weight (gw not null; also
//                                        into pg.w, pg.b as ParamGrads says) and the element
//                                        pass (dx / dres not null) of one backward call
// where out is the forward output for the relu mask, or null.
// grad_weight and grad_bias written by the backend in the math dtype (S), from its
// float64 grad_weight and sum_dy; null: not wanted there.
struct ParamGrads {
  void* w = nullptr;
  void* b = nullptr;
};

template <class B>
struct Ops {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> train(const at::Tensor& input, const OptTensor& weight,
                                                              const OptTensor& bias, const OptTensor& residual,
                                                              bool relu, double eps, const OptTensor& running_mean,
                                                              const OptTensor& running_var,
                                                              std::optional<double> momentum,
                                                              const OptTensor& num_batches_tracked) {
    const char* op = "fusedopt::batch_norm_train";
    const Prepared p = prepare_input(input, op);
    const typename B::Guard guard(p.x);
    const AffineArgs affine = affine_args(p, weight, bias, residual, eps, op);
    at::Tensor y = B::output(p);
    at::Tensor mean = channel_empty(p, p.acc), var = channel_empty(p, p.acc);
    // The running buffers are checked before anything is written; the statistics are
    // this op's own float32/float64 outputs, which the update kernels read as they are.
    const bool update = given(running_mean) || given(running_var);
    if (update) {
      TORCH_CHECK_VALUE(given(running_mean) && given(running_var), op,
                        ": running_mean and running_var must both be given or both be None");
      TORCH_CHECK_VALUE(running_mean->numel() == p.g.C, op, ": running_mean should contain ", p.g.C,
                        " elements (one per channel of the input), not ", running_mean->numel());
      check_update_stats(*running_mean, *running_var, mean, var, momentum, num_batches_tracked, p.g.count(), op);
    }
    if (!trivial_stats(p, mean, var)) B::train(p, affine, relu, eps, y, mean, var);
    if (update) {
      if (given(num_batches_tracked)) num_batches_tracked->add_(1);  // torch counts an empty batch too
      if (p.g.C > 0 && p.g.count() > 0)
        B::update_stats(*running_mean, *running_var, mean, var, momentum, num_batches_tracked, p.g.count());
    }
    return {y, mean, var};
  }

  static at::Tensor eval(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
                         const OptTensor& weight, const OptTensor& bias, const OptTensor& residual, bool relu,
                         double eps) {
    const char* op = "fusedopt::batch_norm_eval";
    const Prepared p = prepare_input(input, op);
    const typename B::Guard guard(p.x);
    const at::Tensor m = channel_param(mean, p, op, "mean");
    const at::Tensor v = channel_param(var, p, op, "var");
    const auto [w, b, r] = affine_args(p, weight, bias, residual, eps, op);
    at::Tensor y = B::output(p);
    if (y.numel() == 0) return y;
    B::normalise(p, m, v, w, b, r, relu, eps, y);
    return y;
  }

  static void update_stats_(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                            const at::Tensor& var, std::optional<double> momentum,
                            const OptTensor& num_batches_tracked, int64_t count) {
    check_update_stats(running_mean, running_var, mean, var, momentum, num_batches_tracked, count);
    const auto [m, v] = update_stats_inputs(mean, var);
    if (running_mean.numel() == 0) return;
    const typename B::Guard guard(running_mean);
    B::update_stats(running_mean, running_var, m, v, momentum, num_batches_tracked, count);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
      const at::Tensor& grad_out, const at::Tensor& input, const OptTensor& weight, const at::Tensor& mean,
      const at::Tensor& var, const OptTensor& output, bool relu, bool training, double eps,
      std::array<bool, 4> mask) {
    const char* op = "fusedopt::batch_norm_backward";
    const Prepared p = prepare_input(input, op);
    const typename B::Guard guard(p.x);
    const auto [dy, m, v, out, w] = grad_args(p, grad_out, weight, mean, var, output, relu, eps, op);
    // grad_weight and grad_bias come back in the parameters' dtype. Where that is the math
    // dtype (float parameters: the usual case) the backend writes them, else they are cast
    // from the float64 scratch rows here; casting in every case cost two launches on the
    // GPU. The kernels write every sum that is returned (want_sums whenever grad_weight or
    // grad_bias is asked for); only an empty batch needs zeros.
    const auto param_dtype = weight.has_value() && weight->defined() ? weight->scalar_type() : p.acc;
    const bool direct = param_dtype == p.acc;
    at::Tensor sums = at::empty({3, p.g.C}, p.x.options().dtype(c10::kDouble));  // sum_dy, sum_dy_xmu, gw
    double* sdy = sums.data_ptr<double>();
    at::Tensor gw = mask[1] && direct ? channel_empty(p, p.acc) : at::Tensor();
    at::Tensor gb = mask[2] && direct ? channel_empty(p, p.acc) : at::Tensor();
    at::Tensor dx = mask[0] ? B::output(p) : at::Tensor();
    at::Tensor dres = mask[3] ? B::output(p) : at::Tensor();
    if (p.g.C > 0 && p.x.numel() > 0) {
      const ParamGrads pg{gw.defined() ? gw.data_ptr() : nullptr, gb.defined() ? gb.data_ptr() : nullptr};
      B::backward(p, dy, relu ? &out : nullptr, w, m, v, training, eps, training || mask[1] || mask[2], sdy,
                  sdy + p.g.C, mask[1] ? sdy + 2 * p.g.C : nullptr, pg, mask[0] ? &dx : nullptr,
                  mask[3] ? &dres : nullptr);
    } else {
      sums.zero_();
      if (gw.defined()) gw.zero_();
      if (gb.defined()) gb.zero_();
    }
    const auto param_grad = [&](bool wanted, const at::Tensor& typed, int64_t row) {
      if (!wanted) return not_requested(m);
      return direct ? typed : sums[row].to(param_dtype);
    };
    return {mask[0] ? dx : not_requested(p.x), param_grad(mask[1], gw, 2), param_grad(mask[2], gb, 0),
            mask[3] ? dres : not_requested(p.x)};
  }

  // SyncBatchNorm's pieces: local statistics, local backward sums, and the element pass
  // from (globally reduced) sums.
  static std::tuple<at::Tensor, at::Tensor> stats(const at::Tensor& input) {
    const char* op = "fusedopt::batch_norm_stats";
    const Prepared p = prepare_input(input, op);
    const typename B::Guard guard(p.x);
    at::Tensor mean = channel_empty(p, p.acc), var = channel_empty(p, p.acc);
    if (trivial_stats(p, mean, var)) return {mean, var};
    B::stats(p, mean, var);
    return {mean, var};
  }

  static std::tuple<at::Tensor, at::Tensor> backward_reduce(const at::Tensor& grad_out, const at::Tensor& input,
                                                            const at::Tensor& mean, const OptTensor& output) {
    const char* op = "fusedopt::batch_norm_backward_reduce";
    const Prepared p = prepare_input(input, op);
    const typename B::Guard guard(p.x);
    const at::Tensor dy = like_input(grad_out, p, op, "grad_out");
    const at::Tensor m = channel_param(mean, p, op, "mean");
    const at::Tensor out = output_like(output, p, op);
    at::Tensor sdy = channel_empty(p, c10::kDouble), sdx = channel_empty(p, c10::kDouble);
    if (p.x.numel() == 0 || p.g.C == 0) return {sdy.zero_(), sdx.zero_()};
    B::reduce(p, dy, out.defined() ? &out : nullptr, m, sdy.data_ptr<double>(), sdx.data_ptr<double>());
    return {sdy, sdx};
  }

  static at::Tensor backward_elemt(const at::Tensor& grad_out, const at::Tensor& input, const OptTensor& weight,
                                   const at::Tensor& mean, const at::Tensor& var, const OptTensor& output,
                                   const at::Tensor& sum_dy, const at::Tensor& sum_dy_xmu, double count, double eps) {
    const char* op = "fusedopt::batch_norm_backward_elemt";
    const Prepared p = prepare_input(input, op);
    const typename B::Guard guard(p.x);
    const auto [dy, m, v, ignored, w] = grad_args(p, grad_out, weight, mean, var, std::nullopt, false, eps, op);
    const at::Tensor sd = channel_sum(sum_dy, p, op, "sum_dy"), sx = channel_sum(sum_dy_xmu, p, op, "sum_dy_xmu");
    TORCH_CHECK_VALUE(count > 0, op, ": count must be positive, got ", count);
    const at::Tensor out = output_like(output, p, op);
    at::Tensor dx = B::output(p);
    if (p.x.numel() == 0 || p.g.C == 0) return dx;
    B::elemt(p, dy, out.defined() ? &out : nullptr, w, m, v, sd.data_ptr<double>(), sx.data_ptr<double>(), count,
             eps, dx);
    return dx;
  }
};

// Registers Ops<B> for one dispatch key: m.impl of every op name.
#define FO_BATCHNORM_IMPLS(m, B)                                          \
  do {                                                                    \
    using O = ::fusedopt::batchnorm::Ops<B>;                              \
    (m).impl("batch_norm_train", &O::train);                              \
    (m).impl("batch_norm_eval", &O::eval);                                \
    (m).impl("batch_norm_update_stats_", &O::update_stats_);              \
    (m).impl("batch_norm_backward", &O::backward);                        \
    (m).impl("batch_norm_stats", &O::stats);                              \
    (m).impl("batch_norm_backward_reduce", &O::backward_reduce);          \
    (m).impl("batch_norm_backward_elemt", &O::backward_elemt);            \
  } while (0)

}  // namespace batchnorm
}  // namespace fusedopt
