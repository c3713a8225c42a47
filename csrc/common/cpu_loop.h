#pragma once
// The CPU memory walk shared by the elementwise kernels. It is compiled once per
// instruction set: the including unit defines FO_CPU_NS (the namespace its kernels
// live in) and brings a `Lanes<T>` template into that namespace first.
//
// Needs, before inclusion: <ATen/Parallel.h>, "multi_tensor.h", Lanes.
#include <cstdint>
#include <type_traits>

namespace fusedopt {
namespace FO_CPU_NS {

// Walks n elements of one param, its grad and up to three state buffers (nullptr =
// absent). op(p, g, s0, s1, s2) updates registers in place; p and present states are
// stored back, g only when store_grad. The tail runs through zero-padded buffers so
// that a single, full-width instantiation of op serves every element.
template <class T, class S, class Op>
inline void elementwise(T* p, T* g, S* s0, S* s1, S* s2, int64_t n, bool store_grad, const Op& op) {
  using L = Lanes<T>;
  using LS = Lanes<S>;
  using V = typename L::V;
  static_assert(std::is_same<V, typename LS::V>::value, "state lanes must match param lanes");
  constexpr int N = L::N;
  static_assert(LS::N == N, "state lanes must match param lanes");

  auto block = [&](T* pp, T* gg, S* a, S* b, S* c) {
    V vp = L::load(pp), vg = L::load(gg);
    V va = a ? LS::load(a) : V(0), vb = b ? LS::load(b) : V(0), vc = c ? LS::load(c) : V(0);
    op(vp, vg, va, vb, vc);
    L::store(pp, vp);
    if (store_grad) L::store(gg, vg);
    if (a) LS::store(a, va);
    if (b) LS::store(b, vb);
    if (c) LS::store(c, vc);
  };

  int64_t i = 0;
  for (; i + N <= n; i += N)
    block(p + i, g + i, s0 ? s0 + i : nullptr, s1 ? s1 + i : nullptr, s2 ? s2 + i : nullptr);
  if (i == n) return;

  const int64_t r = n - i;
  T bp[N]{}, bg[N]{};
  S b0[N]{}, b1[N]{}, b2[N]{};
  for (int64_t k = 0; k < r; ++k) {
    bp[k] = p[i + k];
    bg[k] = g[i + k];
    if (s0) b0[k] = s0[i + k];
    if (s1) b1[k] = s1[i + k];
    if (s2) b2[k] = s2[i + k];
  }
  block(bp, bg, s0 ? b0 : nullptr, s1 ? b1 : nullptr, s2 ? b2 : nullptr);
  for (int64_t k = 0; k < r; ++k) {
    p[i + k] = bp[k];
    if (store_grad) g[i + k] = bg[k];
    if (s0) s0[i + k] = b0[k];
    if (s1) s1[i + k] = b1[k];
    if (s2) s2[i + k] = b2[k];
  }
}

// Threads split the group's flat index space evenly (see FlatPlan); each piece of a
// tensor gets that tensor's coefficients from make(tensor_index) and runs update.
template <class T, class S, class Refs, class MakeCoeffs, class Update>
inline void for_each_tensor_span(const std::vector<Refs>& refs, bool store_grad, const MakeCoeffs& make,
                                 const Update& update) {
  std::vector<int64_t> numels(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) numels[i] = refs[i].numel;
  const FlatPlan plan(numels);
  // Enough work per thread to hide the fork; small groups run inline.
  constexpr int64_t kGrain = 1 << 15;
  at::parallel_for(0, plan.total(), kGrain, [&](int64_t lo, int64_t hi) {
    plan.for_each_span(lo, hi, [&](int64_t t, int64_t b, int64_t e) {
      const Refs& r = refs[t];
      const auto c = make(t);
      auto st = [&](int k) { return r.state[k] ? static_cast<S*>(r.state[k]) + b : nullptr; };
      elementwise<T, S>(static_cast<T*>(r.param) + b, static_cast<T*>(r.grad) + b, st(0), st(1), st(2), e - b,
                        store_grad, [&](auto& p, auto& g, auto& s0, auto& s1, auto& s2) { update(p, g, s0, s1, s2, c); });
    });
  });
}

}  // namespace FO_CPU_NS
}  // namespace fusedopt
