// Long convolutions and state-space mixers: fft_conv against the direct O(N^2) convolution (causal,
// two-sided, shared kernel rows, short and long kernels) with finite-difference gradients; the diagonal
// SSM kernel against its definition; s4d's FFT form against an independent recurrent scan; and the
// conformance suite (decode = causal forward, state bytes, gradients, memory model) of s4d, h3, hyena.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <map>

#include "attnbench/check.hpp"
#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/variant.hpp"
#include "support/random_tensors.hpp"
#include "support/mixer_runs.hpp"

using namespace ab;

namespace {

Tensor rand_t(const Shape& s, uint64_t k, float scale = 1.f) { return test::symmetric_tensor(s, 11, k, scale); }

// y[b, t, c] = sum_s kf[g, t - s] u[b, s, c] (0 <= t - s < L) + sum_s kb[g, s - t] u[b, s, c] (0 <= s - t < L)
Tensor direct_conv(const Tensor& u, const Tensor& kf, const Tensor* kb) {
  const int64_t B = u.dim(0), N = u.dim(1), C = u.dim(2), G = kf.dim(0), L = kf.dim(1), r = C / G;
  Tensor y = Tensor::zeros(u.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (int64_t src = 0; src < N; ++src) {
          const float x = u[(b * N + src) * C + c];
          if (t - src >= 0 && t - src < L) s += double(kf[(c / r) * L + t - src]) * x;
          if (kb && src - t >= 0 && src - t < L) s += double((*kb)[(c / r) * L + src - t]) * x;
        }
        y[(b * N + t) * C + c] = static_cast<float>(s);
      }
  return y;
}

struct ConvCase {
  int64_t B, N, C, G, L;
  bool two_sided;
};

class FftConv : public ::testing::TestWithParam<ConvCase> {};

TEST_P(FftConv, EqualsDirectConvolutionWithFiniteDifferenceGradients) {
  const ConvCase p = GetParam();
  Var u(rand_t({p.B, p.N, p.C}, 1), true), kf(rand_t({p.G, p.L}, 2, 0.5f), true), kb(rand_t({p.G, p.L}, 3, 0.5f), true);
  auto f = [&] { return fft_conv(u, kf, p.two_sided ? kb : Var()); };
  Tensor y;
  {
    NoGrad ng;
    y = f().value();
  }
  const Tensor ref = direct_conv(u.value(), kf.value(), p.two_sided ? &kb.value() : nullptr);
  ASSERT_EQ(y.shape(), ref.shape());
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y[i], ref[i], 2e-5 * (1 + std::fabs(ref[i]))) << "element " << i;
  std::vector<Var> leaves{u, kf};
  if (p.two_sided) leaves.push_back(kb);
  GradCheckOptions opt;
  opt.max_elements = 40;
  const GradCheckReport r = grad_check(f, leaves, opt);
  EXPECT_TRUE(r.passed) << r.detail;
  EXPECT_EQ(r.checked, static_cast<int>(std::min<int64_t>(40, p.B * p.N * p.C) + std::min<int64_t>(40, p.G * p.L) *
                                                                                    (p.two_sided ? 2 : 1)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, FftConv,
                         ::testing::Values(ConvCase{2, 9, 3, 3, 9, false},   // causal, L = N, odd N
                                           ConvCase{2, 9, 3, 3, 9, true},    // two-sided
                                           ConvCase{1, 16, 6, 2, 16, false}, // rows shared by 3 channels
                                           ConvCase{2, 13, 4, 2, 13, true},
                                           ConvCase{2, 12, 2, 2, 5, true},   // short kernel
                                           ConvCase{1, 7, 2, 1, 11, false},  // kernel longer than N
                                           ConvCase{1, 7, 2, 2, 11, true}));

// Gradients against the direct correlations, at a size where finite differences would be slow.
TEST(FftConv, GradientsEqualDirectCorrelationsAtLength300) {
  const int64_t B = 2, N = 300, C = 4, G = 2, L = 300, r = C / G;
  Var u(rand_t({B, N, C}, 4), true), kf(rand_t({G, L}, 5, 0.1f), true), kb(rand_t({G, L}, 6, 0.1f), true);
  const Tensor dy = rand_t({B, N, C}, 7);
  Var y = fft_conv(u, kf, kb);
  y.backward(dy);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < N; s += 7)
      for (int64_t c = 0; c < C; ++c) {
        double ref = 0;  // du[s] = sum_t dy[t] (kf[t - s] + kb[s - t])
        for (int64_t t = 0; t < N; ++t) {
          const double g = dy[(b * N + t) * C + c];
          if (t >= s) ref += g * kf.value()[(c / r) * L + t - s];
          if (s >= t) ref += g * kb.value()[(c / r) * L + s - t];
        }
        ASSERT_NEAR(u.grad()[(b * N + s) * C + c], ref, 1e-4 * (1 + std::fabs(ref)));
      }
  for (int64_t gi = 0; gi < G; ++gi)
    for (int64_t l = 0; l < L; l += 11) {
      double rf = 0, rb = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = gi * r; c < (gi + 1) * r; ++c)
          for (int64_t t = 0; t < N; ++t) {
            const double g = dy[(b * N + t) * C + c];
            if (t - l >= 0) rf += g * u.value()[(b * N + t - l) * C + c];
            if (t + l < N) rb += g * u.value()[(b * N + t + l) * C + c];
          }
      ASSERT_NEAR(kf.grad()[gi * L + l], rf, 1e-3 * (1 + std::fabs(rf))) << "lag " << l;
      ASSERT_NEAR(kb.grad()[gi * L + l], rb, 1e-3 * (1 + std::fabs(rb))) << "lag " << l;
    }
}

TEST(FftConv, RejectsBadShapes) {
  Var u(Tensor::zeros({1, 8, 6})), k(Tensor::zeros({4, 8}));
  EXPECT_THROW(fft_conv(u, k), std::invalid_argument);  // 4 rows do not divide 6 channels
  EXPECT_THROW(fft_conv(u, Var(Tensor::zeros({3, 8})), Var(Tensor::zeros({3, 7}))), std::invalid_argument);
}

// ---- diagonal SSM kernel ----

struct SsmParams {
  Var log_dt, lar, aim, c;
};

SsmParams ssm_params(int64_t C, int64_t n, uint64_t seed) {
  SsmParams p;
  Tensor dt = Tensor::empty({C}), lar = Tensor::empty({C, n}), aim = Tensor::empty({C, n});
  RngStream r(seed, Purpose::check, 50);
  for (int64_t i = 0; i < C; ++i) dt[i] = std::log(0.05f + 0.3f * r.uniform());
  for (int64_t i = 0; i < C * n; ++i) {
    lar[i] = std::log(0.2f + r.uniform());
    aim[i] = 3.f * static_cast<float>(i % n) + r.uniform();
  }
  p.log_dt = Var(dt, true), p.lar = Var(lar, true), p.aim = Var(aim, true);
  p.c = Var(rand_t({C, n, 2}, seed + 1), true);
  return p;
}

// K[c, l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(l dt A_n)), straight from the definition.
Tensor naive_kernel(const SsmParams& p, int64_t L) {
  const int64_t C = p.log_dt.dim(0), n = p.lar.dim(1);
  Tensor K = Tensor::empty({C, L});
  for (int64_t c = 0; c < C; ++c)
    for (int64_t l = 0; l < L; ++l) {
      std::complex<double> s = 0;
      const double dt = std::exp(double(p.log_dt.value()[c]));
      for (int64_t m = 0; m < n; ++m) {
        const int64_t i = c * n + m;
        const std::complex<double> A(-std::exp(double(p.lar.value()[i])), p.aim.value()[i]);
        const std::complex<double> Cn(p.c.value()[2 * i], p.c.value()[2 * i + 1]);
        s += Cn * (std::exp(dt * A) - 1.0) / A * std::exp(double(l) * dt * A);
      }
      K[c * L + l] = static_cast<float>(2 * s.real());
    }
  return K;
}

TEST(SsmDiagKernel, EqualsDefinitionAndGradientsMatchFiniteDifferences) {
  SsmParams p = ssm_params(3, 4, 3);
  for (int64_t L : {1, 10, 200}) {
    NoGrad ng;
    const Tensor K = ssm_diag_kernel(p.log_dt, p.lar, p.aim, p.c, L).value();
    const Tensor ref = naive_kernel(p, L);
    for (int64_t i = 0; i < K.numel(); ++i) ASSERT_NEAR(K[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << "L " << L;
  }
  GradCheckOptions opt;
  opt.step = 1e-3f;
  const GradCheckReport r = grad_check([&] { return ssm_diag_kernel(p.log_dt, p.lar, p.aim, p.c, 24); },
                                       {p.log_dt, p.lar, p.aim, p.c}, opt);
  EXPECT_TRUE(r.passed) << r.detail;
}

// The kernel is computed as blocked Vandermonde GEMMs (powers z^r and z^{R j} by repeated products in
// double, rounded to float, R ~ sqrt(L)): at bench lengths, with S4D-Lin modes and a lag count that is
// not a multiple of the block, it still equals the definition in double.
TEST(SsmDiagKernel, BlockedVandermondeEqualsDefinitionAtLongLengths) {
  const int64_t C = 3, n = 32, L = 4100;
  SsmParams p = ssm_params(C, n, 31);
  for (int64_t c = 0; c < C; ++c) {
    p.log_dt.value_mut()[c] = std::log(c == 0 ? 0.1f : c == 1 ? 0.01f : 0.001f);
    for (int64_t m = 0; m < n; ++m) p.aim.value_mut()[c * n + m] = static_cast<float>(3.14159265358979 * m);
  }
  NoGrad ng;
  const Tensor K = ssm_diag_kernel(p.log_dt, p.lar, p.aim, p.c, L).value();
  const Tensor ref = naive_kernel(p, L);
  double worst = 0;
  for (int64_t i = 0; i < K.numel(); ++i) worst = std::max(worst, double(std::fabs(K[i] - ref[i]) / (1 + std::fabs(ref[i]))));
  EXPECT_LT(worst, 1e-5);
}

// At S4D-Lin sizes (32 modes, Im(A) up to 31 pi, dt up to 0.1) float finite differences are too coarse,
// so the analytic gradient is compared with central differences of the definition in double.
TEST(SsmDiagKernel, GradientsAtS4dLinSizesEqualDoubleFiniteDifferences) {
  const int64_t C = 2, n = 32, L = 64;
  SsmParams p = ssm_params(C, n, 21);
  for (int64_t c = 0; c < C; ++c) {
    p.log_dt.value_mut()[c] = std::log(c == 0 ? 0.1f : 0.02f);
    for (int64_t m = 0; m < n; ++m) p.aim.value_mut()[c * n + m] = static_cast<float>(3.14159265358979 * m);
  }
  const Tensor G = rand_t({C, L}, 22);
  Var K = ssm_diag_kernel(p.log_dt, p.lar, p.aim, p.c, L);
  K.backward(G);
  // loss(theta) = sum_{c,l} G K(theta) with one parameter value replaced by `value`, in double.
  auto loss = [&](int which, int64_t idx, double value) {
    double total = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double dt = std::exp(which == 0 && idx == c ? value : double(p.log_dt.value()[c]));
      for (int64_t m = 0; m < n; ++m) {
        const int64_t i = c * n + m;
        const double lar = which == 1 && idx == i ? value : p.lar.value()[i];
        const double aim = which == 2 && idx == i ? value : p.aim.value()[i];
        const double cre = which == 3 && idx == 2 * i ? value : p.c.value()[2 * i];
        const double cim = which == 3 && idx == 2 * i + 1 ? value : p.c.value()[2 * i + 1];
        const std::complex<double> A(-std::exp(lar), aim), Cn(cre, cim);
        const std::complex<double> W = Cn * (std::exp(dt * A) - 1.0) / A;
        for (int64_t l = 0; l < L; ++l) total += G[c * L + l] * 2 * (W * std::exp(double(l) * dt * A)).real();
      }
    }
    return total;
  };
  const Var* leaves[4] = {&p.log_dt, &p.lar, &p.aim, &p.c};
  for (int which = 0; which < 4; ++which) {
    const Tensor& v = leaves[which]->value();
    for (int64_t idx = 0; idx < v.numel(); idx += std::max<int64_t>(1, v.numel() / 9)) {
      const double h = 1e-6, x0 = v[idx];
      const double numeric = (loss(which, idx, x0 + h) - loss(which, idx, x0 - h)) / (2 * h);
      const double analytic = leaves[which]->grad()[idx];
      EXPECT_NEAR(analytic, numeric, 1e-3 * (1 + std::fabs(numeric))) << "input " << which << " element " << idx;
    }
  }
}

TEST(DiagSsmState, RecurrenceEqualsKernelConvolution) {
  SsmParams p = ssm_params(2, 3, 9);
  const int64_t B = 2, N = 20, S = 4;  // 4 state channels share 2 mode rows
  const Tensor u = rand_t({B, N, S}, 12);
  Tensor yk;
  {
    NoGrad ng;
    const Var K = ssm_diag_kernel(p.log_dt, p.lar, p.aim, p.c, N);
    yk = fft_conv(Var(u), K).value();
  }
  const DiagSsmModes m = diag_ssm_modes(p.log_dt.value(), p.lar.value(), p.aim.value(), p.c.value());
  DiagSsmState st(B, S, 3);
  for (int64_t t = 0; t < N; ++t) {
    Tensor ut = Tensor::empty({B, 1, S});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) ut[b * S + s] = u[(b * N + t) * S + s];
    const Tensor yt = st.step(ut, m);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) ASSERT_NEAR(yt[b * S + s], yk[(b * N + t) * S + s], 1e-4) << "t " << t;
  }
  EXPECT_EQ(st.bytes(), B * S * 3 * 8);
}

// ---- s4d: FFT form against an independent scan ----

std::map<std::string, Tensor> params_of(const Mixer& m) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, v] : m.parameters()) out[name] = v.value();
  return out;
}

double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

TEST(S4d, ConvolutionFormEqualsRecurrentScan) {
  const VariantSpec& spec = VariantRegistry::instance().get("s4d");
  const int64_t B = 2, N = 24, D = 8;
  for (bool causal : {true, false}) {
    const Json params = resolve_params(spec.params, {{"d_state", 8}, {"dt_min", 0.05}, {"dt_max", 0.5}}, "s4d");
    auto mixer = spec.make(MixerConfig{D, 2, N, 0, 5, params});
    const Tensor x = rand_t({B, N, D}, 20);
    MixerContext ctx;
    ctx.causal = causal;
    const Tensor y = test::forward_value(*mixer, x, ctx);
    auto P = params_of(*mixer);
    const int64_t n = 4;
    // The SSM output by scanning forward (c_fwd) and, bidirectionally, backward (c_bwd) in time.
    std::vector<double> ssm(static_cast<size_t>(B * N * D), 0.0);
    for (int dir = 0; dir < (causal ? 1 : 2); ++dir) {
      const Tensor& cc = dir == 0 ? P.at("c_fwd") : P.at("c_bwd");
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < D; ++c) {
          std::vector<std::complex<double>> h(n, 0.0);
          const double dt = std::exp(double(P.at("log_dt")[c]));
          for (int64_t step = 0; step < N; ++step) {
            const int64_t t = dir == 0 ? step : N - 1 - step;
            const double in = x[(b * N + t) * D + c];
            std::complex<double> out = 0;
            for (int64_t m = 0; m < n; ++m) {
              const std::complex<double> A(-std::exp(double(P.at("log_a_re")[c * n + m])), P.at("a_im")[c * n + m]);
              const std::complex<double> Ab = std::exp(dt * A), Bb = (Ab - 1.0) / A;
              h[m] = Ab * h[m] + Bb * in;
              out += std::complex<double>(cc[2 * (c * n + m)], cc[2 * (c * n + m) + 1]) * h[m];
            }
            ssm[(b * N + t) * D + c] += 2 * out.real();
          }
        }
    }
    const Tensor &skip = P.at("skip"), &w = P.at("w_out"), &bo = P.at("b_out");
    for (int64_t r = 0; r < B * N; ++r) {
      std::vector<double> h(D);
      for (int64_t c = 0; c < D; ++c) h[c] = gelu_ref(ssm[r * D + c] + skip[c] * x[r * D + c]);
      for (int64_t o = 0; o < D; ++o) {
        double a = bo[o], g = bo[D + o];
        for (int64_t c = 0; c < D; ++c) a += h[c] * w[c * 2 * D + o], g += h[c] * w[c * 2 * D + D + o];
        const double ref = a / (1 + std::exp(-g));
        ASSERT_NEAR(y[r * D + o], ref, 2e-4 * (1 + std::fabs(ref))) << (causal ? "causal" : "bidirectional") << " row " << r;
      }
    }
  }
}

// ---- conformance of every variant of this family (includes decode = causal forward) ----

struct VariantCase {
  const char* name;
  const char* params;  // JSON
};

class LongConvVariants : public ::testing::TestWithParam<VariantCase> {};

TEST_P(LongConvVariants, ConformanceSuitePasses) {
  const VariantCase p = GetParam();
  const VariantSpec* spec = VariantRegistry::instance().find(p.name);
  ASSERT_NE(spec, nullptr) << p.name;
  bool decode_checked = false;
  for (const auto& r : check_variant(*spec, Json::parse(p.params))) {
    EXPECT_TRUE(r.passed) << p.name << " " << p.params << " " << r.check << ": " << r.detail;
    decode_checked = decode_checked || r.check == "decode";
  }
  EXPECT_TRUE(decode_checked);
}

INSTANTIATE_TEST_SUITE_P(Family, LongConvVariants,
                         ::testing::Values(VariantCase{"s4d", "{}"}, VariantCase{"s4d", R"({"init": "inv"})"},
                                           VariantCase{"h3", "{}"}, VariantCase{"h3", R"({"head_dim": 0})"},
                                           VariantCase{"hyena", "{}"}));

}  // namespace
