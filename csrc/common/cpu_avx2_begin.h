#pragma once
// Opens a translation unit whose own code is compiled for AVX2+FMA+F16C.
//
// Everything the unit needs from torch and the standard library is included here,
// *before* the target switch, so that those inline functions keep the baseline
// instruction set; only code that follows (our kernels and the shared formulas, which
// have internal linkage) gets AVX2. Sets FO_HAVE_AVX2_UNIT to 0 where the compiler or
// architecture cannot build it; the dispatcher then never selects it.
//
// Brings the unit's Lanes<T> into namespace fusedopt::avx2: the AVX2 lanes, or where
// the unit cannot be built, the portable ones under the avx2 name so that the
// dispatcher still links.
#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "multi_tensor.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FO_HAVE_AVX2_UNIT 1
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#else
#define FO_HAVE_AVX2_UNIT 0
#endif

#if FO_HAVE_AVX2_UNIT
#include "simd_avx2.h"
namespace fusedopt {
namespace avx2 { using simd_avx2::Lanes; }
}  // namespace fusedopt
#else
#include "simd_scalar.h"
namespace fusedopt {
namespace avx2 { using simd_scalar::Lanes; }
}  // namespace fusedopt
#endif
