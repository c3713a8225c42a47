// Autograd of the depthwise forward ops, in C++ for host time (csrc/common/autograd.h):
// torch's GPU depthwise forward on the MobileNet 14x14 and 7x7 layers takes 20-30 us
// (benchmarks/results/NVIDIA_H200), less than torch.library.register_autograd (Python)
// cost per call. The backward ops have no autograd of their own: a second derivative
// through them is refused by torch's fallback, as before.
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

Tensor conv_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias, IntArrayRef stride,
                     IntArrayRef padding, IntArrayRef dilation) {
  return ConvFunction::apply(input, weight, bias, stride, padding, dilation);
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
}
