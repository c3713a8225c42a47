#pragma once
// Stochastic rounding of float32 to bfloat16, shared by the scalar CPU path and the
// CUDA kernels (simd_avx2.h vectorizes the same steps).
//
// Adding uniform random bits below the 16 kept bits, then truncating, rounds up with
// probability equal to the discarded fraction: the expected bf16 value equals the
// float32 value, so many small updates accumulate instead of being rounded away.
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace fusedopt {
namespace {

// A 32-bit integer hash with good avalanche (the "lowbias32" constants).
FO_HD uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The random bits for element `index` of a tensor whose stream key is `key`.
FO_HD uint32_t element_random(uint32_t key, int64_t index) {
  return hash32(static_cast<uint32_t>(index) * 0x9e3779b1u + key);
}

// The per-tensor stream key from the call's seed and the tensor's position in it.
FO_HD uint32_t tensor_key(uint64_t seed, int64_t tensor) {
  return hash32(static_cast<uint32_t>(seed) ^ hash32(static_cast<uint32_t>(seed >> 32) + static_cast<uint32_t>(tensor)));
}

// bf16 bits of x rounded stochastically with the low 16 bits of `random`. NaN and
// infinity pass through unchanged (truncation keeps them).
FO_HD uint16_t bf16_bits_stochastic(float x, uint32_t random) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(x);
#else
  std::memcpy(&u, &x, sizeof(u));
#endif
  if ((u & 0x7f800000u) != 0x7f800000u) u += random & 0xffffu;
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace
}  // namespace fusedopt
