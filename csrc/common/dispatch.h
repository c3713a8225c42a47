#pragma once
// dtype dispatch shared by the CPU and CUDA kernels.
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace fusedopt {

// Calls body(T{}, S{}) with the param type T and the math/state type S (float for
// half types) of dtype dt. The op layer has already rejected other dtypes.
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

}  // namespace fusedopt
