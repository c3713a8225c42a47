#pragma once
// FO_HD marks the formulas that both backends compile: __host__ __device__ under nvcc,
// plain inline on the host.
//
// Headers of such formulas put them in an anonymous namespace: the AVX2 unit compiles
// them with other instruction-set flags than the portable unit, and internal linkage
// keeps the linker from merging the two copies into one that a CPU without AVX2 might
// call.
#if defined(__CUDACC__)
#define FO_HD __host__ __device__ __forceinline__
#else
#define FO_HD inline
#endif
