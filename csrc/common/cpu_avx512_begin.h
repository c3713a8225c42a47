#pragma once
// Opens a translation unit whose own code is compiled for AVX-512 (F, VL, BW, DQ) on
// top of AVX2+FMA+F16C, as cpu_avx2_begin.h does for AVX2 (read that first: torch and
// the standard library are included before the target switch).
//
// The unit's Lanes<T> are the 16-lane ones of simd_avx512.h where it defines
// FO_AVX512_WIDE_LANES before including this (batch norm). Otherwise (depthwise, whose
// NCHW and pixel-group kernels stay at 8 channels) they are the AVX2 lanes
// (simd_avx2.h), compiled here under another namespace name: those inline functions
// have external linkage, and a copy built with AVX-512 must never be the one the AVX2
// unit links to; simd_avx512.h is there too. Sets FO_HAVE_AVX2_UNIT (the kernels' test
// for vector lanes) and FO_HAVE_AVX512_UNIT.
//
// GCC 12 reports its own _mm512_undefined_* self-initialisation, inlined into the
// 512-bit intrinsics, as maybe-uninitialized (GCC bug 105593, fixed in GCC 13): off for
// the rest of the unit, which includes this header first.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
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
#define FO_HAVE_AVX512_UNIT 1
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq")
#endif
#include "simd_avx512.h"
#if defined(FO_AVX512_WIDE_LANES)
namespace fusedopt {
namespace avx512 { using simd_avx512::Lanes; }
}  // namespace fusedopt
#else
#define simd_avx2 simd_avx2_in_avx512_unit
#include "simd_avx2.h"
#undef simd_avx2
namespace fusedopt {
namespace avx512 { using simd_avx2_in_avx512_unit::Lanes; }
}  // namespace fusedopt
#endif
#else
#define FO_HAVE_AVX2_UNIT 0
#define FO_HAVE_AVX512_UNIT 0
#include "simd_scalar.h"
namespace fusedopt {
namespace avx512 { using simd_scalar::Lanes; }
}  // namespace fusedopt
#endif
