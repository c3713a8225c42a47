#pragma once
// Which CPU kernel variant runs: chosen at run time from what the CPU supports, and
// switchable for tests so that both variants are checked on one machine.
namespace fusedopt {

// Avx512 adds kernels of its own for depthwise and batch norm; the optimizers run their
// AVX2 kernels at that level.
enum class CpuSimd { Scalar = 0, Avx2 = 1, Avx512 = 2 };

CpuSimd best_cpu_simd();             // the widest variant this build and CPU can run
CpuSimd cpu_simd();                  // the variant in use
void set_cpu_simd(CpuSimd level);    // clamps to best_cpu_simd()
const char* cpu_simd_name(CpuSimd level);

}  // namespace fusedopt
