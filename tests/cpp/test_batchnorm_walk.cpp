// The CUDA batch norm reductions step through a channel's planes with PlaneWalk
// (csrc/batchnorm/batchnorm_math.h) instead of dividing: every step must land on the
// offset the divisions give, for any start, step and geometry.
#include <cstdint>
#include <initializer_list>

#include "batchnorm/batchnorm_math.h"
#include "check.h"

static void check_walk(int64_t N, int64_t C, int64_t inner, int64_t c, int64_t start, int64_t step) {
  auto w = fusedopt::batchnorm::plane_walk(C, inner, c, start, step);
  for (int64_t k = start; k < N * inner; k += step, fusedopt::batchnorm::advance(w)) {
    const int64_t n = k / inner, i = k % inner;
    CHECK(w.i == i);
    CHECK(w.off == (n * C + c) * inner + i);
  }
}

int main() {
  // Planes smaller and larger than a step, a step of exactly one plane, planes of one
  // element (inputs of shape (N, C)), first and last channels, starts inside a plane.
  for (int64_t inner : {1, 7, 196, 255, 256, 257, 3136})
    for (int64_t C : {1, 3, 64})
      for (int64_t c : {int64_t(0), C - 1})
        for (int64_t step : {1, 32, 256})
          for (int64_t start : {0, 5, 300}) check_walk(9, C, inner, c, start, step);
  return TEST_MAIN_RETURN();
}
