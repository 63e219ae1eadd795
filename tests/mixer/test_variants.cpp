// The registry-wide conformance suite: every registered variant, built-in or not, gets the same
// checks as `attnbench check` (shape, finiteness, determinism, causality, padding, gradients, cost).
#include <gtest/gtest.h>

#include "attnbench/check.hpp"
#include "attnbench/task.hpp"

using namespace ab;

class VariantConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(VariantConformance, PassesEveryCheck) {
  const auto results = check_variant(VariantRegistry::instance().get(GetParam()));
  ASSERT_FALSE(results.empty());
  for (const auto& r : results) EXPECT_TRUE(r.passed) << r.check << ": " << r.detail;
}

INSTANTIATE_TEST_SUITE_P(Registry, VariantConformance, ::testing::ValuesIn(VariantRegistry::instance().names()),
                         [](const auto& info) { return info.param; });

TEST(Registry, UnknownNamesSuggestTheNearest) {
  try {
    VariantRegistry::instance().get("sofmax");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'softmax'"), std::string::npos) << e.what();
  }
  try {
    TaskRegistry::instance().get("listop");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'listops'"), std::string::npos) << e.what();
  }
}

TEST(Registry, DuplicateNamesAreRefusedNamingBothOrigins) {
  VariantSpec s = VariantRegistry::instance().get("softmax");
  s.origin = "a plugin at /somewhere/libdup.so";
  try {
    VariantRegistry::instance().add(s);
    FAIL() << "no error";
  } catch (const std::exception& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("built-in"), std::string::npos) << m;
    EXPECT_NE(m.find("libdup.so"), std::string::npos) << m;
  }
}

TEST(SoftmaxVariant, MatchesANaiveReferenceWithMasks) {
  // y = softmax(q k^T / sqrt(d) + mask) v per head, computed here with plain loops.
  const VariantSpec& spec = VariantRegistry::instance().get("softmax");
  const int64_t B = 2, H = 2, N = 5, d = 3;
  MixerConfig cfg{H * d, H, N, 0, 1, resolve_params(spec.params, Json::object(), "softmax")};
  auto mixer = spec.make(cfg);
  auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
  ASSERT_NE(attn, nullptr);
  RngStream r(3, Purpose::check);
  auto rnd = [&] {
    Tensor t = Tensor::empty({B, H, N, d});
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = r.normal();
    return t;
  };
  const Tensor q = rnd(), k = rnd(), v = rnd();
  const Tensor kmask = key_padding_mask({1, 1, 1, 0, 0, 1, 1, 1, 1, 0}, B, N);
  for (bool causal : {false, true}) {
    MixerContext ctx;
    ctx.causal = causal;
    ctx.key_mask = &kmask;
    const Tensor y = attn->attend(Var(q), Var(k), Var(v), ctx).value();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < N; ++i) {
          std::vector<double> w(N, 0.0);
          double mx = -1e300, z = 0;
          for (int64_t j = 0; j < N; ++j) {
            const bool allowed = kmask[b * N + j] == 0.f && (!causal || j <= i);
            if (!allowed) continue;
            double s = 0;
            for (int64_t c = 0; c < d; ++c) s += double(q[((b * H + h) * N + i) * d + c]) * k[((b * H + h) * N + j) * d + c];
            w[j] = s / std::sqrt(double(d));
            mx = std::max(mx, w[j]);
          }
          for (int64_t j = 0; j < N; ++j) {
            const bool allowed = kmask[b * N + j] == 0.f && (!causal || j <= i);
            w[j] = allowed ? std::exp(w[j] - mx) : 0.0;
            z += w[j];
          }
          for (int64_t c = 0; c < d; ++c) {
            double o = 0;
            for (int64_t j = 0; j < N; ++j) o += w[j] / z * v[((b * H + h) * N + j) * d + c];
            EXPECT_NEAR(y[((b * H + h) * N + i) * d + c], o, 1e-5) << "causal " << causal;
          }
        }
  }
}
