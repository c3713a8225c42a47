// The optimizers' CPU kernels compiled for AVX2+FMA+F16C. optim_cpu.cpp calls in
// here only after checking at run time that the CPU has them.
#include "../common/cpu_avx2_begin.h"
#define FO_CPU_NS avx2
#include "optim_cpu_kernels.h"
#include "../common/cpu_avx2_end.h"
