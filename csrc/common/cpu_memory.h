#pragma once
// Memory advice for the CPU kernels' large outputs.
#include <ATen/core/Tensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fusedopt {

// Large outputs come fresh from the OS, and faulting them in 4 KiB pages costs more
// than a memory-bound kernel itself (about 14 ms for 58 MB on one core here). Asking
// for transparent huge pages on the untouched, 2 MiB-aligned interior cuts that cost
// several times; it changes no value. (torch does the same under THP_MEM_ALLOC_ENABLE.)
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 4 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advisory: failure is harmless
#else
  (void)t;
#endif
}

}  // namespace fusedopt
