// Autograd of the depthwise ops, in C++ for host time (csrc/common/autograd.h): torch's
// GPU depthwise forward on the MobileNet 14x14 and 7x7 layers takes 20-30 us
// (benchmarks/results/NVIDIA_H200), about what torch.library.register_autograd
// (Python) added to each call. depthwise_conv2d_backward has autograd too (double backward, through
// the same kernels); the fused separable backward refuses a second derivative.
#include <ATen/TensorOperators.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/autograd.h"

namespace fusedopt {
namespace depthwise {
namespace {

using at::IntArrayRef;
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

using ConvSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, IntArrayRef, IntArrayRef, IntArrayRef);
using ConvBackwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, IntArrayRef,
                                                           IntArrayRef, IntArrayRef, std::array<bool, 3>);
using SepSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, IntArrayRef, IntArrayRef,
                      IntArrayRef);
using SepBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                  const Tensor&, IntArrayRef, IntArrayRef,
                                                                  IntArrayRef, std::array<bool, 4>);

void save_geometry(AutogradContext* ctx, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  ctx->saved_data["stride"] = stride.vec();
  ctx->saved_data["padding"] = padding.vec();
  ctx->saved_data["dilation"] = dilation.vec();
}

struct Geometry {
  std::vector<int64_t> stride, padding, dilation;
};

Geometry geometry(AutogradContext* ctx) {
  return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
          ctx->saved_data["dilation"].toIntVector()};
}

struct ConvFunction : public torch::autograd::Function<ConvFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
    static const auto op = fusedopt_op<ConvSig>("fusedopt::depthwise_conv2d");
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor out = op.call(input, weight, bias, stride, padding, dilation);
    ctx->saved_data["has_bias"] = given(bias);
    save_geometry(ctx, stride, padding, dilation);
    ctx->save_for_backward({input, weight});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = fusedopt_op<ConvBackwardSig>("fusedopt::depthwise_conv2d_backward");
    const auto need = needs_input_grad<3>(ctx, {true, true, ctx->saved_data["has_bias"].toBool()});
    const auto s = ctx->get_saved_variables();
    const Geometry g = geometry(ctx);
    auto [gi, gw, gb] = call_backward_op(op, grads[0], s[0], s[1], IntArrayRef(g.stride), IntArrayRef(g.padding),
                                         IntArrayRef(g.dilation), need);
    return {need[0] ? gi : Tensor(), need[1] ? gw : Tensor(), need[2] ? gb : Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct SeparableFunction : public torch::autograd::Function<SeparableFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& dw_weight, const Tensor& pw_weight,
                        const OptTensor& bias, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
    static const auto op = fusedopt_op<SepSig>("fusedopt::depthwise_separable_conv2d");
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor out = op.call(input, dw_weight, pw_weight, bias, stride, padding, dilation);
    ctx->saved_data["has_bias"] = given(bias);
    save_geometry(ctx, stride, padding, dilation);
    ctx->save_for_backward({input, dw_weight, pw_weight});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = fusedopt_op<SepBackwardSig>("fusedopt::depthwise_separable_conv2d_backward");
    const auto need = needs_input_grad<4>(ctx, {true, true, true, ctx->saved_data["has_bias"].toBool()});
    const auto s = ctx->get_saved_variables();
    const Geometry g = geometry(ctx);
    auto [gi, gdw, gpw, gb] = call_backward_op(op, grads[0], s[0], s[1], s[2], IntArrayRef(g.stride),
                                               IntArrayRef(g.padding), IntArrayRef(g.dilation), need);
    return {need[0] ? gi : Tensor(),  need[1] ? gdw : Tensor(), need[2] ? gpw : Tensor(), need[3] ? gb : Tensor(),
            Tensor(), Tensor(), Tensor()};
  }
};

// Double backward. The convolution is linear in the input and in the weight, so each
// second-order term is a forward or a backward of another pair of tensors. With gg* the
// grads reaching grad_input, grad_weight, grad_bias:
//   d grad_out = conv(gg_input, weight) + ggb + conv(input, gg_weight)
//   d input    = grad_input of (grad_out, weight = gg_weight)
//   d weight   = grad_weight of (grad_out, input = gg_input)
// The ops are called through autograd, so third order works the same way.
struct ConvBackwardFunction : public torch::autograd::Function<ConvBackwardFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& input, const Tensor& weight,
                               IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                               std::array<bool, 3> mask) {
    static const auto op = fusedopt_op<ConvBackwardSig>("fusedopt::depthwise_conv2d_backward");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [gi, gw, gb] = op.call(grad_out, input, weight, stride, padding, dilation, mask);
    ctx->set_materialize_grads(false);
    ctx->saved_data["mask"] = c10::List<bool>({mask[0], mask[1], mask[2]});
    save_geometry(ctx, stride, padding, dilation);
    ctx->save_for_backward({grad_out, input, weight});
    return {gi, gw, gb};
  }

  static variable_list backward(AutogradContext* ctx, variable_list gg) {
    static const auto conv = fusedopt_op<ConvSig>("fusedopt::depthwise_conv2d");
    static const auto conv_backward = fusedopt_op<ConvBackwardSig>("fusedopt::depthwise_conv2d_backward");
    const auto s = ctx->get_saved_variables();
    const Tensor &go = s[0], &x = s[1], &w = s[2];
    const auto mask = ctx->saved_data["mask"].toBoolList();
    const Geometry g = geometry(ctx);
    const IntArrayRef st(g.stride), pad(g.padding), dil(g.dilation);
    // Grads of outputs that were not asked for (empty placeholders) carry nothing.
    const Tensor ggi = mask[0] ? gg[0] : Tensor(), ggw = mask[1] ? gg[1] : Tensor(), ggb = mask[2] ? gg[2] : Tensor();
    const auto need = needs_input_grad<3>(ctx, {true, true, true});
    Tensor d_go, d_x, d_w;
    if (need[0]) {
      if (ggi.defined())
        d_go = conv.call(ggi, w, opt_tensor(ggb), st, pad, dil);
      else if (ggb.defined())
        d_go = at::zeros_like(go) + ggb.reshape({1, -1, 1, 1});
      if (ggw.defined()) {
        const Tensor t = conv.call(x, ggw, std::nullopt, st, pad, dil);
        d_go = d_go.defined() ? d_go + t : t;
      }
    }
    if (need[1] && ggw.defined()) d_x = std::get<0>(conv_backward.call(go, x, ggw, st, pad, dil, {true, false, false}));
    if (need[2] && ggi.defined()) d_w = std::get<1>(conv_backward.call(go, ggi, w, st, pad, dil, {false, true, false}));
    return {d_go, d_x, d_w, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The fused separable backward: its own second derivative is not written; refuse it
// where it is needed rather than let torch's fallback drop it with a warning.
struct SeparableBackwardFunction : public torch::autograd::Function<SeparableBackwardFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_out, const Tensor& input,
                               const Tensor& dw_weight, const Tensor& pw_weight, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, std::array<bool, 4> mask) {
    static const auto op = fusedopt_op<SepBackwardSig>("fusedopt::depthwise_separable_conv2d_backward");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [gi, gdw, gpw, gb] = op.call(grad_out, input, dw_weight, pw_weight, stride, padding, dilation, mask);
    return {gi, gdw, gpw, gb};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false,
                "fusedopt.depthwise_separable_conv2d: the fused op has no double backward (a gradient of its "
                "gradient); pass fused=False, which runs the depthwise op and a matmul, both twice differentiable");
  }
};

Tensor conv_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias, IntArrayRef stride,
                     IntArrayRef padding, IntArrayRef dilation) {
  return ConvFunction::apply(input, weight, bias, stride, padding, dilation);
}

std::tuple<Tensor, Tensor, Tensor> conv_backward_autograd(const Tensor& grad_out, const Tensor& input,
                                                          const Tensor& weight, IntArrayRef stride, IntArrayRef padding,
                                                          IntArrayRef dilation, std::array<bool, 3> mask) {
  auto r = ConvBackwardFunction::apply(grad_out, input, weight, stride, padding, dilation, mask);
  return {r[0], r[1], r[2]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> separable_backward_autograd(const Tensor& grad_out, const Tensor& input,
                                                                       const Tensor& dw_weight,
                                                                       const Tensor& pw_weight, IntArrayRef stride,
                                                                       IntArrayRef padding, IntArrayRef dilation,
                                                                       std::array<bool, 4> mask) {
  auto r = SeparableBackwardFunction::apply(grad_out, input, dw_weight, pw_weight, stride, padding, dilation, mask);
  return {r[0], r[1], r[2], r[3]};
}

Tensor separable_autograd(const Tensor& input, const Tensor& dw_weight, const Tensor& pw_weight, const OptTensor& bias,
                          IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  return SeparableFunction::apply(input, dw_weight, pw_weight, bias, stride, padding, dilation);
}

}  // namespace
}  // namespace depthwise
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, Autograd, m) {
  m.impl("depthwise_conv2d", &fusedopt::depthwise::conv_autograd);
  m.impl("depthwise_separable_conv2d", &fusedopt::depthwise::separable_autograd);
  m.impl("depthwise_conv2d_backward", &fusedopt::depthwise::conv_backward_autograd);
  m.impl("depthwise_separable_conv2d_backward", &fusedopt::depthwise::separable_backward_autograd);
}
