// The shared formulas (update_math.h), instantiated on scalars as the CUDA kernels do,
// against a long-double transcription of the textbook updates.
#include <cmath>
#include <random>

#include "check.h"
#include "optim/update_math.h"

using namespace fusedopt::optim;

static bool close(long double a, long double b, long double rtol, long double atol) {
  return std::fabs(static_cast<double>(a - b)) <= atol + rtol * std::fabs(static_cast<double>(b));
}

template <class T>
static void check_adam(bool amsgrad, bool maximize, bool decoupled, double wd, long double rtol) {
  std::mt19937 rng(7);
  std::normal_distribution<double> n(0.0, 1.0);
  const AdamHyper h{0.9, 0.999, 1e-8, wd, amsgrad, maximize, decoupled};
  const double lr = 1e-2;
  for (int e = 0; e < 200; ++e) {
    T p = T(n(rng)), m = T(0), v = T(0), vmax = T(0);
    long double rp = p, rm = 0, rv = 0, rvmax = 0;
    for (int step = 1; step <= 25; ++step) {
      const double gd = n(rng);
      T g = T(gd);
      const auto c = adam_coeffs<T>(h, lr, step, 1.0);
      adam_update(p, g, m, v, vmax, c);

      long double d = maximize ? -static_cast<long double>(T(gd)) : static_cast<long double>(T(gd));
      if (wd != 0 && decoupled) rp *= 1 - lr * wd;
      if (wd != 0 && !decoupled) d += wd * rp;
      rm = 0.9L * rm + 0.1L * d;
      rv = 0.999L * rv + (1 - 0.999L) * d * d;
      rvmax = std::fmax(rvmax, rv);
      const long double vhat = (amsgrad ? rvmax : rv) / (1 - std::pow(0.999L, step));
      rp -= lr * (rm / (1 - std::pow(0.9L, step))) / (std::sqrt(vhat) + 1e-8L);
    }
    CHECK(close(p, rp, rtol, rtol));
    CHECK(close(m, rm, rtol, rtol));
  }
}

int main() {
  for (int amsgrad = 0; amsgrad < 2; ++amsgrad)
    for (int maximize = 0; maximize < 2; ++maximize)
      for (int decoupled = 0; decoupled < 2; ++decoupled)
        for (double wd : {0.0, 0.1}) {
          check_adam<double>(amsgrad, maximize, decoupled, wd, 1e-12L);
          check_adam<float>(amsgrad, maximize, decoupled, wd, 2e-5L);
        }
  // fo_max propagates NaN like torch.maximum.
  CHECK(std::isnan(fo_max(NAN, 1.0f)) && std::isnan(fo_max(1.0f, NAN)) && fo_max(2.0f, 1.0f) == 2.0f);
  return TEST_MAIN_RETURN();
}
