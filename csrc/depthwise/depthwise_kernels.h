#pragma once
// What the depthwise op layer hands to the CPU kernel variants: the geometry, the
// layout and raw pointers to contiguous tensors (NCHW or channels_last, checked by
// the op layer). Null output pointers are outputs not asked for.
#include <c10/core/ScalarType.h>

#include "depthwise_math.h"

namespace fusedopt {
namespace depthwise {

struct ForwardArgs {
  Geom g;
  c10::ScalarType dtype;
  bool channels_last;
  const void* input;
  const void* weight;
  const void* bias;  // may be null
  void* output;
};

struct BackwardArgs {
  Geom g;
  c10::ScalarType dtype;
  bool channels_last;
  const void* grad_out;
  const void* input;
  const void* weight;
  void* grad_input;   // may be null
  void* grad_weight;  // may be null
  void* grad_bias;    // may be null
};

namespace avx512 {
void forward(const ForwardArgs& a);
void backward(const BackwardArgs& a);
}  // namespace avx512
namespace avx2 {
void forward(const ForwardArgs& a);
void backward(const BackwardArgs& a);
}  // namespace avx2
namespace scalar {
void forward(const ForwardArgs& a);
void backward(const BackwardArgs& a);
}  // namespace scalar

}  // namespace depthwise
}  // namespace fusedopt
