// Batch norm CPU kernels on the portable scalar path.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../common/simd_scalar.h"
#define FO_CPU_NS scalar
namespace fusedopt {
namespace scalar { using simd_scalar::Lanes; }
}  // namespace fusedopt
#include "batchnorm_cpu_kernels.h"
