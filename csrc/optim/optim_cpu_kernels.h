// CPU kernel bodies of the optimizers, compiled once per instruction set by
// optim_cpu_avx2.cpp and optim_cpu_scalar.cpp (no include guard on purpose).
// The memory walk is cpu_loop.h, the math update_math.h; this file joins them.
#include "../common/cpu_loop.h"
#include "../common/dispatch.h"
#include "../common/rounding.h"
#include "optim_kernels.h"

namespace fusedopt {
namespace optim {
namespace FO_CPU_NS {

using fusedopt::FO_CPU_NS::for_each_tensor_span;

template <class Hyper>
void run(const GroupArgs& a, const Hyper& h) {
  using Op = typename OpFor<Hyper>::type;
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using S = decltype(s);
    for_each_tensor_span<T, S>(
        a.tensors, a.store_grad, a.stochastic, [&](int64_t i) { return tensor_key(a.seed, i); },
        [&](int64_t i) {
          const float* step = a.tensors[i].step;
          return Op::template coeffs<S>(h, StepScalars{a.lr, step ? *step : 0.0, a.inv_grad_scale});
        },
        [](auto& p, auto& g, auto& s0, auto& s1, auto& s2, const auto& c) { Op::update(p, g, s0, s1, s2, c); });
  });
}

#define FO_INSTANTIATE(Name) template void run<Name##Hyper>(const GroupArgs&, const Name##Hyper&);
FO_FOR_EACH_OPTIMIZER(FO_INSTANTIATE)
#undef FO_INSTANTIATE

}  // namespace FO_CPU_NS
}  // namespace optim
}  // namespace fusedopt
