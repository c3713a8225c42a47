// Batch norm CPU kernels compiled for AVX2+FMA+F16C; batchnorm_cpu.cpp calls in here
// only after checking at run time that the CPU has them.
#include "../common/cpu_avx2_begin.h"
#define FO_CPU_NS avx2
#if FO_HAVE_AVX2_UNIT
namespace fusedopt {
namespace simd_avx2 {
// What the batch norm formulas need from the lanes beyond arithmetic (found by
// argument-dependent lookup).
inline float bn_hsum(VecF a) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
inline double bn_hsum(VecD a) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
inline VecF bn_relu(VecF a) { return fo_max(a, VecF(0.0f)); }
inline VecD bn_relu(VecD a) { return fo_max(a, VecD(0.0)); }
inline VecF bn_keep_if_pos(VecF out, VecF dy) {
  return VecF(_mm256_and_ps(_mm256_cmp_ps(out.v, _mm256_setzero_ps(), _CMP_GT_OQ), dy.v));
}
inline VecD bn_keep_if_pos(VecD out, VecD dy) {
  return VecD(_mm256_and_pd(_mm256_cmp_pd(out.v, _mm256_setzero_pd(), _CMP_GT_OQ), dy.v));
}
}  // namespace simd_avx2
}  // namespace fusedopt
#endif
#include "batchnorm_cpu_kernels.h"
#include "../common/cpu_avx2_end.h"
