#pragma once
// Scalar lanes: the portable path, used where AVX2 is absent (or not x86-64). One
// element per "register", with half types computed in float.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "rounding.h"

namespace fusedopt {
namespace simd_scalar {

template <class T>
struct OpMath { using type = float; };
template <>
struct OpMath<double> { using type = double; };

template <class T>
struct Lanes {
  using V = typename OpMath<T>::type;
  static constexpr int N = 1;
  static V load(const T* p) { return static_cast<V>(*p); }
  static void store(T* p, V x) { *p = static_cast<T>(x); }
  // Two elements, in order (the AVX2 bf16 form permutes lanes; see simd_avx2.h).
  static void load2(const T* p, V& a, V& b) { a = load(p), b = load(p + 1); }
  static void store2(T* p, V a, V b) { store(p, a), store(p + 1, b); }
  static constexpr int pair_lane(int j) { return j; }
  // bfloat16 only (see rounding.h).
  static void store_stochastic(T* p, V x, uint32_t key, int64_t index) {
    *p = c10::BFloat16(bf16_bits_stochastic(x, element_random(key, index)), c10::BFloat16::from_bits());
  }
};

}  // namespace simd_scalar
}  // namespace fusedopt
