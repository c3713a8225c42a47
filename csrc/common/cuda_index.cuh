#pragma once
// 32-bit element indices for the CUDA element kernels where a tensor allows them: a
// 64-bit division per element (the channel or (n, c, h, w) of an index) costs more than
// the element's own arithmetic.
#include <c10/cuda/CUDAException.h>

#include <cstdint>

namespace fusedopt {

// Calls launch(n) with n as uint32_t where it is under 2^31, else as int64_t, and
// checks the launch. The kernel's grid-stride loop must keep index + stride under 2^32
// (grids of at most 2^20 blocks of 256 threads, a few elements each, do).
template <class Launch>
void launch_indexed(int64_t n, Launch&& launch) {
  if (n < (int64_t(1) << 31))
    launch(static_cast<uint32_t>(n));
  else
    launch(n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fusedopt
