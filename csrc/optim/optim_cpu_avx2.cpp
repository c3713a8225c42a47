// The optimizers' CPU kernels compiled for AVX2+FMA+F16C. optim_cpu.cpp calls in
// here only after checking at run time that the CPU has them.
#include "../common/cpu_avx2_begin.h"
#define FO_CPU_NS avx2
#if FO_HAVE_AVX2_UNIT
#include "../common/simd_avx2.h"
namespace fusedopt {
namespace avx2 { using simd_avx2::Lanes; }
}  // namespace fusedopt
#else
// No AVX2 on this target: fill the namespace with the portable path so that the
// dispatcher links; best_cpu_simd() never selects it here.
#include "../common/simd_scalar.h"
namespace fusedopt {
namespace avx2 { using simd_scalar::Lanes; }
}  // namespace fusedopt
#endif
#include "optim_cpu_kernels.h"
#include "../common/cpu_avx2_end.h"
