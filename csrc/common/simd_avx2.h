#pragma once
// AVX2 lanes for the CPU kernels: 8 floats or 4 doubles per register, with loads and
// stores that convert bf16/fp16 storage to float math and back (round to nearest even).
//
// Include only from a translation unit opened by cpu_avx2_begin.h: every function here
// is compiled for AVX2+FMA+F16C, and the dispatcher calls into that unit only on CPUs
// that have them.
#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstdint>
#include <cstring>

namespace fusedopt {
namespace simd_avx2 {

struct VecF {
  __m256 v;
  VecF() = default;
  VecF(float x) : v(_mm256_set1_ps(x)) {}  // NOLINT: implicit broadcast, as in the formulas' V(x)
  explicit VecF(__m256 x) : v(x) {}
};
struct VecD {
  __m256d v;
  VecD() = default;
  VecD(double x) : v(_mm256_set1_pd(x)) {}  // NOLINT
  explicit VecD(__m256d x) : v(x) {}
};

inline VecF operator+(VecF a, VecF b) { return VecF(_mm256_add_ps(a.v, b.v)); }
inline VecF operator-(VecF a, VecF b) { return VecF(_mm256_sub_ps(a.v, b.v)); }
inline VecF operator*(VecF a, VecF b) { return VecF(_mm256_mul_ps(a.v, b.v)); }
inline VecF operator/(VecF a, VecF b) { return VecF(_mm256_div_ps(a.v, b.v)); }
inline VecD operator+(VecD a, VecD b) { return VecD(_mm256_add_pd(a.v, b.v)); }
inline VecD operator-(VecD a, VecD b) { return VecD(_mm256_sub_pd(a.v, b.v)); }
inline VecD operator*(VecD a, VecD b) { return VecD(_mm256_mul_pd(a.v, b.v)); }
inline VecD operator/(VecD a, VecD b) { return VecD(_mm256_div_pd(a.v, b.v)); }

// Found by argument-dependent lookup from the shared formulas.
inline VecF fo_sqrt(VecF a) { return VecF(_mm256_sqrt_ps(a.v)); }
inline VecD fo_sqrt(VecD a) { return VecD(_mm256_sqrt_pd(a.v)); }
// NaN-propagating maximum (torch.maximum): take a where a > b or a is NaN.
inline VecF fo_max(VecF a, VecF b) {
  const __m256 take_a = _mm256_or_ps(_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ), _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
  return VecF(_mm256_blendv_ps(b.v, a.v, take_a));
}
inline VecD fo_max(VecD a, VecD b) {
  const __m256d take_a = _mm256_or_pd(_mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ), _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q));
  return VecD(_mm256_blendv_pd(b.v, a.v, take_a));
}

// Lanes<T>: how values stored as T are loaded into registers (V) and stored back.
template <class T>
struct Lanes;

template <>
struct Lanes<float> {
  using V = VecF;
  static constexpr int N = 8;
  static V load(const float* p) { return V(_mm256_loadu_ps(p)); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x.v); }
  static void load2(const float* p, V& a, V& b) { a = load(p), b = load(p + N); }
  static void store2(float* p, V a, V b) { store(p, a), store(p + N, b); }
  static constexpr int pair_lane(int j) { return j; }
};

template <>
struct Lanes<double> {
  using V = VecD;
  static constexpr int N = 4;
  static V load(const double* p) { return V(_mm256_loadu_pd(p)); }
  static void store(double* p, V x) { _mm256_storeu_pd(p, x.v); }
  static void load2(const double* p, V& a, V& b) { a = load(p), b = load(p + N); }
  static void store2(double* p, V a, V b) { store(p, a), store(p + N, b); }
  static constexpr int pair_lane(int j) { return j; }
};

template <>
struct Lanes<c10::BFloat16> {
  using V = VecF;
  static constexpr int N = 8;
  static V load(const c10::BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return V(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
  static void store(c10::BFloat16* p, V x) { pack_store(p, round_bits(x)); }
  // 16 elements at once: one 256-bit load split by unpacking, so a holds elements
  // 0-3 and 8-11, b holds 4-7 and 12-15. store2 packs them back in place, in-lane,
  // which saves the cross-lane shuffles of two load/store calls. For elementwise work
  // with the same coefficients in every lane, and for sums.
  static void load2(const c10::BFloat16* p, V& a, V& b) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    a = V(_mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), h)));
    b = V(_mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), h)));
  }
  static void store2(c10::BFloat16* p, V a, V b) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_packus_epi32(round_bits(a), round_bits(b)));
  }
  // Which of the 16 elements lane j of (a, b) holds (j < 8: a).
  static constexpr int pair_lane(int j) { return (j % 8) / 4 * 8 + j / 8 * 4 + j % 4; }
  // Stochastic rounding, lane for lane the same as bf16_bits_stochastic(x,
  // element_random(key, index + lane)) in rounding.h.
  static void store_stochastic(c10::BFloat16* p, V x, uint32_t key, int64_t index) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i h = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(index))), lanes);
    h = _mm256_add_epi32(_mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int>(0x9e3779b1u))),
                         _mm256_set1_epi32(static_cast<int>(key)));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32(0x7feb352d));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int>(0x846ca68bu)));
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
    const __m256i bits = _mm256_castps_si256(x.v);
    const __m256i exp_mask = _mm256_set1_epi32(0x7f800000);
    const __m256i special = _mm256_cmpeq_epi32(_mm256_and_si256(bits, exp_mask), exp_mask);  // inf or NaN
    const __m256i noise = _mm256_andnot_si256(special, _mm256_and_si256(h, _mm256_set1_epi32(0xffff)));
    pack_store(p, _mm256_srli_epi32(_mm256_add_epi32(bits, noise), 16));
  }

 private:
  // The bf16 bits of each lane in its low half, rounded to nearest even. A NaN becomes
  // 0xffff, a NaN as in torch's vectorised conversion (its payload is not kept).
  static __m256i round_bits(V x) {
    const __m256i bits = _mm256_castps_si256(x.v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
    return _mm256_or_si256(r, _mm256_srli_epi32(nan, 16));
  }
  // Stores 8 x u32 (each below 2^16) as 8 x u16, in order.
  static void pack_store(c10::BFloat16* p, __m256i r) {
    const __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(lo, hi));
  }
};

template <>
struct Lanes<c10::Half> {
  using V = VecF;
  static constexpr int N = 8;
  static V load(const c10::Half* p) {
    return V(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void store(c10::Half* p, V x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT));
  }
  static void load2(const c10::Half* p, V& a, V& b) { a = load(p), b = load(p + N); }
  static void store2(c10::Half* p, V a, V b) { store(p, a), store(p + N, b); }
  static constexpr int pair_lane(int j) { return j; }
};

}  // namespace simd_avx2
}  // namespace fusedopt
