// Autograd of the batch norm forward ops, in C++ for host time (csrc/common/autograd.h):
// the training forward took 27 us per call through torch.library.register_autograd
// against 8 us below autograd, on a layer whose whole GPU forward takes 40-90 us in
// torch (benchmarks/results/NVIDIA_H200). Single backward runs the kernel,
// fusedopt::batch_norm_backward; that op's own autograd (double backward) stays in
// Python, fusedopt/nn/_batchnorm_ops.py.
#include <ATen/TensorOperators.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <tuple>

#include "../common/autograd.h"

namespace fusedopt {
namespace batchnorm {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

using TrainSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&,
                                                     const OptTensor&, bool, double, const OptTensor&,
                                                     const OptTensor&, std::optional<double>, const OptTensor&);
using EvalSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                       const OptTensor&, bool, double);
using BackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&,
                                                               const Tensor&, const Tensor&, const OptTensor&, bool,
                                                               bool, double, std::array<bool, 4>);

// Saves what batch_norm_backward needs; `given` records which optional tensors came.
void save(AutogradContext* ctx, const Tensor& input, const OptTensor& weight, const OptTensor& bias,
          const OptTensor& residual, const Tensor& mean, const Tensor& var, const Tensor& out, bool relu, double eps) {
  ctx->saved_data["relu"] = relu;
  ctx->saved_data["eps"] = eps;
  ctx->saved_data["given"] = c10::List<bool>({given(weight), given(bias), given(residual)});
  ctx->save_for_backward({input, weight.value_or(Tensor()), mean, var, relu ? out : Tensor()});
}

// grad_input, grad_weight, grad_bias, grad_residual where need says, from the kernel.
std::array<Tensor, 4> kernel_grads(AutogradContext* ctx, const Tensor& grad_out, bool training,
                                   const std::array<bool, 4>& need) {
  static const auto op = fusedopt_op<BackwardSig>("fusedopt::batch_norm_backward");
  std::array<Tensor, 4> g;
  if (!grad_out.defined() || !(need[0] || need[1] || need[2] || need[3])) return g;
  const auto s = ctx->get_saved_variables();
  std::tie(g[0], g[1], g[2], g[3]) =
      call_backward_op(op, grad_out, s[0], opt_tensor(s[1]), s[2], s[3], opt_tensor(s[4]),
                       ctx->saved_data["relu"].toBool(), training, ctx->saved_data["eps"].toDouble(), need);
  for (int i = 0; i < 4; ++i)
    if (!need[i]) g[i] = Tensor();
  return g;
}

// The gradient that reaches the input through the returned batch mean and (biased)
// variance: only when something differentiates the statistics themselves.
Tensor mean_var_grad(const Tensor& input, const Tensor& mean, const Tensor& g_mean, const Tensor& g_var) {
  const c10::Scalar n(input.sym_numel() / input.sym_size(1));  // symbolic under torch.compile
  std::vector<int64_t> shape(input.dim(), 1);
  shape[1] = -1;
  const Tensor x = input.to(mean.scalar_type());
  Tensor g = at::zeros_like(x);
  if (g_mean.defined()) g = g + g_mean.reshape(shape) / n;
  if (g_var.defined()) g = g + g_var.reshape(shape) * 2.0 * (x - mean.reshape(shape)) / n;
  return g.to(input.scalar_type());
}

struct TrainFunction : public torch::autograd::Function<TrainFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& residual, bool relu, double eps,
                               const OptTensor& running_mean, const OptTensor& running_var,
                               std::optional<double> momentum, const OptTensor& num_batches_tracked) {
    static const auto op = fusedopt_op<TrainSig>("fusedopt::batch_norm_train");
    auto [out, mean, var] = [&] {
      at::AutoDispatchBelowADInplaceOrView below;
      return op.call(input, weight, bias, residual, relu, eps, running_mean, running_var, momentum,
                     num_batches_tracked);
    }();
    // The buffers written in place get a new version, as below ADInplaceOrView.
    for (const OptTensor* t : {&running_mean, &running_var, &num_batches_tracked})
      if (given(*t) && !(*t)->is_inference()) (*t)->unsafeGetTensorImpl()->bump_version();
    ctx->set_materialize_grads(false);
    save(ctx, input, weight, bias, residual, mean, var, out, relu, eps);
    return {out, mean, var};
  }

  // grads: of out, mean, var (undefined where nothing flowed back).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = ctx->saved_data["given"].toBoolList();
    const auto need = needs_input_grad<4>(ctx, {true, g[0], g[1], g[2]});
    auto [gi, gw, gb, gr] = kernel_grads(ctx, grads[0], /*training=*/true, need);
    if (need[0] && (grads[1].defined() || grads[2].defined())) {
      const auto s = ctx->get_saved_variables();
      const Tensor extra = mean_var_grad(s[0], s[2], grads[1], grads[2]);
      gi = gi.defined() ? gi + extra : extra;
    }
    return {gi, gw, gb, gr, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct EvalFunction : public torch::autograd::Function<EvalFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& mean, const Tensor& var,
                        const OptTensor& weight, const OptTensor& bias, const OptTensor& residual, bool relu,
                        double eps) {
    static const auto op = fusedopt_op<EvalSig>("fusedopt::batch_norm_eval");
    at::AutoDispatchBelowADInplaceOrView below;
    Tensor out = op.call(input, mean, var, weight, bias, residual, relu, eps);
    save(ctx, input, weight, bias, residual, mean, var, out, relu, eps);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = ctx->saved_data["given"].toBoolList();
    const auto need = needs_input_grad<6>(ctx, {true, true, true, g[0], g[1], g[2]});
    auto [gi, gw, gb, gr] = kernel_grads(ctx, grads[0], /*training=*/false, {need[0], need[3], need[4], need[5]});
    // The statistics are constants of the eval forward (as in torch: running stats get no grad).
    return {gi, Tensor(), Tensor(), gw, gb, gr, Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> train_autograd(const Tensor& input, const OptTensor& weight, const OptTensor& bias,
                                                  const OptTensor& residual, bool relu, double eps,
                                                  const OptTensor& running_mean, const OptTensor& running_var,
                                                  std::optional<double> momentum,
                                                  const OptTensor& num_batches_tracked) {
  auto r = TrainFunction::apply(input, weight, bias, residual, relu, eps, running_mean, running_var, momentum,
                                num_batches_tracked);
  return {r[0], r[1], r[2]};
}

Tensor eval_autograd(const Tensor& input, const Tensor& mean, const Tensor& var, const OptTensor& weight,
                     const OptTensor& bias, const OptTensor& residual, bool relu, double eps) {
  return EvalFunction::apply(input, mean, var, weight, bias, residual, relu, eps);
}

}  // namespace
}  // namespace batchnorm
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, Autograd, m) {
  m.impl("batch_norm_train", &fusedopt::batchnorm::train_autograd);
  m.impl("batch_norm_eval", &fusedopt::batchnorm::eval_autograd);
}
