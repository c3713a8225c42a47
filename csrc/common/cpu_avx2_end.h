#pragma once
// Closes what cpu_avx2_begin.h opened.
#if FO_HAVE_AVX2_UNIT && defined(__clang__)
#pragma clang attribute pop
#endif
