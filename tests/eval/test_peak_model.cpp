// Cost::peak_bytes: what measure_mixer_memory counts as the peak of a forward+backward, the
// declared models' shape (every variant declares one, above its saved bytes, growing with N), and
// the bench's use of it. The per-variant comparison with the tracking allocator at N = 256 and
// N = 1024 is the conformance check `peak_model` (test_variants.cpp runs it on every variant).
#include <gtest/gtest.h>

#include <cmath>

#include "bench/bench.hpp"
#include "attnbench/check.hpp"

using namespace ab;

namespace {
Json defaults(const VariantSpec& spec) { return resolve_params(spec.params, Json::object(), spec.name); }
}  // namespace

// The definition, on a mixer whose every allocation is known: poolformer's forward allocates y
// [B, N, D] and saves nothing; its backward allocates dx [B, N, D] (the pooling of the upstream
// gradient) and nothing else. x and the upstream gradient of ones exist before and are not counted.
TEST(PeakModel, MeasuresYAndGradientsAboveInputAndUpstreamGradient) {
  const VariantSpec& spec = VariantRegistry::instance().get("poolformer");
  const int64_t B = 2, N = 64, D = 32;
  const MemoryMeasure m = measure_mixer_memory(spec, defaults(spec), B, N, D, 4, false);
  const int64_t bnd = 4 * B * N * D;  // bytes of one [B, N, D] tensor (a multiple of 4 KiB: no rounding)
  EXPECT_EQ(m.saved_bytes, 0);
  EXPECT_EQ(m.peak_bytes, 2 * bnd) << "y and dx only";
}

// Dense softmax: the peak holds three [B, H, N, N] buffers (P, dP, dS) at the softmax backward; a
// hand count, independent of the variant's own model.
TEST(PeakModel, DenseSoftmaxPeakHoldsThreeScoreBuffers) {
  const VariantSpec& spec = VariantRegistry::instance().get("softmax");
  const int64_t B = 1, N = 512, D = 32, H = 4;
  const MemoryMeasure m = measure_mixer_memory(spec, defaults(spec), B, N, D, H, false);
  const double scores = 4.0 * B * H * N * N;
  EXPECT_GT(m.peak_bytes, 3 * scores);
  EXPECT_LT(m.peak_bytes, 3 * scores + 4.0 * (8 * B * N * D + 4 * D * D));
}

// Every variant declares a peak, at least its saved bytes (they are alive at the start of backward)
// and growing with the length; at N = 4096, D = 512, H = 8 (the bench figure) it is finite.
TEST(PeakModel, EveryVariantDeclaresAPeakAboveItsSavedBytes) {
  for (const auto& name : VariantRegistry::instance().names()) {
    const VariantSpec& spec = VariantRegistry::instance().get(name);
    ASSERT_TRUE(spec.cost) << name;
    const Json p = defaults(spec);
    const bool causal = !spec.caps.bidirectional;
    for (int64_t n : {256, 1024, 4096}) {
      const Cost c = spec.cost({1, n, 512, 8, &p, causal});
      EXPECT_GT(c.peak_bytes, 0) << name << " N=" << n;
      EXPECT_GE(c.peak_bytes, c.activation_bytes) << name << " N=" << n;
      EXPECT_TRUE(std::isfinite(c.peak_bytes)) << name;
    }
    const Cost c1 = spec.cost({1, 1024, 512, 8, &p, causal}), c2 = spec.cost({1, 4096, 512, 8, &p, causal});
    EXPECT_GT(c2.peak_bytes, c1.peak_bytes) << name;
  }
}

// The bench's memory guard predicts a fwd_bwd cell from the declared peak plus the cell's inputs
// (x and the upstream gradient); forward-only cells keep their heuristic.
TEST(PeakModel, BenchPredictsForwardBackwardCellsFromTheDeclaredPeak) {
  const VariantSpec& spec = VariantRegistry::instance().get("softmax_tiled");
  const Json p = defaults(spec);
  BenchShape s;
  s.batch = 1, s.length = 2048, s.d_model = 128, s.heads = 4;
  const Cost c = spec.cost({s.batch, s.length, s.d_model, s.heads, &p, false});
  const double io = 4.0 * s.batch * s.length * s.d_model;
  EXPECT_DOUBLE_EQ(predicted_peak_bytes(spec, p, s, Direction::fwd_bwd), c.peak_bytes + 2 * io);
  EXPECT_GT(predicted_peak_bytes(spec, p, s, Direction::fwd), 0);
}
