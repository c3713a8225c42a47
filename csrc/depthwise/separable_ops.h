#pragma once
// The fused depthwise-separable op (depthwise conv, then a 1x1 pointwise conv with bias),
// shared by the CPU and CUDA backends. It runs image by image: the depthwise output of
// one image lives only in a scratch tile (for (144,56,56) float32, 1.8 MB, mostly in
// L2) that goes straight into the pointwise matmul, so the intermediate tensor is never
// written to memory. Backward recomputes the tile instead of saving it, and the
// pointwise grad of each image goes straight into the depthwise backward the same way.
// The matmuls use ATen's BLAS (the one outside kernel fusedopt calls); per-image grad
// partials are summed in image order, so results do not depend on the thread count.
//
// Backend supplies: for_images(N, f(begin, end)) (threads over images on CPU, a plain
// loop on CUDA), dw_forward(ForwardArgs), dw_backward(BackwardArgs, like) and
// sum_images(part (N, E) -> out (E)).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "depthwise_ops.h"

namespace fusedopt {
namespace depthwise {

inline void check_pointwise(const char* op, const at::Tensor& pw, const std::optional<at::Tensor>& bias,
                            const at::Tensor& input, int64_t mid) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
                   ": the fused path takes float32 or float64, got ", input.scalar_type(),
                   " (use fused=False: depthwise_conv2d, then the pointwise matmul)");
  TORCH_CHECK_VALUE(pw.dim() == 4 && pw.size(1) == mid && pw.size(2) == 1 && pw.size(3) == 1 && pw.size(0) > 0, op,
                    ": pointwise weight must have shape (out, ", mid, ", 1, 1), got ", pw.sizes());
  TORCH_CHECK_TYPE(pw.scalar_type() == input.scalar_type(), op, ": pointwise weight dtype ", pw.scalar_type(),
                   " differs from input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(pw.device() == input.device(), op, ": pointwise weight is on ", pw.device(), " but input on ",
                    input.device());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == pw.size(0), op, ": bias must have shape (", pw.size(0),
                      "), got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
                     " differs from input dtype ", input.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == input.device(), op, ": bias is on ", bias->device(), " but input on ",
                      input.device());
  }
}

// Image n of an (N, O, OH, OW) tensor as a matrix: (P, O) rows of channels in
// channels_last, (O, P) planes in NCHW (P = OH * OW). A view: writes land in t.
inline at::Tensor image_matrix(const at::Tensor& t, int64_t n, bool cl) {
  const at::Tensor img = t.select(0, n);
  const int64_t P = t.size(2) * t.size(3);
  return cl ? img.permute({1, 2, 0}).view({P, t.size(1)}) : img.view({t.size(1), P});
}

template <class Backend>
at::Tensor separable_forward(const at::Tensor& input, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  const char* op = "fusedopt.depthwise_separable_conv2d";
  const Prepared p = prepare(op, input, dw_weight, std::nullopt, stride, padding, dilation);
  const int64_t CM = p.g.C * p.g.M, P = p.g.OH * p.g.OW;
  check_pointwise(op, pw_weight, bias, input, CM);
  const at::Tensor x = input.contiguous(p.fmt), w = dw_weight.contiguous();
  const at::Tensor w2 = pw_weight.reshape({pw_weight.size(0), CM}).contiguous();
  at::Tensor out = at::empty({p.g.N, w2.size(0), p.g.OH, p.g.OW}, input.options().memory_format(p.fmt));
  if (out.numel() == 0) return out;
  Geom g1 = p.g;
  g1.N = 1;
  const int64_t image = p.g.C * p.g.H * p.g.W;
  const at::Tensor b = bias.has_value() ? (p.channels_last ? *bias : bias->unsqueeze(1)) : at::Tensor();
  Backend::for_images(p.g.N, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain matmuls on this thread
    const std::vector<int64_t> shape = p.channels_last ? std::vector<int64_t>{P, CM} : std::vector<int64_t>{CM, P};
    at::Tensor tile = at::empty(shape, x.options());
    for (int64_t n = begin; n < end; ++n) {
      Backend::dw_forward(ForwardArgs{g1, x.scalar_type(), p.channels_last,
                                      static_cast<const char*>(x.const_data_ptr()) + n * image * x.element_size(),
                                      w.const_data_ptr(), nullptr, tile.mutable_data_ptr()});
      at::Tensor o = image_matrix(out, n, p.channels_last);
      const at::Tensor lhs = p.channels_last ? tile : w2, rhs = p.channels_last ? w2.t() : tile;
      if (b.defined()) {
        at::addmm_out(o, b, lhs, rhs);
      } else {
        at::mm_out(o, lhs, rhs);
      }
    }
  });
  return out;
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> separable_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& dw_weight, const at::Tensor& pw_weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 4> mask) {
  const char* op = "fusedopt.depthwise_separable_conv2d_backward";
  const Prepared p = prepare(op, input, dw_weight, std::nullopt, stride, padding, dilation);
  const Geom& g = p.g;
  const int64_t CM = g.C * g.M, P = g.OH * g.OW, K = num_taps(g);
  check_pointwise(op, pw_weight, std::nullopt, input, CM);
  const int64_t O2 = pw_weight.size(0);
  check_grad_out(op, grad_out, input, g, O2);
  const at::Tensor x = input.contiguous(p.fmt), w = dw_weight.contiguous(), go = grad_out.contiguous(p.fmt);
  const at::Tensor w2 = pw_weight.reshape({O2, CM}).contiguous();
  const auto opts = input.options();
  // Outputs not asked for come back empty (shape (0,)), so the schema stays all-Tensor.
  at::Tensor gi = mask[0] ? at::empty(input.sizes(), opts.memory_format(p.fmt)) : at::empty({0}, opts);
  // Per-image partials of the weight and bias grads, summed in image order at the end.
  at::Tensor dw_part = at::zeros({mask[1] ? g.N : 0, CM * K}, opts);
  at::Tensor pw_part = at::zeros({mask[2] ? g.N : 0, O2 * CM}, opts);
  at::Tensor b_part = at::zeros({mask[3] ? g.N : 0, O2}, opts);
  const bool need_mid_grad = mask[0] || mask[1];
  if (g.N > 0 && (need_mid_grad || mask[2] || mask[3])) {
    Geom g1 = g;
    g1.N = 1;
    const int64_t image = g.C * g.H * g.W;
    const at::Tensor ones = at::ones({P}, opts);
    Backend::for_images(g.N, [&](int64_t begin, int64_t end) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain matmuls on this thread
      const std::vector<int64_t> shape = p.channels_last ? std::vector<int64_t>{P, CM} : std::vector<int64_t>{CM, P};
      at::Tensor tile = at::empty(mask[2] ? shape : std::vector<int64_t>{0}, opts);
      at::Tensor mid_grad = at::empty(need_mid_grad ? shape : std::vector<int64_t>{0}, opts);
      for (int64_t n = begin; n < end; ++n) {
        const void* xn = static_cast<const char*>(x.const_data_ptr()) + n * image * x.element_size();
        // (O2, P) either way: a transposed view in channels_last.
        const at::Tensor gy = p.channels_last ? image_matrix(go, n, true).t() : image_matrix(go, n, false);
        if (mask[2]) {
          Backend::dw_forward(ForwardArgs{g1, x.scalar_type(), p.channels_last, xn, w.const_data_ptr(), nullptr,
                                          tile.mutable_data_ptr()});
          at::Tensor dst = pw_part.select(0, n).view({O2, CM});
          at::mm_out(dst, gy, p.channels_last ? tile : tile.t());
        }
        if (mask[3]) {
          at::Tensor dst = b_part.select(0, n);
          at::mv_out(dst, gy, ones);
        }
        if (!need_mid_grad) continue;
        if (p.channels_last) {
          at::mm_out(mid_grad, gy.t(), w2);  // (P, O2) @ (O2, CM)
        } else {
          at::mm_out(mid_grad, w2.t(), gy);  // (CM, O2) @ (O2, P)
        }
        void* gin = mask[0] ? static_cast<char*>(gi.mutable_data_ptr()) + n * image * gi.element_size() : nullptr;
        void* gwn = mask[1] ? dw_part.select(0, n).mutable_data_ptr() : nullptr;
        Backend::dw_backward(BackwardArgs{g1, x.scalar_type(), p.channels_last, mid_grad.const_data_ptr(), xn,
                                          w.const_data_ptr(), gin, gwn, nullptr},
                             x);
      }
    });
  }
  at::Tensor gdw = mask[1] ? at::empty(dw_weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gpw = mask[2] ? at::empty(pw_weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gb = mask[3] ? at::empty({O2}, opts) : at::empty({0}, opts);
  if (mask[1]) Backend::sum_images(dw_part, gdw);
  if (mask[2]) Backend::sum_images(pw_part, gpw);
  if (mask[3]) Backend::sum_images(b_part, gb);
  return {gi, gdw, gpw, gb};
}

}  // namespace depthwise
}  // namespace fusedopt
