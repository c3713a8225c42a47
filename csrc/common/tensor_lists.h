#pragma once
// Checks one multi-tensor op call's lists and turns them into raw pointers
// (TensorRefs). Shared by the CPU and CUDA op layers, so both reject bad input with
// the same messages, before anything is written.
#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>
#include <vector>

#include "multi_tensor.h"

namespace fusedopt {

struct StateList {
  const char* name;
  at::TensorList tensors;
  bool required;  // an optional list may be empty: its state is then absent
};

class GroupView {
 public:
  // op: the name used in error messages (e.g. "fusedopt.adam_").
  // masters: float32 master copies of fp16/bf16 params, or empty.
  // grads_mutated: the op writes grads back (GradScaler unscaling).
  GroupView(const char* op, at::TensorList params, at::TensorList grads, const std::vector<StateList>& states,
            at::TensorList masters, at::TensorList steps, bool grads_mutated);

  bool empty() const { return refs_.empty(); }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }
  const std::vector<TensorRefs>& refs() const { return refs_; }

  // Copies staged contiguous temporaries back into tensors whose layouts could not be
  // walked linearly. Call once the kernels have been queued.
  void write_back();

 private:
  c10::ScalarType dtype_ = c10::ScalarType::Float;
  c10::Device device_ = c10::Device(c10::DeviceType::CPU);
  std::vector<TensorRefs> refs_;
  std::vector<at::Tensor> staged_;                               // keeps temporaries alive
  std::vector<std::pair<at::Tensor, at::Tensor>> write_backs_;  // (destination, temporary)
};

// State (float32 for half params, else the param dtype) for a param dtype.
c10::ScalarType state_dtype(c10::ScalarType param_dtype);

// Reads a 1-element tensor on the host (CPU tensors only).
double read_scalar(const at::Tensor& t, const char* op, const char* what);

// Checks an optional 1-element float32 tensor argument (grad_scale, found_inf, lr)
// against the params' device; `allow_cpu` admits a CPU scalar for device params.
void check_scalar_arg(const std::optional<at::Tensor>& t, const char* op, const char* what, c10::Device device,
                      bool allow_cpu);

}  // namespace fusedopt
