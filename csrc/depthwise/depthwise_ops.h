#pragma once
// The depthwise op layer shared by the CPU and CUDA backends: argument checks (all
// before anything is allocated or written), the geometry, the memory layout, and
// output allocation. Layout rule (the Python fakes use the same): channels_last when
// the input is channels_last-contiguous and not plain contiguous, NCHW otherwise;
// outputs and grad_input keep that layout.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <tuple>

#include "depthwise_kernels.h"

namespace fusedopt {
namespace depthwise {

struct Prepared {
  Geom g;
  bool channels_last;
  at::MemoryFormat fmt;
};

inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

inline bool supported_dtype(c10::ScalarType dt) {
  return dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16;
}

inline Prepared prepare(const char* op, const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": expected a 4-D input (N, C, H, W), got ", input.dim(), "-D with shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1, op,
                    ": weight must have shape (C*M, 1, kH, kW) like nn.Conv2d(groups=C), got ", weight.sizes());
  const int64_t C = input.size(1), O = weight.size(0);
  TORCH_CHECK_VALUE(C > 0, op, ": input has no channels");
  TORCH_CHECK_VALUE(O > 0 && O % C == 0, op, ": weight has ", O, " output channels, which is not a multiple of the ",
                    C, " input channels");
  TORCH_CHECK_VALUE(weight.size(2) > 0 && weight.size(3) > 0, op, ": empty kernel ", weight.sizes());
  TORCH_CHECK_TYPE(supported_dtype(input.scalar_type()), op,
                   ": input dtype must be float32, float64, float16 or bfloat16, got ", input.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), op, ": weight dtype ", weight.scalar_type(),
                   " differs from input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == input.device(), op, ": weight is on ", weight.device(), " but input on ",
                    input.device());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == O, op, ": bias must have shape (", O, "), got ",
                      bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
                     " differs from input dtype ", input.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == input.device(), op, ": bias is on ", bias->device(), " but input on ",
                      input.device());
  }
  TORCH_CHECK_VALUE(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op,
                    ": stride must be two positive ints, got ", stride);
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0, op,
                    ": dilation must be two positive ints, got ", dilation);
  TORCH_CHECK_VALUE(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 && padding[3] >= 0,
                    op, ": padding must be four non-negative ints (top, bottom, left, right), got ", padding);
  Geom g{};
  g.N = input.size(0), g.C = C, g.M = O / C, g.H = input.size(2), g.W = input.size(3);
  g.KH = weight.size(2), g.KW = weight.size(3), g.SH = stride[0], g.SW = stride[1], g.DH = dilation[0],
  g.DW = dilation[1];
  g.PT = padding[0], g.PB = padding[1], g.PL = padding[2], g.PR = padding[3];
  g.OH = out_extent(g.H, g.KH, g.SH, g.DH, g.PT, g.PB);
  g.OW = out_extent(g.W, g.KW, g.SW, g.DW, g.PL, g.PR);
  TORCH_CHECK_VALUE(g.OH > 0 && g.OW > 0, op, ": padded input (", g.H + g.PT + g.PB, " x ", g.W + g.PL + g.PR,
                    ") is smaller than the dilated kernel (", g.DH * (g.KH - 1) + 1, " x ", g.DW * (g.KW - 1) + 1,
                    ")");
  const bool cl = is_channels_last(input);
  return {g, cl, cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous};
}

// grad_out of an op whose output has `channels` channels (the depthwise op's: C * M).
inline void check_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& input, const Geom& g,
                           int64_t channels) {
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == g.N && grad_out.size(1) == channels &&
                        grad_out.size(2) == g.OH && grad_out.size(3) == g.OW,
                    op, ": grad_out must have shape (", g.N, ", ", channels, ", ", g.OH, ", ", g.OW, "), got ",
                    grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == input.scalar_type(), op, ": grad_out dtype ", grad_out.scalar_type(),
                   " differs from input dtype ", input.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == input.device(), op, ": grad_out is on ", grad_out.device(),
                    " but input on ", input.device());
}

// Runs the backend's kernels through run_fwd(ForwardArgs) after the checks.
// fresh(t) is called on each newly allocated output before the kernels write it.
template <class RunFwd, class Fresh>
at::Tensor forward_op(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const RunFwd& run_fwd,
                      const Fresh& fresh) {
  const char* op = "fusedopt.depthwise_conv2d";
  const Prepared p = prepare(op, input, weight, bias, stride, padding, dilation);
  const at::Tensor x = input.contiguous(p.fmt), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({p.g.N, p.g.C * p.g.M, p.g.OH, p.g.OW}, input.options().memory_format(p.fmt));
  if (out.numel() == 0) return out;
  fresh(out);
  run_fwd(ForwardArgs{p.g, input.scalar_type(), p.channels_last, x.const_data_ptr(), w.const_data_ptr(),
                      b.defined() ? b.const_data_ptr() : nullptr, out.mutable_data_ptr()});
  return out;
}

template <class RunBwd, class Fresh>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& grad_out, const at::Tensor& input,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                                           std::array<bool, 3> mask, const RunBwd& run_bwd,
                                                           const Fresh& fresh) {
  const char* op = "fusedopt.depthwise_conv2d_backward";
  const Prepared p = prepare(op, input, weight, std::nullopt, stride, padding, dilation);
  check_grad_out(op, grad_out, input, p.g, num_out_channels(p.g));
  const at::Tensor x = input.contiguous(p.fmt), w = weight.contiguous(), go = grad_out.contiguous(p.fmt);
  const auto opts = input.options();
  // Outputs not asked for come back empty (shape (0,)), so the schema stays all-Tensor.
  at::Tensor gi = mask[0] ? at::empty(input.sizes(), opts.memory_format(p.fmt)) : at::empty({0}, opts);
  at::Tensor gw = mask[1] ? at::empty(weight.sizes(), opts) : at::empty({0}, opts);
  at::Tensor gb = mask[2] ? at::empty({p.g.C * p.g.M}, opts) : at::empty({0}, opts);
  if (!mask[0] && !mask[1] && !mask[2]) return {gi, gw, gb};
  if (mask[0]) fresh(gi);
  // An empty batch still runs: the kernels then write zero grad_weight and grad_bias.
  run_bwd(BackwardArgs{p.g, input.scalar_type(), p.channels_last, go.const_data_ptr(), x.const_data_ptr(),
                       w.const_data_ptr(), mask[0] ? gi.mutable_data_ptr() : nullptr,
                       mask[1] ? gw.mutable_data_ptr() : nullptr, mask[2] ? gb.mutable_data_ptr() : nullptr});
  return {gi, gw, gb};
}

}  // namespace depthwise
}  // namespace fusedopt
