// Every fusedopt op schema, in one place, plus the kernels that every op shares:
// version-counter bumps for mutated inputs and a clear error for sparse tensors.
//
// Conventions: ops ending in `_` update their list arguments in place and return
// nothing; each mutated list carries its own alias annotation. Implementations are
// registered per backend next to their kernels (TORCH_LIBRARY_IMPL in *_cpu.cpp and
// *_cuda.cu), the layers' autograd in *_autograd.cpp; fake (meta) implementations live
// in fusedopt/_registrations.py and fusedopt/nn; the Python module is python_module.cpp.
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "common/op_list.h"

TORCH_LIBRARY(fusedopt, m) {
  // Every optimizer op ends with: master_params (float32 copies of fp16/bf16 params,
  // updated in place of them, the params receiving the rounded values; or empty),
  // stochastic_rounding_seed (if set, bf16 params are rounded stochastically from this
  // seed), grad_scale and found_inf (GradScaler: unscale in the kernel; skip the whole
  // update, steps included, where found_inf is set).
  //
  // Adam and AdamW (decoupled_weight_decay=True). grads are written back, unscaled,
  // when grad_scale is given.
  m.def(
      "adam_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
      "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, Tensor lr, float beta1, float beta2, "
      "float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay, "
      "Tensor(z!)[] master_params, int? stochastic_rounding_seed, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // SGD with momentum/dampening/Nesterov. momentum_buffers is empty when momentum == 0;
  // is_first_step starts every buffer as the (decayed) grad, as torch does.
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, Tensor lr, float momentum, "
      "float dampening, float weight_decay, bool nesterov, bool maximize, bool is_first_step, "
      "Tensor(z!)[] master_params, int? stochastic_rounding_seed, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // RMSprop. momentum_buffers is empty when momentum == 0, grad_avgs unless centered.
  m.def(
      "rmsprop_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, Tensor(d!)[] momentum_buffers, "
      "Tensor(e!)[] grad_avgs, Tensor(f!)[] state_steps, Tensor lr, float alpha, float eps, float weight_decay, "
      "float momentum, bool centered, bool maximize, Tensor(z!)[] master_params, int? stochastic_rounding_seed, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "adagrad_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state_sums, Tensor(d!)[] state_steps, "
      "Tensor lr, float lr_decay, float weight_decay, float eps, bool maximize, Tensor(z!)[] master_params, "
      "int? stochastic_rounding_seed, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "adadelta_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, Tensor(d!)[] acc_deltas, "
      "Tensor(e!)[] state_steps, Tensor lr, float rho, float eps, float weight_decay, bool maximize, "
      "Tensor(z!)[] master_params, int? stochastic_rounding_seed, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");

  // ---- Batch norm (csrc/batchnorm) ----
  // Functional ops (autograd: batchnorm_autograd.cpp, and for double backward
  // fusedopt/nn/_batchnorm_ops.py).
  // Per-channel mean/var are float32 (float64 for float64 inputs); var is biased.
  // Training forward: batch statistics, normalise, affine, + residual, relu. With
  // running_mean and running_var, also counts num_batches_tracked (if given) and updates
  // them as batch_norm_update_stats_ does, inside the op (one op call per forward).
  m.def("batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, bool relu, float eps, "
        "Tensor(a!)? running_mean=None, Tensor(b!)? running_var=None, float? momentum=None, "
        "Tensor(c!)? num_batches_tracked=None) -> (Tensor out, Tensor mean, Tensor var)");
  // Forward with given statistics (eval mode: the running ones).
  m.def("batch_norm_eval(Tensor input, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, Tensor? residual, "
        "bool relu, float eps) -> Tensor");
  // running = (1 - momentum) * running + momentum * stat, with the unbiased var (count
  // values). momentum=None: the cumulative average, momentum = 1 / num_batches_tracked,
  // read by the kernel (no host sync, and torch.compile sees no data-dependent float).
  m.def("batch_norm_update_stats_(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
        "float? momentum, Tensor? num_batches_tracked, int count) -> ()");
  // Grads of input, weight, bias, residual (output_mask picks; others are empty). The
  // relu mask is recomputed from output > 0.
  m.def("batch_norm_backward(Tensor grad_out, Tensor input, Tensor? weight, Tensor mean, Tensor var, Tensor? output, "
        "bool relu, bool training, float eps, bool[4] output_mask) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias, Tensor grad_residual)");
  // SyncBatchNorm pieces: local statistics; local sums of dy and dy * (x - mean)
  // (float64; masked by output > 0 when output is given); the element pass from global sums.
  m.def("batch_norm_stats(Tensor input) -> (Tensor mean, Tensor var)");
  m.def("batch_norm_backward_reduce(Tensor grad_out, Tensor input, Tensor mean, Tensor? output) "
        "-> (Tensor sum_dy, Tensor sum_dy_xmu)");
  m.def("batch_norm_backward_elemt(Tensor grad_out, Tensor input, Tensor? weight, Tensor mean, Tensor var, "
        "Tensor? output, Tensor sum_dy, Tensor sum_dy_xmu, float count, float eps) -> Tensor");

  // ---- Depthwise convolution (csrc/depthwise) ----
  // Depthwise conv2d, weight (C*M, 1, kH, kW) as nn.Conv2d(groups=C). padding is
  // (top, bottom, left, right). Output keeps the input's layout (NCHW or channels_last).
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
      "int[2] dilation) -> Tensor");
  // Grads not asked for in output_mask come back as empty (0,) tensors.
  m.def(
      "depthwise_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, int[2] stride, int[4] padding, "
      "int[2] dilation, bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // Depthwise conv (no bias), then the 1x1 pointwise conv pointwise_weight (out, C*M, 1, 1)
  // with bias, image by image without writing the intermediate tensor (float32/64).
  m.def(
      "depthwise_separable_conv2d(Tensor input, Tensor depthwise_weight, Tensor pointwise_weight, Tensor? bias, "
      "int[2] stride, int[4] padding, int[2] dilation) -> Tensor");
  m.def(
      "depthwise_separable_conv2d_backward(Tensor grad_out, Tensor input, Tensor depthwise_weight, "
      "Tensor pointwise_weight, int[2] stride, int[4] padding, int[2] dilation, bool[4] output_mask) -> "
      "(Tensor grad_input, Tensor grad_depthwise_weight, Tensor grad_pointwise_weight, Tensor grad_bias)");

}

namespace {
// Sparse tensors would otherwise meet the dispatcher's generic "could not run ... with
// arguments from the 'SparseCPU' backend"; name the real problem instead.
void reject_sparse(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, op.schema().name(), ": got a sparse tensor; fusedopt's kernels need dense tensors ",
              "(for sparse gradients use torch.optim.SparseAdam)");
}

// In-place ops must bump the version counters of what they mutate, so that autograd
// notices a param changed under a graph that saved it (torch's own in-place ops do).
void bump_mutated_then_redispatch(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t base = stack->size() - args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* alias = args[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const c10::IValue& v = (*stack)[base + i];
    if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList().vec()) torch::autograd::impl::bump_version(t);
    } else if (v.isTensor()) {
      torch::autograd::impl::bump_version(v.toTensor());
    }
  }
  op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
}
}  // namespace

TORCH_LIBRARY_IMPL(fusedopt, ADInplaceOrView, m) {
  for (const char* name : fusedopt::kAllOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&bump_mutated_then_redispatch>());
}

TORCH_LIBRARY_IMPL(fusedopt, SparseCPU, m) {
  for (const char* name : fusedopt::kAllOps) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&reject_sparse>());
}
TORCH_LIBRARY_IMPL(fusedopt, SparseCUDA, m) {
  for (const char* name : fusedopt::kAllOps) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&reject_sparse>());
}
