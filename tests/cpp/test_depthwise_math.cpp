// The CUDA grad_weight walks step through output positions with PositionWalk
// (csrc/depthwise/depthwise_math.h) instead of dividing: every step must land where
// the divisions would, for any start, step and geometry.
#include <cstdint>
#include <initializer_list>

#include "check.h"
#include "depthwise/depthwise_math.h"

using fusedopt::depthwise::Geom;

static void check_walk(int64_t N, int64_t OH, int64_t OW, int64_t start, int64_t step) {
  Geom g{};
  g.N = N, g.OH = OH, g.OW = OW;
  const int64_t positions = N * OH * OW;
  auto p = fusedopt::depthwise::position_walk(g, start, step);
  for (int64_t pos = start; pos < positions; pos += step, fusedopt::depthwise::advance(p)) {
    CHECK(p.ow == pos % OW);
    CHECK(p.oh == (pos / OW) % OH);
    CHECK(p.n == pos / (OW * OH));
  }
}

int main() {
  for (int64_t OH = 1; OH <= 9; ++OH)
    for (int64_t OW = 1; OW <= 9; ++OW)
      for (int64_t N : {1, 3})
        for (int64_t step : {1, 2, 7, 8, 9, 16, 63, 64, 81, 100, 256, 1000})
          for (int64_t start : {0, 1, 5, 17})
            check_walk(N, OH, OW, start, step);
  // MobileNet-sized planes with the kernels' steps: 8 lanes (channels_last) and
  // partials x 256 threads (NCHW).
  check_walk(32, 56, 56, 3, 8);
  check_walk(32, 7, 7, 250, 64 * 256);
  check_walk(32, 112, 112, 255, 64 * 256);
  return TEST_MAIN_RETURN();
}
