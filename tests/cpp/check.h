#pragma once
// A minimal check macro for the native tests: no framework to install.
#include <cstdio>

static int g_failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond) && ++g_failures <= 20) {                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)
#define TEST_MAIN_RETURN()                                                  \
  (std::printf(g_failures ? "FAILED: %d checks\n" : "all checks passed\n", g_failures), g_failures ? 1 : 0)
