// Short depthwise convolution: forward against a naive loop, gradients by finite differences, and
// the one-token-at-a-time state against the causal forward.
#include <gtest/gtest.h>

#include <cmath>

#include "attnbench/check.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "support/random_tensors.hpp"

using namespace ab;

namespace {

Tensor rand_t(const Shape& s, uint64_t k) { return test::symmetric_tensor(s, 7, k); }

// y[b, t, c] = bias[c] + sum_j w[c, j] x[b, t + shift(j), c], written from the definition.
Tensor naive(const Tensor& x, const Tensor& w, const Tensor& bias, bool causal) {
  const int64_t B = x.dim(0), N = x.dim(1), C = x.dim(2), K = w.dim(1);
  Tensor y = Tensor::zeros(x.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double s = bias[c];
        for (int64_t j = 0; j < K; ++j) {
          const int64_t src = causal ? t - j : t + j - (K - 1) / 2;
          if (src >= 0 && src < N) s += double(w[c * K + j]) * x[(b * N + src) * C + c];
        }
        y[(b * N + t) * C + c] = static_cast<float>(s);
      }
  return y;
}

class ShortConv : public ::testing::TestWithParam<std::tuple<bool, int>> {};

TEST_P(ShortConv, ForwardMatchesNaiveAndGradientsMatchFiniteDifferences) {
  const bool causal = std::get<0>(GetParam());  // named: clang 14 cannot capture bindings
  const int K = std::get<1>(GetParam());
  const int64_t B = 2, N = 9, C = 5;
  Var x(rand_t({B, N, C}, 1), true), w(rand_t({C, K}, 2), true), bias(rand_t({C}, 3), true);
  Tensor y;
  {
    NoGrad ng;
    y = short_conv(x, w, bias, causal).value();
  }
  const Tensor ref = naive(x.value(), w.value(), bias.value(), causal);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5) << "element " << i;
  const GradCheckReport r = grad_check([&] { return short_conv(x, w, bias, causal); }, {x, w, bias});
  EXPECT_TRUE(r.passed) << r.detail;
}

INSTANTIATE_TEST_SUITE_P(CausalAndCentered, ShortConv,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1, 3, 4)));

TEST(ShortConvState, StepwiseEqualsCausalForward) {
  const int64_t B = 2, N = 7, C = 3, K = 4;
  const Tensor x = rand_t({B, N, C}, 4), w = rand_t({C, K}, 5), bias = rand_t({C}, 6);
  const Tensor ref = naive(x, w, bias, true);
  ShortConvState state(B, C, K);
  for (int64_t t = 0; t < N; ++t) {
    Tensor x_t = Tensor::empty({B, 1, C});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) x_t[b * C + c] = x[(b * N + t) * C + c];
    const Tensor y_t = state.step(x_t, w, &bias);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) ASSERT_NEAR(y_t[b * C + c], ref[(b * N + t) * C + c], 1e-5) << "t " << t;
  }
  EXPECT_EQ(state.bytes(), B * (K - 1) * C * 4);
}

}  // namespace
