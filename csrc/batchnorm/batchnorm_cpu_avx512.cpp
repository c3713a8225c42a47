// Batch norm CPU kernels compiled for AVX-512, 16 floats (8 doubles) per vector: the
// same source as the AVX2 unit (batchnorm_cpu_kernels.h) on the lanes of
// simd_avx512.h. batchnorm_cpu.cpp calls in here only after checking the CPU has
// AVX-512. bf16 gains most: its conversions are most of the work per element, and its
// walks are bound by that work rather than by memory. Against the AVX2 unit on the same
// build, forward+backward interleaved with torch's, 2 threads, ms: bf16 NCHW
// (32,64,56,56) 3.1 -> 2.6, (64,256,14,14) 1.88 -> 1.71, (8,32,112,112) 1.69 -> 1.45;
// bf16 channels_last 4.5 -> 3.8, 2.43 -> 2.09, 2.01 -> 1.78; float32 channels_last
// (32,64,56,56) 8.6 -> 7.7, (64,256,14,14) 3.70 -> 3.52; float32 NCHW and
// channels_last (8,32,112,112) equal. Float and double NCHW inputs run the AVX2 unit
// (kernels() in batchnorm_cpu.cpp says why).
#define FO_AVX512_WIDE_LANES
#include "../common/cpu_avx512_begin.h"
#define FO_CPU_NS avx512
#if FO_HAVE_AVX512_UNIT
namespace fusedopt {
namespace simd_avx512 {
// What the batch norm formulas need from the lanes beyond arithmetic (found by
// argument-dependent lookup).
inline float bn_hsum(VecF a) { return _mm512_reduce_add_ps(a.v); }
inline double bn_hsum(VecD a) { return _mm512_reduce_add_pd(a.v); }
inline VecF bn_relu(VecF a) { return fo_max(a, VecF(0.0f)); }
inline VecD bn_relu(VecD a) { return fo_max(a, VecD(0.0)); }
inline VecF bn_keep_if_pos(VecF out, VecF dy) {
  return VecF(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(out.v, _mm512_setzero_ps(), _CMP_GT_OQ), dy.v));
}
inline VecD bn_keep_if_pos(VecD out, VecD dy) {
  return VecD(_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(out.v, _mm512_setzero_pd(), _CMP_GT_OQ), dy.v));
}
}  // namespace simd_avx512
}  // namespace fusedopt
#endif
#include "batchnorm_cpu_kernels.h"
#include "../common/cpu_avx512_end.h"
