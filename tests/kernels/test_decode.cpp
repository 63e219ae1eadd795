// Decoding one token at a time against the causal forward, for configurations the conformance
// suite does not reach (it builds layer 0 with the check parameters only).
#include <gtest/gtest.h>

#include <cmath>

#include "attnbench/check.hpp"
#include "attnbench/variant.hpp"
#include "support/mixer_runs.hpp"

using namespace ab;

namespace {

// Largest |decoded - forward| over all positions; x: [B, N, D].
double decode_gap(const std::string& variant, Json given, int layer) {
  const VariantSpec& spec = VariantRegistry::instance().get(variant);
  const int64_t B = 2, N = 11, D = 16, H = 2;
  const Json params = resolve_params(spec.params, given, variant);
  auto mixer = spec.make(MixerConfig{D, H, N, layer, 3, params});
  RngStream r(5, Purpose::check, 1);
  Tensor x = Tensor::empty({B, N, D});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = r.normal();
  MixerContext ctx;
  ctx.causal = true;
  ctx.layer = layer;
  const Tensor full = test::forward_value(*mixer, x, ctx);
  const Tensor decoded = decode_sequence(*mixer, x, ctx);
  double worst = 0;
  for (int64_t i = 0; i < full.numel(); ++i) worst = std::max(worst, double(std::fabs(decoded[i] - full[i])));
  return worst;
}

TEST(Decode, TransNormerNormAttentionLayers) {
  for (const char* feature : {"elu", "relu"})
    EXPECT_LT(decode_gap("transnormer", {{"feature", feature}, {"diag_layers", 1}}, 1), 1e-4) << feature;
}

TEST(Decode, TransNormerDiagAttentionAcrossBlockBoundaries) {
  // N = 11 with blocks of 4: two full blocks and a partial one.
  EXPECT_LT(decode_gap("transnormer", {{"block", 4}, {"diag_layers", 1}}, 0), 1e-4);
}

TEST(Decode, FlowformerCausalForm) { EXPECT_LT(decode_gap("flowformer", Json::object(), 0), 1e-4); }

}  // namespace
