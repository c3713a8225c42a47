// The depthwise CPU kernels for the baseline instruction set.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#define FO_CPU_NS scalar
#include "depthwise_cpu_kernels.h"
