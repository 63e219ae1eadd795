// The finite-difference gradient check (grad_check, check_variant): it passes correct smooth and
// non-smooth code, reports points near a kink instead of failing them, and still fails a planted
// gradient bug in a smooth op, in a non-smooth op and in a non-smooth attention variant.
#include <gtest/gtest.h>

#include <cmath>

#include "attnbench/check.hpp"
#include "attnbench/ops.hpp"
#include "support/random_tensors.hpp"

using namespace ab;

namespace {

// y = x * x with a backward scaled by `factor` (1 = correct).
Var square(const Var& x, float factor) {
  Tensor y = Tensor::empty(x.shape()), xv = x.value();
  for (int64_t i = 0; i < y.numel(); ++i) y[i] = xv[i] * xv[i];
  return make_op_result(y, {x}, [xv, sink = x.sink(), factor](const Tensor& g) {
    Tensor dx = Tensor::empty(g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) dx[i] = factor * 2.f * xv[i] * g[i];
    sink.accumulate(dx);
  });
}

// relu(x) with a backward scaled by `factor` where x > 0 (1 = correct).
Var scaled_relu(const Var& x, float factor) {
  Tensor y = Tensor::empty(x.shape()), xv = x.value();
  for (int64_t i = 0; i < y.numel(); ++i) y[i] = std::max(xv[i], 0.f);
  return make_op_result(y, {x}, [xv, sink = x.sink(), factor](const Tensor& g) {
    Tensor dx = Tensor::empty(g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) dx[i] = xv[i] > 0 ? factor * g[i] : 0.f;
    sink.accumulate(dx);
  });
}

TEST(GradCheck, SmoothOpPassesAndAPlantedBugFails) {
  Var x(test::uniform_tensor({4, 6}, 3, 1), true);
  EXPECT_TRUE(grad_check([&] { return square(x, 1.f); }, {x}).passed);
  const GradCheckReport bad = grad_check([&] { return square(x, 1.1f); }, {x});
  EXPECT_FALSE(bad.passed);
  EXPECT_NE(bad.detail.find("backward is likely wrong"), std::string::npos) << bad.detail;
  EXPECT_EQ(bad.kinks, 0);
}

TEST(GradCheck, APointNearAKinkIsReportedNotFailed) {
  Tensor t = test::uniform_tensor({4, 6}, 3, 2, 0.5f, 1.f);  // away from the kink ...
  t[5] = 6e-5f;                                               // ... but one element, as in issue 19
  Var x(t, true);
  const GradCheckReport rep = grad_check([&] { return relu(scale(x, 1.f)); }, {x});
  EXPECT_TRUE(rep.passed) << rep.detail;
  EXPECT_EQ(rep.kinks, 1) << rep.kink_detail;
  EXPECT_NE(rep.kink_detail.find("element 5"), std::string::npos) << rep.kink_detail;
}

TEST(GradCheck, APlantedBugInANonSmoothOpStillFails) {
  Tensor t = test::uniform_tensor({4, 6}, 3, 2, -1.f, 1.f);
  t[5] = 6e-5f;
  Var x(t, true);
  const GradCheckReport rep = grad_check([&] { return scaled_relu(x, 1.3f); }, {x});
  EXPECT_FALSE(rep.passed);
  EXPECT_NE(rep.detail.find("backward is likely wrong"), std::string::npos) << rep.detail;
}

TEST(GradCheck, TooManyKinksCannotBeVerified) {
  Tensor t = test::uniform_tensor({4, 6}, 3, 2, -1e-4f, 1e-4f);  // every element at the kink
  Var x(t, true);
  const GradCheckReport rep = grad_check([&] { return relu(x); }, {x});
  EXPECT_FALSE(rep.passed);
  EXPECT_NE(rep.detail.find("non-smooth points"), std::string::npos) << rep.detail;
}

// ReLU attention (as the ReLU-of-cosine plugin of issue 19, without the normalisation), with the
// ReLU's backward scaled by kTenths / 10 (10 = correct).
template <int kTenths>
class ReluCosine final : public AttentionMixer {
 public:
  explicit ReluCosine(const MixerConfig& cfg) : AttentionMixer(cfg) {}
  static VariantSpec spec() {
    VariantSpec s;
    s.name = "relu_cosine";
    s.family = "test";
    s.caps = {.causal = false, .bidirectional = true};
    s.cost = [](const CostArgs& a) {
      Cost c;
      c.flops = 1.0 * a.batch * a.length * a.length * a.d_model;
      return c;
    };
    s.make = [](const MixerConfig& cfg) -> std::unique_ptr<Mixer> { return std::make_unique<ReluCosine>(cfg); };
    return s;
  }
  // q, k, v: [B, H, N, d] -> [B, H, N, d]: relu(q k^T / sqrt(d)) v / N (a constant row scale, so
  // that only the ReLU makes it non-smooth)
  Var attend(const Var& q, const Var& k, const Var& v, const MixerContext&) override {
    const float d = static_cast<float>(q.dim(3)), n = static_cast<float>(q.dim(2));
    Var s = scaled_relu(scale(matmul(q, k, false, true), 1.f / std::sqrt(d)), kTenths / 10.f);  // [B, H, N, N]
    return scale(matmul(s, v), 1.f / n);
  }
};

bool gradient_passed(const VariantSpec& spec, uint64_t seed) {
  for (const auto& r : check_variant(spec, Json::object(), seed))
    if (r.check == "gradient") return r.passed;
  ADD_FAILURE() << "no gradient check ran";
  return false;
}

TEST(GradCheck, NonSmoothVariantPassesOnSeveralSeedsAndItsPlantedBugFails) {
  const VariantSpec good = ReluCosine<10>::spec(), bad = ReluCosine<13>::spec();
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    EXPECT_TRUE(gradient_passed(good, seed)) << "seed " << seed;
    EXPECT_FALSE(gradient_passed(bad, seed)) << "seed " << seed;
  }
}

}  // namespace
