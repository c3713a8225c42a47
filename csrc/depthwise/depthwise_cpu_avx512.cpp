// The depthwise CPU kernels compiled for AVX-512: the same source as the AVX2 unit,
// with 16 channels per vector in the channels_last kernels (FO_CL_LANES), where a
// 3x3 kernel's weights for 16 channels fit in registers. depthwise_cpu.cpp calls in
// here only after checking the CPU has AVX-512. Against the AVX2 unit, float32, 2
// threads, 3x3 pad 1, channels_last forward+backward in the benchmark: (32,960,7,7)
// 1.66 -> 1.30 ms, (32,384,14,14) 2.56 -> 2.02-2.15 ms, (32,144,56,56) equal; bf16
// (32,144,56,56) 13.4 -> 11.5 ms. The pixel-group kernels keep 8 channels per vector
// (16 made stride 2 grad_input 4.1 -> 4.4 ms), and so do the NCHW channel blocks; the
// NCHW rows path walks 16 columns per vector here.
#include <atomic>

#include "../common/cpu_avx512_begin.h"
#define FO_CPU_NS avx512
#define FO_CL_LANES 16
#include "depthwise_cpu_kernels.h"
#include "../common/cpu_avx512_end.h"
