#pragma once
// Deterministic sums of per-task partials on the CPU, for the depthwise kernels (both
// instruction-set units) and the fused separable op. Internal linkage, so that each unit
// keeps the copy compiled for its own instruction set.
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace fusedopt {
namespace depthwise {
namespace {

// Sums `parts` arrays of len values (part p at src + p * len) element by element in part
// order, so that the bits do not depend on the thread count, and hands each sum to
// put(e, sum). Each thread reads its range of every part contiguously.
template <class Acc, class Put>
void sum_parts_in_order(const Acc* src, int64_t parts, int64_t len, const Put& put) {
  at::parallel_for(0, len, 256, [&](int64_t begin, int64_t end) {
    std::vector<Acc> s(end - begin, Acc(0));
    for (int64_t p = 0; p < parts; ++p) {
      const Acc* row = src + p * len + begin;
      for (int64_t e = 0; e < end - begin; ++e) s[e] += row[e];
    }
    for (int64_t e = begin; e < end; ++e) put(e, s[e - begin]);
  });
}

}  // namespace
}  // namespace depthwise
}  // namespace fusedopt
