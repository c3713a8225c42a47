#pragma once
// What the batch norm op layer hands to the CPU kernels: raw pointers and a geometry.
// The kernels live three times, in namespaces avx512, avx2 and scalar
// (batchnorm_cpu_kernels.h).
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fusedopt {
namespace batchnorm {

// Element (n, c, i) of an input seen as (N, C, inner):
//   planes (NC..-contiguous): x[(n * C + c) * inner + i]; each (n, c) plane is contiguous;
//   rows (channels_last, or inner == 1): x[(n * inner + i) * C + c]; rows of C channels.
struct Geom {
  int64_t N = 0, C = 0, inner = 0;
  bool rows = false;
  int64_t count() const { return N * inner; }  // elements per channel
};

// Pointers are typed by the input dtype (T) or by its math type S (float; double for
// double inputs). nullptr = absent.
struct FwdArgs {
  c10::ScalarType dtype;
  Geom g;
  const void* x = nullptr;
  void* y = nullptr;
  const void* residual = nullptr;
  bool relu = false;
  // Per-channel (S): mean, scale (w * istd), bias.
  const void* mean = nullptr;
  const void* scale = nullptr;
  const void* bias = nullptr;
};

struct BwdArgs {
  c10::ScalarType dtype;
  Geom g;
  const void* dy = nullptr;
  const void* x = nullptr;
  const void* out = nullptr;  // forward output, for the relu mask (nullptr: no relu)
  const void* mean = nullptr;  // S[C]
  // Per-channel sums (double[C]) of dy' and dy' * (x - mean): outputs of reduce, inputs
  // of the element pass (which derives its coefficients from them).
  double* sum_dy = nullptr;
  double* sum_dy_xmu = nullptr;
  // Element pass coefficients (S[C]), see BwdCoeffs.
  const void* mean_dy = nullptr;
  const void* k = nullptr;
  const void* a = nullptr;
  void* dx = nullptr;
  void* dres = nullptr;
};

struct StatsOut {
  double* n;  // [C]
  double* mean;
  double* m2;
};

#define FO_BN_DECLARE(ns)                                                         \
  namespace ns {                                                                 \
  void stats(c10::ScalarType dt, const Geom& g, const void* x, const StatsOut& o); \
  void apply(const FwdArgs& a);                                                  \
  void bwd_reduce(const BwdArgs& a);                                             \
  void bwd_elemt(const BwdArgs& a);                                              \
  }
FO_BN_DECLARE(avx512)
FO_BN_DECLARE(avx2)
FO_BN_DECLARE(scalar)
#undef FO_BN_DECLARE

}  // namespace batchnorm
}  // namespace fusedopt
