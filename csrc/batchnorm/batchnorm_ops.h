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

// Checks of batch_norm_update_stats_, the same on every backend. Returns the batch
// mean and var as contiguous float64 tensors.
inline std::pair<at::Tensor, at::Tensor> check_update_stats(const at::Tensor& running_mean,
                                                            const at::Tensor& running_var, const at::Tensor& mean,
                                                            const at::Tensor& var, std::optional<double> momentum,
                                                            const OptTensor& num_batches_tracked, int64_t count) {
  const char* op = "fusedopt::batch_norm_update_stats_";
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
  if (!momentum.has_value()) {
    TORCH_CHECK_VALUE(num_batches_tracked.has_value() && num_batches_tracked->defined(), op,
                      ": momentum=None (cumulative average) needs num_batches_tracked");
    const at::Tensor& n = *num_batches_tracked;
    TORCH_CHECK_VALUE(n.numel() == 1 && n.scalar_type() == c10::kLong && n.device() == running_mean.device(), op,
                      ": num_batches_tracked must be a one-element int64 tensor on ", running_mean.device(), ", got ",
                      n.scalar_type(), " of shape ", n.sizes(), " on ", n.device());
  }
  return {mean.to(c10::kDouble).contiguous(), var.to(c10::kDouble).contiguous()};
}


}  // namespace batchnorm
}  // namespace fusedopt
