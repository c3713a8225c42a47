#pragma once
// Each optimizer op's schema arguments (registration.cpp), mapped onto the generic
// multi-tensor step: which lists are states (and which may be empty), which scalars
// form the Hyper struct. Written once; optim_cpu.cpp and optim_cuda.cu register these
// with their Backend, whose run(...) does the rest.
//
// Every op ends with the same four arguments: master_params (float32 copies of
// fp16/bf16 params, or empty), stochastic_rounding_seed (bf16 params are rounded
// stochastically when set), grad_scale and found_inf (GradScaler).
#include <ATen/core/Tensor.h>

#include <optional>

#include "../common/tensor_lists.h"
#include "update_math.h"

namespace fusedopt {
namespace optim {

using OptTensor = std::optional<at::Tensor>;
using OptSeed = std::optional<int64_t>;

template <class Backend>
void adam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
           at::TensorList max_exp_avg_sqs, at::TensorList state_steps, const at::Tensor& lr, double beta1, double beta2,
           double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
           at::TensorList master_params, OptSeed seed, const OptTensor& grad_scale, const OptTensor& found_inf) {
  const std::vector<StateList> states = {{"exp_avgs", exp_avgs, true},
                                         {"exp_avg_sqs", exp_avg_sqs, true},
                                         {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad}};
  Backend::run("fusedopt.adam_", params, grads, states, master_params, state_steps, true, lr, seed, grad_scale,
               found_inf, AdamHyper{beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay});
}

template <class Backend>
void sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, const at::Tensor& lr,
          double momentum, double dampening, double weight_decay, bool nesterov, bool maximize, bool is_first_step,
          at::TensorList master_params, OptSeed seed, const OptTensor& grad_scale, const OptTensor& found_inf) {
  const std::vector<StateList> states = {{"momentum_buffers", momentum_buffers, momentum != 0}};
  Backend::run("fusedopt.sgd_", params, grads, states, master_params, {}, false, lr, seed, grad_scale, found_inf,
               SgdHyper{momentum, dampening, weight_decay, nesterov, maximize, is_first_step});
}

template <class Backend>
void rmsprop_(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
              at::TensorList momentum_buffers, at::TensorList grad_avgs, at::TensorList state_steps,
              const at::Tensor& lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
              bool maximize, at::TensorList master_params, OptSeed seed, const OptTensor& grad_scale,
              const OptTensor& found_inf) {
  const std::vector<StateList> states = {{"square_avgs", square_avgs, true},
                                         {"momentum_buffers", momentum_buffers, momentum > 0},
                                         {"grad_avgs", grad_avgs, centered}};
  Backend::run("fusedopt.rmsprop_", params, grads, states, master_params, state_steps, true, lr, seed, grad_scale,
               found_inf, RmspropHyper{alpha, eps, weight_decay, momentum, centered, maximize});
}

template <class Backend>
void adagrad_(at::TensorList params, at::TensorList grads, at::TensorList state_sums, at::TensorList state_steps,
              const at::Tensor& lr, double lr_decay, double weight_decay, double eps, bool maximize,
              at::TensorList master_params, OptSeed seed, const OptTensor& grad_scale, const OptTensor& found_inf) {
  const std::vector<StateList> states = {{"state_sums", state_sums, true}};
  Backend::run("fusedopt.adagrad_", params, grads, states, master_params, state_steps, true, lr, seed, grad_scale,
               found_inf, AdagradHyper{lr_decay, weight_decay, eps, maximize});
}

template <class Backend>
void adadelta_(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, at::TensorList acc_deltas,
               at::TensorList state_steps, const at::Tensor& lr, double rho, double eps, double weight_decay,
               bool maximize, at::TensorList master_params, OptSeed seed, const OptTensor& grad_scale,
               const OptTensor& found_inf) {
  const std::vector<StateList> states = {{"square_avgs", square_avgs, true}, {"acc_deltas", acc_deltas, true}};
  Backend::run("fusedopt.adadelta_", params, grads, states, master_params, state_steps, true, lr, seed, grad_scale,
               found_inf, AdadeltaHyper{rho, eps, weight_decay, maximize});
}

// X(name) for every optimizer op above.
#define FO_FOR_EACH_OPTIM_OP(X) X(adam_) X(sgd_) X(rmsprop_) X(adagrad_) X(adadelta_)

// Registers every optimizer op with one backend: FO_REGISTER_OPTIM_OPS(m, CpuBackend).
#define FO_REGISTER_OPTIM_OP_(name) m_.impl(#name, &::fusedopt::optim::name<Backend_>);
#define FO_REGISTER_OPTIM_OPS(m, Backend) \
  do {                                    \
    auto& m_ = m;                         \
    using Backend_ = Backend;             \
    FO_FOR_EACH_OPTIM_OP(FO_REGISTER_OPTIM_OP_) \
  } while (0)

}  // namespace optim
}  // namespace fusedopt
