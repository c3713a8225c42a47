// The shared formulas (update_math.h), instantiated on scalars as the CUDA kernels do,
// against long-double transcriptions of the textbook updates, over 25 steps.
#include <cmath>
#include <random>

#include "check.h"
#include "optim/update_math.h"

using namespace fusedopt::optim;
using LD = long double;

static bool close(LD a, LD b, LD tol) { return std::fabs(static_cast<double>(a - b)) <= tol * (1 + std::fabs((double)b)); }

// Runs Op in precision T and `ref` in long double side by side from the same start
// (all states zero). first/rest: the Hyper of the first and of later steps (they
// differ only for SGD's first momentum step). ref(p, g, s[3], t) updates in place.
template <class Op, class T, class Ref>
static void check(const typename Op::Hyper& first, const typename Op::Hyper& rest, double lr, LD tol, Ref ref) {
  std::mt19937 rng(7);
  std::normal_distribution<double> n(0.0, 1.0);
  for (int e = 0; e < 50; ++e) {
    T p = T(n(rng)), s0 = 0, s1 = 0, s2 = 0;
    LD rp = p, rs[3] = {0, 0, 0};
    for (int t = 1; t <= 25; ++t) {
      T g = T(n(rng));
      const auto c = Op::template coeffs<T>(t == 1 ? first : rest, StepScalars{lr, double(t), 1.0});
      Op::update(p, g, s0, s1, s2, c);
      ref(rp, static_cast<LD>(g), rs, t);
    }
    CHECK(close(p, rp, tol));
  }
}

template <class T>
static void check_all(LD tol) {
  const LD lr = 1e-2L;
  for (int f = 0; f < 16; ++f) {
    const bool b0 = f & 1, b1 = f & 2, b2 = f & 4;
    const LD wd = (f & 8) ? 0.1L : 0.0L;

    // Adam: b0 amsgrad, b1 maximize, b2 decoupled weight decay.
    const AdamHyper adam{0.9, 0.999, 1e-8, double(wd), b0, b1, b2};
    check<Adam, T>(adam, adam, double(lr), tol, [&](LD& p, LD g, LD* s, int t) {
      LD d = b1 ? -g : g;
      if (b2) p *= 1 - lr * wd;
      else d += wd * p;
      s[0] = 0.9L * s[0] + 0.1L * d;
      s[1] = 0.999L * s[1] + (1 - 0.999L) * d * d;
      s[2] = std::fmax(s[2], s[1]);
      const LD vhat = (b0 ? s[2] : s[1]) / (1 - std::pow(0.999L, t));
      p -= lr * (s[0] / (1 - std::pow(0.9L, t))) / (std::sqrt(vhat) + 1e-8L);
    });

    // SGD: b0 nesterov (else dampening 0.3), b1 maximize; momentum 0.9.
    const LD damp = b0 ? 0 : 0.3L;
    const SgdHyper sgd_first{0.9, double(damp), double(wd), b0, b1, true};
    SgdHyper sgd_rest = sgd_first;
    sgd_rest.first_step = false;
    check<Sgd, T>(sgd_first, sgd_rest, double(lr), tol, [&](LD& p, LD g, LD* s, int t) {
      LD d = (b1 ? -g : g) + wd * p;
      s[0] = t == 1 ? d : 0.9L * s[0] + (1 - damp) * d;
      p -= lr * (b0 ? d + 0.9L * s[0] : s[0]);
    });

    // RMSprop: b0 centered, b1 maximize, b2 momentum 0.5.
    const LD mom = b2 ? 0.5L : 0;
    const RmspropHyper rms{0.9, 1e-8, double(wd), double(mom), b0, b1};
    check<Rmsprop, T>(rms, rms, double(lr), tol, [&](LD& p, LD g, LD* s, int) {
      const LD d = (b1 ? -g : g) + wd * p;
      s[0] = 0.9L * s[0] + 0.1L * d * d;
      s[2] = 0.9L * s[2] + 0.1L * d;
      const LD avg = std::sqrt(b0 ? s[0] - s[2] * s[2] : s[0]) + 1e-8L;
      s[1] = mom * s[1] + d / avg;
      p -= lr * (b2 ? s[1] : d / avg);
    });

    // Adagrad: b0 lr decay 0.05, b1 maximize.
    const LD decay = b0 ? 0.05L : 0;
    const AdagradHyper ada{double(decay), double(wd), 1e-10, b1};
    check<Adagrad, T>(ada, ada, double(lr), tol, [&](LD& p, LD g, LD* s, int t) {
      const LD d = (b1 ? -g : g) + wd * p;
      s[0] += d * d;
      p -= lr / (1 + (t - 1) * decay) * d / (std::sqrt(s[0]) + 1e-10L);
    });

    // Adadelta: b0 rho 0.5 (else 0.9), b1 maximize.
    const LD rho = b0 ? 0.5L : 0.9L;
    const AdadeltaHyper dd{double(rho), 1e-6, double(wd), b1};
    check<Adadelta, T>(dd, dd, 1.0, tol, [&](LD& p, LD g, LD* s, int) {
      const LD d = (b1 ? -g : g) + wd * p;
      s[0] = rho * s[0] + (1 - rho) * d * d;
      const LD delta = std::sqrt(s[1] + 1e-6L) / std::sqrt(s[0] + 1e-6L) * d;
      s[1] = rho * s[1] + (1 - rho) * delta * delta;
      p -= delta;
    });
  }
}

int main() {
  check_all<double>(1e-11L);
  check_all<float>(5e-5L);
  // fo_max propagates NaN like torch.maximum.
  CHECK(std::isnan(fo_max(NAN, 1.0f)) && std::isnan(fo_max(1.0f, NAN)) && fo_max(2.0f, 1.0f) == 2.0f);
  return TEST_MAIN_RETURN();
}
