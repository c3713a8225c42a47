#pragma once
// Closes what cpu_avx512_begin.h opened.
#if FO_HAVE_AVX512_UNIT && defined(__clang__)
#pragma clang attribute pop
#endif
