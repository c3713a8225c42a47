// CPU kernel bodies of the optimizers, compiled once per instruction set by
// optim_cpu_avx2.cpp and optim_cpu_scalar.cpp (no include guard on purpose).
// Each kernel only picks the formula and its per-tensor coefficients; the memory
// walk is cpu_loop.h and the math is update_math.h.
#include "../common/cpu_loop.h"
#include "optim_kernels.h"

namespace fusedopt {
namespace optim {
namespace FO_CPU_NS {

using fusedopt::FO_CPU_NS::for_each_tensor_span;

// Calls body(T{}, S{}) with the param type T and the math/state type S of the group's
// dtype (the op layer has already rejected other dtypes).
template <class Body>
void dispatch_dtype(c10::ScalarType dt, const Body& body) {
  switch (dt) {
    case c10::ScalarType::Float: return body(float{}, float{});
    case c10::ScalarType::Double: return body(double{}, double{});
    case c10::ScalarType::BFloat16: return body(c10::BFloat16{}, float{});
    case c10::ScalarType::Half: return body(c10::Half{}, float{});
    default: break;
  }
}

void adam(const GroupArgs& a, const AdamHyper& h) {
  dispatch_dtype(a.dtype, [&](auto t, auto s) {
    using T = decltype(t);
    using S = decltype(s);
    for_each_tensor_span<T, S>(
        a.tensors, a.store_grad,
        [&](int64_t i) { return adam_coeffs<S>(h, a.lr, *a.tensors[i].step, a.inv_grad_scale); },
        [](auto& p, auto& g, auto& m, auto& v, auto& vmax, const auto& c) { adam_update(p, g, m, v, vmax, c); });
  });
}

}  // namespace FO_CPU_NS
}  // namespace optim
}  // namespace fusedopt
