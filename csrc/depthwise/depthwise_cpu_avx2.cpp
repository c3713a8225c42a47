// The depthwise CPU kernels compiled for AVX2+FMA+F16C (plain loops that GCC
// vectorises); depthwise_cpu.cpp calls in here only after checking the CPU has them.
#include <atomic>

#include "../common/cpu_avx2_begin.h"
#define FO_CPU_NS avx2
#include "depthwise_cpu_kernels.h"
#include "../common/cpu_avx2_end.h"
