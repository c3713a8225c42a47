#pragma once
// AVX-512 lanes: 16 floats or 8 doubles per register, the 512-bit counterpart of
// simd_avx2.h with the same interface and the same rounding (nearest even; a NaN
// stored as bf16 becomes 0xffff). Include only from a unit opened by
// cpu_avx512_begin.h.
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace fusedopt {
namespace simd_avx512 {

struct VecF {
  __m512 v;
  VecF() = default;
  VecF(float x) : v(_mm512_set1_ps(x)) {}  // NOLINT: implicit broadcast, as in the formulas' V(x)
  explicit VecF(__m512 x) : v(x) {}
};
struct VecD {
  __m512d v;
  VecD() = default;
  VecD(double x) : v(_mm512_set1_pd(x)) {}  // NOLINT
  explicit VecD(__m512d x) : v(x) {}
};

inline VecF operator+(VecF a, VecF b) { return VecF(_mm512_add_ps(a.v, b.v)); }
inline VecF operator-(VecF a, VecF b) { return VecF(_mm512_sub_ps(a.v, b.v)); }
inline VecF operator*(VecF a, VecF b) { return VecF(_mm512_mul_ps(a.v, b.v)); }
inline VecF operator/(VecF a, VecF b) { return VecF(_mm512_div_ps(a.v, b.v)); }
inline VecD operator+(VecD a, VecD b) { return VecD(_mm512_add_pd(a.v, b.v)); }
inline VecD operator-(VecD a, VecD b) { return VecD(_mm512_sub_pd(a.v, b.v)); }
inline VecD operator*(VecD a, VecD b) { return VecD(_mm512_mul_pd(a.v, b.v)); }
inline VecD operator/(VecD a, VecD b) { return VecD(_mm512_div_pd(a.v, b.v)); }

inline VecF fo_sqrt(VecF a) { return VecF(_mm512_sqrt_ps(a.v)); }
inline VecD fo_sqrt(VecD a) { return VecD(_mm512_sqrt_pd(a.v)); }
// NaN-propagating maximum (torch.maximum): take a where a > b or a is NaN.
inline VecF fo_max(VecF a, VecF b) {
  const __mmask16 take_a = _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ) | _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
  return VecF(_mm512_mask_blend_ps(take_a, b.v, a.v));
}
inline VecD fo_max(VecD a, VecD b) {
  const __mmask8 take_a = _mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ) | _mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q);
  return VecD(_mm512_mask_blend_pd(take_a, b.v, a.v));
}

template <class T>
struct Lanes;

template <>
struct Lanes<float> {
  using V = VecF;
  static constexpr int N = 16;
  static V load(const float* p) { return V(_mm512_loadu_ps(p)); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x.v); }
  static void load2(const float* p, V& a, V& b) { a = load(p), b = load(p + N); }
  static void store2(float* p, V a, V b) { store(p, a), store(p + N, b); }
  static constexpr int pair_lane(int j) { return j; }
};

template <>
struct Lanes<double> {
  using V = VecD;
  static constexpr int N = 8;
  static V load(const double* p) { return V(_mm512_loadu_pd(p)); }
  static void store(double* p, V x) { _mm512_storeu_pd(p, x.v); }
  static void load2(const double* p, V& a, V& b) { a = load(p), b = load(p + N); }
  static void store2(double* p, V a, V b) { store(p, a), store(p + N, b); }
  static constexpr int pair_lane(int j) { return j; }
};

template <>
struct Lanes<c10::BFloat16> {
  using V = VecF;
  static constexpr int N = 16;
  static V load(const c10::BFloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return V(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
  static void store(c10::BFloat16* p, V x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(round_bits(x)));
  }
  // 32 elements at once, split and packed back within each 128-bit lane as in
  // simd_avx2.h: a holds elements 0-3, 8-11, 16-19, 24-27, b the other four of each 8.
  static void load2(const c10::BFloat16* p, V& a, V& b) {
    const __m512i h = _mm512_loadu_si512(p);
    a = V(_mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), h)));
    b = V(_mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), h)));
  }
  static void store2(c10::BFloat16* p, V a, V b) {
    _mm512_storeu_si512(p, _mm512_packus_epi32(round_bits(a), round_bits(b)));
  }
  // Which of the 32 elements lane j of (a, b) holds (j < 16: a).
  static constexpr int pair_lane(int j) { return (j % 16) / 4 * 8 + j / 16 * 4 + j % 4; }

 private:
  static __m512i round_bits(V x) {
    const __m512i bits = _mm512_castps_si512(x.v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q), _mm512_set1_epi32(0xffff));
  }
};

template <>
struct Lanes<c10::Half> {
  using V = VecF;
  static constexpr int N = 16;
  static V load(const c10::Half* p) {
    return V(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  }
  static void store(c10::Half* p, V x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT));
  }
  static void load2(const c10::Half* p, V& a, V& b) { a = load(p), b = load(p + N); }
  static void store2(c10::Half* p, V a, V b) { store(p, a), store(p + N, b); }
  static constexpr int pair_lane(int j) { return j; }
};

}  // namespace simd_avx512
}  // namespace fusedopt
