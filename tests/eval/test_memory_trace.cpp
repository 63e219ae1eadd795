// `check --trace-memory` (eval/memory_trace.hpp): the exact fit recovers a known polynomial with
// fractions, refuses data that is no polynomial and a fit that misses the held-out size; the trace
// of a built-in variant gives its saved bytes exactly, and a planted wrong declaration is reported.
#include <gtest/gtest.h>

#include <cmath>

#include "attnbench/ops.hpp"
#include "eval/memory_trace.hpp"

using namespace ab;

namespace {

std::vector<SizePoint> grid() {
  std::vector<SizePoint> p;
  for (int64_t B : {1, 2, 3})
    for (int64_t N : {16, 32, 64})
      for (int64_t D : {16, 32, 64})
        for (int64_t H : {1, 2, 4}) p.push_back({B, N, D, H});
  return p;
}

const SizePoint kHeldOut{3, 128, 64, 8};

double known(const SizePoint& s) {
  const double B = s.B, N = s.N, D = s.D, H = s.H;
  return 4 * B * H * N * N + 16 * B * N * D + 3 * B * N * D * D / H / 16 + 12 * D * D + 768;
}

}  // namespace

TEST(MemoryTrace, AKnownPolynomialIsRecoveredExactlyWithItsFractions) {
  std::vector<double> v;
  for (const auto& p : grid()) v.push_back(known(p));
  const MemoryFit fit = fit_memory_polynomial(grid(), v, kHeldOut, known(kHeldOut));
  ASSERT_TRUE(fit.exact) << fit.problem;
  EXPECT_EQ(memory_formula(fit.pieces, false), "4*B*H*N^2 + (3/16)*B*N*D^2/H + 16*B*N*D + 12*D^2 + 768");
  EXPECT_EQ(memory_formula(fit.pieces, true),
            "4 * B * H * N * N + 3 * B * N * D * D / H / 16.0 + 16 * B * N * D + 12 * D * D + 768");
  EXPECT_EQ(evaluate(fit.pieces, {2, 256, 64, 4}), known({2, 256, 64, 4}));
}

TEST(MemoryTrace, DataThatIsNoPolynomialIsRefusedNamingTheSize) {
  std::vector<double> v;
  // A step in B*N*D (e.g. a buffer allocated only above some size). A step in one variable alone
  // would be fitted at three sizes, and only the held-out size would catch it (next test).
  for (const auto& p : grid()) v.push_back(known(p) + (p.B * p.N * p.D >= 2048 ? 4096 : 0));
  const MemoryFit fit = fit_memory_polynomial(grid(), v, kHeldOut, known(kHeldOut) + 4096);
  EXPECT_FALSE(fit.exact);
  EXPECT_NE(fit.problem.find("no polynomial"), std::string::npos) << fit.problem;
}

TEST(MemoryTrace, AFitThatMissesTheHeldOutSizeIsRefused) {
  std::vector<double> v;
  for (const auto& p : grid()) v.push_back(known(p));
  const MemoryFit fit = fit_memory_polynomial(grid(), v, kHeldOut, known(kHeldOut) + 4096);
  EXPECT_FALSE(fit.exact);
  EXPECT_NE(fit.problem.find("held-out size B=3 N=128 D=64 H=8"), std::string::npos) << fit.problem;
}

TEST(MemoryTrace, SoftmaxSavedBytesAreTracedExactlyAndAWrongDeclarationIsReported) {
  // One thread, as `check --threads 1`: more threads add per-thread buffers to the peak.
  const int threads = num_threads();
  set_num_threads(1);
  VariantSpec spec = VariantRegistry::instance().get("softmax");
  const MemoryTrace t = trace_memory(spec, Json::object(), 1);
  ASSERT_TRUE(t.saved.exact) << t.saved.problem;
  EXPECT_EQ(memory_formula(t.saved.pieces, false), "4*B*H*N^2 + 16*B*N*D");  // probabilities; q, k, v, merged heads
  EXPECT_TRUE(t.peak.exact || t.peak.approximate) << t.peak.problem;
  const std::string right = render_memory_trace(spec, t);
  EXPECT_NE(right.find("the declared activation_bytes agrees to the byte"), std::string::npos) << right;
  EXPECT_NE(right.find("c.activation_bytes = 4 * B * H * N * N + 16 * B * N * D;"), std::string::npos) << right;
  // Planted: the cost model forgets a quarter of the saved bytes.
  auto cost = spec.cost;
  spec.cost = [cost](const CostArgs& a) {
    Cost c = cost(a);
    c.activation_bytes *= 0.75;
    return c;
  };
  const std::string wrong = render_memory_trace(spec, trace_memory(spec, Json::object(), 1));
  EXPECT_NE(wrong.find("MISMATCH: the declared activation_bytes"), std::string::npos) << wrong;
  EXPECT_NE(wrong.find("at B=2 N=256 D=64 H=4 (a size check measures): declared 1966080, traced formula 2621440"),
            std::string::npos)
      << wrong;
  set_num_threads(threads);
}
