// Decoding one token at a time against the causal forward, for configurations the conformance
// suite does not reach (it builds layer 0 with the check parameters only).
#include <gtest/gtest.h>

#include <cmath>

#include "attnbench/variant.hpp"

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
  Tensor full;
  {
    NoGrad ng;
    full = mixer->forward(Var(x), ctx).value();
  }
  auto state = mixer->begin_decode(B, ctx);
  double worst = 0;
  for (int64_t t = 0; t < N; ++t) {
    Tensor x_t = Tensor::empty({B, 1, D});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < D; ++c) x_t[b * D + c] = x[(b * N + t) * D + c];
    const Tensor y_t = mixer->decode_step(x_t, *state, ctx);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < D; ++c) worst = std::max(worst, double(std::fabs(y_t[b * D + c] - full[(b * N + t) * D + c])));
  }
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
