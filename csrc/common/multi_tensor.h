#pragma once
// Host-side work planning for the multi-tensor engine. Pure C++ (no torch), so the
// native tests in tests/cpp can check it directly.
#include <algorithm>
#include <cstdint>
#include <vector>

namespace fusedopt {

// One tensor of a multi-tensor op: its param, grad, up to three state buffers
// (nullptr where the options leave that state out), an optional float32 master copy
// of a half-precision param, and its step counter (nullptr for optimizers without one).
struct TensorRefs {
  void* param;
  void* grad;
  void* state[3];
  void* master;
  float* step;
  int64_t numel;
};

// CPU: all tensors of a group laid end to end form one flat index space. Threads
// take equal slices of it, so 10,000 tiny tensors balance like one big one.
class FlatPlan {
 public:
  explicit FlatPlan(const std::vector<int64_t>& numels) : offsets_(numels.size() + 1, 0) {
    for (size_t i = 0; i < numels.size(); ++i) offsets_[i + 1] = offsets_[i] + numels[i];
  }
  int64_t total() const { return offsets_.back(); }
  int64_t num_tensors() const { return static_cast<int64_t>(offsets_.size()) - 1; }

  // Calls fn(tensor, begin, end) for each piece of the flat range [lo, hi), where
  // begin/end are element offsets inside that tensor. Empty tensors are never visited.
  template <class F>
  void for_each_span(int64_t lo, int64_t hi, F&& fn) const {
    if (lo >= hi) return;
    // First tensor whose end lies past lo.
    auto it = std::upper_bound(offsets_.begin(), offsets_.end(), lo);
    int64_t t = static_cast<int64_t>(it - offsets_.begin()) - 1;
    for (; t < num_tensors() && offsets_[t] < hi; ++t) {
      const int64_t b = std::max(lo, offsets_[t]) - offsets_[t];
      const int64_t e = std::min(hi, offsets_[t + 1]) - offsets_[t];
      if (b < e) fn(t, b, e);
    }
  }

 private:
  std::vector<int64_t> offsets_;
};

// CUDA: each tensor is cut into fixed-size chunks, one thread block per chunk.
// A launch carries at most max_tensors tensor slots and max_blocks blocks in its
// kernel arguments; a tensor whose chunks spill over appears again in the next launch.
struct LaunchPlan {
  std::vector<int32_t> tensors;       // slot -> index into the caller's lists
  std::vector<int32_t> block_slot;    // block -> slot
  std::vector<int32_t> block_chunk;   // block -> chunk index inside that tensor
};

inline std::vector<LaunchPlan> plan_launches(const std::vector<int64_t>& numels, int64_t chunk_size,
                                             int max_tensors, int max_blocks) {
  std::vector<LaunchPlan> plans;
  LaunchPlan cur;
  auto flush = [&] {
    if (!cur.block_slot.empty()) plans.push_back(std::move(cur));
    cur = LaunchPlan{};
  };
  for (size_t t = 0; t < numels.size(); ++t) {
    const int64_t chunks = (numels[t] + chunk_size - 1) / chunk_size;
    for (int64_t c = 0; c < chunks; ++c) {
      if (static_cast<int>(cur.block_slot.size()) == max_blocks) flush();
      if (cur.tensors.empty() || cur.tensors.back() != static_cast<int32_t>(t)) {
        if (static_cast<int>(cur.tensors.size()) == max_tensors) flush();
        cur.tensors.push_back(static_cast<int32_t>(t));
      }
      cur.block_slot.push_back(static_cast<int32_t>(cur.tensors.size()) - 1);
      cur.block_chunk.push_back(static_cast<int32_t>(c));
    }
  }
  flush();
  return plans;
}

}  // namespace fusedopt
