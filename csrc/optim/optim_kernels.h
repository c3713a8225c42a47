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
};

#define FO_DECLARE_CPU_KERNELS(ns) \
  namespace ns {                   \
  void adam(const GroupArgs& args, const AdamHyper& h); \
  }
FO_DECLARE_CPU_KERNELS(avx2)
FO_DECLARE_CPU_KERNELS(scalar)
#undef FO_DECLARE_CPU_KERNELS

}  // namespace optim
}  // namespace fusedopt
