// Approximation fidelity: random and trained-model attention inputs (fidelity.hpp).
#include <gtest/gtest.h>

#include <cmath>

#include "eval/fidelity.hpp"
#include "attnbench/params.hpp"

namespace {

double fidelity(const std::string& variant, const ab::AttentionInputs& in, ab::Json given = ab::Json::object()) {
  const ab::VariantSpec& spec = ab::VariantRegistry::instance().get(variant);
  return ab::attention_fidelity(spec, ab::resolve_params(spec.params, given, variant), in, false, 3);
}

TEST(Fidelity, ExactFormsAgreeAndApproximationsDoNotOnRandomInputs) {
  const ab::AttentionInputs in = ab::random_attention_inputs(1, 2, 96, 32, 7);
  EXPECT_LT(fidelity("softmax", in), 1e-5);
  EXPECT_LT(fidelity("local_window", in, {{"window", 256}}), 1e-5);
  EXPECT_GT(fidelity("linear_elu", in), 0.05);
  EXPECT_TRUE(std::isnan(fidelity("fnet", in)));  // not attention-style
}

TEST(Fidelity, TrainedInputsAreCapturedDeterministicallyAtAnyLength) {
  const ab::TrainedAttentionSource src("text", 64, 30, 5);
  EXPECT_EQ(src.description()["steps"], 30);
  const ab::AttentionInputs a = src.capture(128, 2, 0), b = src.capture(128, 2, 0), c = src.capture(128, 2, 1);
  ASSERT_EQ(a.q.shape(), (ab::Shape{2, 2, 128, 32}));
  for (int64_t i = 0; i < a.q.numel(); ++i) ASSERT_EQ(a.q[i], b.q[i]);
  double diff = 0;
  for (int64_t i = 0; i < a.k.numel(); ++i) diff += std::fabs(a.k[i] - c.k[i]);
  EXPECT_GT(diff, 0) << "layers 0 and 1 returned the same keys";
  EXPECT_LT(fidelity("softmax", a), 1e-5);
  EXPECT_THROW(src.capture(128, 2, 5), ab::UsageError);
}

}  // namespace
