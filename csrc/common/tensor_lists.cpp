#include "tensor_lists.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

namespace fusedopt {

c10::ScalarType state_dtype(c10::ScalarType dt) {
  return (dt == c10::ScalarType::Half || dt == c10::ScalarType::BFloat16) ? c10::ScalarType::Float : dt;
}

static bool supported_dtype(c10::ScalarType dt) {
  return dt == c10::ScalarType::Float || dt == c10::ScalarType::Double || dt == c10::ScalarType::Half ||
         dt == c10::ScalarType::BFloat16;
}

GroupView::GroupView(const char* op, at::TensorList params, at::TensorList grads,
                     const std::vector<StateList>& states, at::TensorList masters, at::TensorList steps,
                     bool grads_mutated) {
  const size_t n = params.size();
  TORCH_CHECK_VALUE(grads.size() == n, op, ": got ", n, " params but ", grads.size(), " grads");
  for (const auto& s : states) {
    TORCH_CHECK_VALUE(s.tensors.size() == n || (!s.required && s.tensors.empty()), op, ": got ", n,
                      " params but ", s.tensors.size(), " ", s.name);
  }
  TORCH_CHECK_VALUE(steps.empty() || steps.size() == n, op, ": got ", n, " params but ", steps.size(),
                    " state_steps");
  TORCH_CHECK_VALUE(masters.empty() || masters.size() == n, op, ": got ", n, " params but ", masters.size(),
                    " master_params");
  TORCH_CHECK(states.size() <= 3, op, ": at most three state lists");
  if (n == 0) return;

  dtype_ = params[0].scalar_type();
  device_ = params[0].device();
  TORCH_CHECK_TYPE(supported_dtype(dtype_), op, ": params[0] has dtype ", dtype_,
                   "; supported are float32, float64, float16 and bfloat16");
  const auto sdt = state_dtype(dtype_);
  TORCH_CHECK_TYPE(masters.empty() || sdt != dtype_, op, ": master_params are float32 copies of float16 or ",
                   "bfloat16 params; these params are ", dtype_);
  refs_.reserve(n);

  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK_TYPE(p.scalar_type() == dtype_, op, ": params[", i, "] has dtype ", p.scalar_type(),
                     " but params[0] has ", dtype_, "; one call takes one dtype");
    TORCH_CHECK(p.device() == device_, op, ": params[", i, "] is on ", p.device(), " but params[0] is on ", device_);
    TORCH_CHECK(p.layout() == c10::kStrided, op, ": params[", i, "] is not a dense (strided) tensor");
    TORCH_CHECK(g.layout() == c10::kStrided, op, ": grads[", i, "] is sparse; fused optimizers need dense gradients");
    TORCH_CHECK_TYPE(g.scalar_type() == dtype_, op, ": grads[", i, "] has dtype ", g.scalar_type(),
                     " but its param has ", dtype_);
    TORCH_CHECK(g.device() == device_, op, ": grads[", i, "] is on ", g.device(), " but its param is on ", device_);
    TORCH_CHECK_VALUE(g.sizes() == p.sizes(), op, ": grads[", i, "] has shape ", g.sizes(), " but its param has ",
                      p.sizes());
    TORCH_CHECK(at::has_internal_overlap(p) != at::MemOverlap::Yes, op, ": params[", i,
                "] has overlapping memory (an expanded tensor?) and cannot be updated in place");

    TensorRefs r{};
    r.numel = p.numel();
    bool linear = p.is_non_overlapping_and_dense() && g.strides() == p.strides();
    for (size_t k = 0; k < states.size(); ++k) {
      if (states[k].tensors.empty()) continue;
      const at::Tensor& s = states[k].tensors[i];
      TORCH_CHECK_TYPE(s.scalar_type() == sdt, op, ": ", states[k].name, "[", i, "] has dtype ", s.scalar_type(),
                       "; a ", dtype_, " param keeps its state in ", sdt);
      TORCH_CHECK(s.device() == device_, op, ": ", states[k].name, "[", i, "] is on ", s.device(),
                  " but its param is on ", device_);
      TORCH_CHECK_VALUE(s.sizes() == p.sizes(), op, ": ", states[k].name, "[", i, "] has shape ", s.sizes(),
                        " but its param has ", p.sizes());
      TORCH_CHECK(s.layout() == c10::kStrided, op, ": ", states[k].name, "[", i, "] is not a dense tensor");
      linear = linear && s.strides() == p.strides();
    }
    if (!masters.empty()) {
      const at::Tensor& m = masters[i];
      TORCH_CHECK_TYPE(m.scalar_type() == c10::ScalarType::Float, op, ": master_params[", i, "] has dtype ",
                       m.scalar_type(), "; master copies are float32");
      TORCH_CHECK(m.device() == device_, op, ": master_params[", i, "] is on ", m.device(), " but its param is on ",
                  device_);
      TORCH_CHECK_VALUE(m.sizes() == p.sizes(), op, ": master_params[", i, "] has shape ", m.sizes(),
                        " but its param has ", p.sizes());
      TORCH_CHECK(m.layout() == c10::kStrided, op, ": master_params[", i, "] is not a dense tensor");
      linear = linear && m.strides() == p.strides();
    }
    if (!steps.empty()) {
      const at::Tensor& st = steps[i];
      TORCH_CHECK(st.numel() == 1 && st.scalar_type() == c10::ScalarType::Float, op, ": state_steps[", i,
                  "] must be a 1-element float32 tensor, got ", st.scalar_type(), " with ", st.numel(), " elements");
      TORCH_CHECK(st.device() == device_, op, ": state_steps[", i, "] is on ", st.device(), " but its param is on ",
                  device_, " (fused optimizers keep the step next to the param)");
      r.step = st.data_ptr<float>();
    }

    // Tensors that share one dense layout are walked as flat memory; any other mix
    // is staged through contiguous temporaries and copied back after the update.
    auto pointer = [&](const at::Tensor& t, bool mutated) -> void* {
      if (linear) return t.data_ptr();
      at::Tensor c = t.contiguous();
      if (mutated && !c.is_same(t)) write_backs_.emplace_back(t, c);
      staged_.push_back(c);
      return c.data_ptr();
    };
    r.param = pointer(p, true);
    r.grad = pointer(g, grads_mutated);
    for (size_t k = 0; k < states.size(); ++k)
      r.state[k] = states[k].tensors.empty() ? nullptr : pointer(states[k].tensors[i], true);
    r.master = masters.empty() ? nullptr : pointer(masters[i], true);
    refs_.push_back(r);
  }
}

void GroupView::write_back() {
  for (auto& [dst, tmp] : write_backs_) dst.copy_(tmp);
  write_backs_.clear();
}

double read_scalar(const at::Tensor& t, const char* op, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", what, " must be on the CPU here");
  TORCH_CHECK_VALUE(t.numel() == 1, op, ": ", what, " must have exactly one element, got ", t.numel());
  return t.item<double>();
}

void check_scalar_arg(const std::optional<at::Tensor>& t, const char* op, const char* what, c10::Device device,
                      bool allow_cpu) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->numel() == 1, op, ": ", what, " must have exactly one element, got ", t->numel());
  TORCH_CHECK_TYPE(c10::isFloatingType(t->scalar_type()), op, ": ", what, " must be a floating-point tensor, got ",
                   t->scalar_type());
  TORCH_CHECK(t->device() == device || (allow_cpu && t->device().is_cpu()), op, ": ", what, " is on ",
              t->device(), " but the params are on ", device);
}

}  // namespace fusedopt
