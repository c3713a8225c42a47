// The chunk planners must cover every element of every tensor exactly once.
#include <random>
#include <vector>

#include "check.h"
#include "common/multi_tensor.h"

using fusedopt::FlatPlan;
using fusedopt::plan_launches;

static std::vector<int64_t> random_sizes(std::mt19937& rng, int n, int64_t max) {
  std::uniform_int_distribution<int64_t> d(0, max);
  std::vector<int64_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

static void check_flat_plan(const std::vector<int64_t>& numels, int pieces) {
  FlatPlan plan(numels);
  std::vector<std::vector<int>> seen(numels.size());
  for (size_t t = 0; t < numels.size(); ++t) seen[t].assign(numels[t], 0);
  const int64_t total = plan.total();
  for (int k = 0; k < pieces; ++k) {
    const int64_t lo = total * k / pieces, hi = total * (k + 1) / pieces;
    plan.for_each_span(lo, hi, [&](int64_t t, int64_t b, int64_t e) {
      CHECK(b < e);
      CHECK(e <= numels[t]);
      for (int64_t i = b; i < e; ++i) seen[t][i]++;
    });
  }
  for (const auto& s : seen)
    for (int c : s) CHECK(c == 1);
}

static void check_launches(const std::vector<int64_t>& numels, int64_t chunk, int max_tensors, int max_blocks) {
  std::vector<std::vector<int>> seen(numels.size());
  for (size_t t = 0; t < numels.size(); ++t) seen[t].assign((numels[t] + chunk - 1) / chunk, 0);
  for (const auto& l : plan_launches(numels, chunk, max_tensors, max_blocks)) {
    CHECK(!l.block_slot.empty());
    CHECK(static_cast<int>(l.tensors.size()) <= max_tensors);
    CHECK(static_cast<int>(l.block_slot.size()) <= max_blocks);
    CHECK(l.block_slot.size() == l.block_chunk.size());
    for (size_t b = 0; b < l.block_slot.size(); ++b) {
      const int slot = l.block_slot[b];
      CHECK(slot >= 0 && slot < static_cast<int>(l.tensors.size()));
      const int t = l.tensors[slot];
      const int c = l.block_chunk[b];
      CHECK(c >= 0 && c < static_cast<int>(seen[t].size()));
      seen[t][c]++;
    }
  }
  for (const auto& s : seen)
    for (int c : s) CHECK(c == 1);
}

int main() {
  std::mt19937 rng(1234);
  check_flat_plan({}, 3);
  check_flat_plan({0, 0, 5, 0}, 4);
  check_flat_plan({1}, 7);
  for (int trial = 0; trial < 50; ++trial) check_flat_plan(random_sizes(rng, 1 + trial, 500), 1 + trial % 9);

  check_launches({}, 16, 4, 8);
  check_launches({0, 100, 0}, 16, 2, 3);
  check_launches({1000}, 7, 1, 5);  // one tensor split over many launches
  for (int trial = 0; trial < 50; ++trial)
    check_launches(random_sizes(rng, 1 + trial, 300), 1 + trial % 40, 1 + trial % 6, 1 + trial % 11);

  // Past 2^31 elements: chunk indices stay exact (the planner never touches memory).
  const int64_t big = (int64_t{1} << 31) + 12345;
  int64_t blocks = 0, last_chunk = -1;
  for (const auto& l : plan_launches({big}, 65536, 32, 320)) {
    blocks += static_cast<int64_t>(l.block_slot.size());
    last_chunk = l.block_chunk.back();
  }
  CHECK(blocks == (big + 65535) / 65536);
  CHECK(last_chunk == (big - 1) / 65536);
  return TEST_MAIN_RETURN();
}
