#pragma once
// The boundary between the op layer (tensors, checks; optim_cpu.cpp) and the CPU
// kernels (raw pointers; optim_cpu_kernels.h), which are compiled once per instruction set.
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

#include "../common/multi_tensor.h"
#include "update_math.h"

namespace fusedopt {
namespace optim {

// A group shares one dtype, so one kernel instantiation serves all of it.
struct GroupArgs {
  c10::ScalarType dtype;
  const std::vector<TensorRefs>& tensors;
  double lr;
  double inv_grad_scale;  // 1 without a GradScaler
  bool store_grad;        // write the unscaled grad back (GradScaler path)
  bool stochastic;        // stochastic rounding of bf16 params (rounding.h)
  uint64_t seed;          // its random stream for this call
};

// run<XHyper>(args, hyper) updates every tensor of the group with optimizer X.
// Instantiated for every optimizer in each variant (FO_FOR_EACH_OPTIMIZER).
namespace avx2 {
template <class Hyper>
void run(const GroupArgs& args, const Hyper& h);
}
namespace scalar {
template <class Hyper>
void run(const GroupArgs& args, const Hyper& h);
}

}  // namespace optim
}  // namespace fusedopt
