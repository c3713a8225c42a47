#include "cpu_features.h"

#include <atomic>

namespace fusedopt {

CpuSimd best_cpu_simd() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const CpuSimd best = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    return avx512 ? CpuSimd::Avx512 : avx2 ? CpuSimd::Avx2 : CpuSimd::Scalar;
  }();
  return best;
#else
  return CpuSimd::Scalar;
#endif
}

static std::atomic<int> g_level{-1};

CpuSimd cpu_simd() {
  const int v = g_level.load(std::memory_order_relaxed);
  return v < 0 ? best_cpu_simd() : static_cast<CpuSimd>(v);
}

void set_cpu_simd(CpuSimd level) {
  if (static_cast<int>(level) > static_cast<int>(best_cpu_simd())) level = best_cpu_simd();
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

const char* cpu_simd_name(CpuSimd level) {
  switch (level) {
    case CpuSimd::Avx512: return "avx512";
    case CpuSimd::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace fusedopt
