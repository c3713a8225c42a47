#pragma once
// An optional tensor argument counts as given only when it holds a defined tensor.
#include <ATen/core/Tensor.h>

#include <optional>

namespace fusedopt {

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace fusedopt
