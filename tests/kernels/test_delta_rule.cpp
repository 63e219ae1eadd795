// The delta rule (deltanet, gated_deltanet): the chunked WY kernel against a naive double-precision
// recurrence written here from the definition, forward and gradients (the reference gradients are
// central differences of that recurrence in double, so no hand-derived backward is trusted), at
// lengths that are not multiples of the chunk, causal and anti-causal, with several batches and
// heads; the ungated path = the gated one with g = 0; the decode state = the forward; the two
// variants' conformance suites.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/delta_rule.hpp"
#include "support/mixer_runs.hpp"
#include "support/double_reference.hpp"
#include "support/random_tensors.hpp"
#include "support/variant_checks.hpp"

using namespace ab;
using ab::test::rel_err;

namespace {

struct Inputs {
  int64_t B, H, N, K, V;
  std::vector<double> q, k, v, beta, g;  // [B, H, N, K] x2, [B, H, N, V], [B, H, N], [B, H, N, gw] (g empty: ungated)
  int64_t gw = 1;                        // K: a decay per key dimension (KDA)
};

// Random inputs as the layers produce them: q, k of unit norm, beta in (0, 1), g in [g_min, 0].
Inputs make_inputs(int64_t B, int64_t H, int64_t N, int64_t K, int64_t V, bool gated, uint64_t seed = 3,
                   bool channel = false, float g_min = -0.7f) {
  Inputs in{B, H, N, K, V, {}, {}, {}, {}, {}, channel ? K : 1};
  auto draw = [&](int64_t n, uint64_t key, float lo, float hi) {
    const Tensor t = test::uniform_tensor({n}, seed, key, lo, hi);
    return std::vector<double>(t.data(), t.data() + n);
  };
  in.q = draw(B * H * N * K, 1, -1.f, 1.f);
  in.k = draw(B * H * N * K, 2, -1.f, 1.f);
  for (auto* x : {&in.q, &in.k})
    for (int64_t r = 0; r < B * H * N; ++r) {
      double n2 = 0;
      for (int64_t i = 0; i < K; ++i) n2 += (*x)[r * K + i] * (*x)[r * K + i];
      for (int64_t i = 0; i < K; ++i) (*x)[r * K + i] /= std::sqrt(n2);
    }
  in.v = draw(B * H * N * V, 3, -1.f, 1.f);
  in.beta = draw(B * H * N, 4, 0.05f, 0.95f);
  if (gated) in.g = draw(B * H * N * in.gw, 5, g_min, 0.f);
  return in;
}

// o_t = S_t^T q_t, S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, straight from the definition.
std::vector<double> naive(const Inputs& in, bool reverse) {
  const int64_t K = in.K, V = in.V, N = in.N;
  std::vector<double> o(static_cast<size_t>(in.B * in.H * N * V), 0.0);
  std::vector<double> S(static_cast<size_t>(K * V)), kS(static_cast<size_t>(V));
  for (int64_t bh = 0; bh < in.B * in.H; ++bh) {
    std::fill(S.begin(), S.end(), 0.0);
    for (int64_t step = 0; step < N; ++step) {
      const int64_t t = reverse ? N - 1 - step : step;
      const double* k = &in.k[(bh * N + t) * K];
      const double* q = &in.q[(bh * N + t) * K];
      const double* v = &in.v[(bh * N + t) * V];
      const double b = in.beta[bh * N + t];
      auto a = [&](int64_t i) { return in.g.empty() ? 1.0 : std::exp(in.g[(bh * N + t) * in.gw + (in.gw > 1 ? i : 0)]); };
      // S = diag(a) S (equal to a (I - b k k^T) S for a scalar a), then the delta update
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < V; ++j) S[i * V + j] *= a(i);
      for (int64_t j = 0; j < V; ++j) {  // kS = k^T S
        kS[j] = 0;
        for (int64_t i = 0; i < K; ++i) kS[j] += k[i] * S[i * V + j];
      }
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < V; ++j) S[i * V + j] += b * k[i] * (v[j] - kS[j]);
      for (int64_t j = 0; j < V; ++j)
        for (int64_t i = 0; i < K; ++i) o[(bh * N + t) * V + j] += q[i] * S[i * V + j];
    }
  }
  return o;
}

Tensor to_tensor(const std::vector<double>& x, const Shape& s) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(x[i]);
  return t;
}

// max |x - y| of two runs' tensors of one shape
double diff(const Tensor& x, const Tensor& y) { return test::deviation(x, y).worst; }

struct KernelRun {
  Tensor o;
  std::vector<Tensor> grads;  // q, k, v, beta, (g)
};

// The kernel on the inputs, backward from the upstream gradient R [B, H, N, V].
KernelRun run_kernel(const Inputs& in, const Tensor& R, int64_t chunk, bool reverse) {
  Var q(to_tensor(in.q, {in.B, in.H, in.N, in.K}), true), k(to_tensor(in.k, {in.B, in.H, in.N, in.K}), true);
  Var v(to_tensor(in.v, {in.B, in.H, in.N, in.V}), true), beta(to_tensor(in.beta, {in.B, in.H, in.N}), true);
  const Shape gs = in.gw > 1 ? Shape{in.B, in.H, in.N, in.gw} : Shape{in.B, in.H, in.N};
  Var g = in.g.empty() ? Var() : Var(to_tensor(in.g, gs), true);
  DeltaRuleOptions opt;
  opt.chunk = chunk;
  opt.reverse = reverse;
  Var o = delta_rule(q, k, v, beta, g, opt);
  o.backward(R);
  KernelRun r{o.value(), {q.grad(), k.grad(), v.grad(), beta.grad()}};
  if (g.defined()) r.grads.push_back(g.grad());
  return r;
}

// d<R, naive(in)>/d(every input) by central differences in double.
std::vector<std::vector<double>> reference_grads(Inputs in, const std::vector<double>& R, bool reverse) {
  auto loss = [&] {
    const std::vector<double> o = naive(in, reverse);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += R[i] * o[i];
    return s;
  };
  std::vector<std::vector<double>*> xs{&in.q, &in.k, &in.v, &in.beta};
  if (!in.g.empty()) xs.push_back(&in.g);
  return test::central_differences(xs, loss);
}

struct Case {
  bool gated, reverse;
  int64_t chunk;
  bool channel = false;  // KDA's decay per key dimension
  float g_min = -0.7f;   // log decays drawn from [g_min, 0]
};

class DeltaRuleChunked : public ::testing::TestWithParam<Case> {};

// N = 37 with chunks of 16 (and 5, 1, 64): the last chunk partial; B = 2, H = 3. KDA's kernel
// works in sub-blocks of 16 rows inside a chunk: chunks of 37 (N = 37 at chunk 64: 16 + 16 + 5)
// and 20 (16 + 4) end in a partial one; with strong decays (g in [-4, 0]: a sub-block of 16 spans
// more than exp(40) in about a third of them; g in [-12, 0]: in all but the short ones) the kernel
// sums those sub-blocks' own pairs one by one.
TEST_P(DeltaRuleChunked, MatchesNaiveRecurrenceForwardAndGradients) {
  const Case c = GetParam();
  const int64_t B = 2, H = 3, N = 37, K = 8, V = 6;
  const Inputs in = make_inputs(B, H, N, K, V, c.gated, 3, c.channel, c.g_min);
  const Tensor Rt = test::uniform_tensor({B, H, N, V}, 3, 9, -1.f, 1.f);
  const std::vector<double> R(Rt.data(), Rt.data() + Rt.numel());
  const KernelRun run = run_kernel(in, Rt, c.chunk, c.reverse);
  EXPECT_LT(rel_err(run.o, naive(in, c.reverse)), 2e-6) << "forward";
  const auto ref = reference_grads(in, R, c.reverse);
  const char* names[] = {"q", "k", "v", "beta", "g"};
  ASSERT_EQ(run.grads.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_LT(rel_err(run.grads[i], ref[i]), 2e-5) << "d" << names[i];
}

INSTANTIATE_TEST_SUITE_P(Chunks, DeltaRuleChunked,
                         ::testing::Values(Case{false, false, 16}, Case{true, false, 16}, Case{false, true, 16},
                                           Case{true, true, 16}, Case{false, false, 5}, Case{true, false, 5},
                                           Case{true, false, 1}, Case{true, false, 64}, Case{true, false, 16, true},
                                           Case{true, true, 16, true}, Case{true, false, 5, true},
                                           Case{true, false, 1, true}, Case{true, false, 64, true},
                                           Case{true, false, 20, true}, Case{true, true, 64, true},
                                           Case{true, false, 64, true, -4.f}, Case{true, true, 20, true, -4.f},
                                           Case{true, false, 64, true, -12.f}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return std::string(i.param.channel ? "kda" : i.param.gated ? "gated" : "plain") +
                                  (i.param.reverse ? "_reverse" : "") + "_chunk" + std::to_string(i.param.chunk) +
                                  (i.param.g_min < -1 ? "_strong" + std::to_string(int(-i.param.g_min)) : "");
                         });

// Gated DeltaNet with alpha = 1 (g = 0) is DeltaNet: the gated path with zero gates gives the
// ungated path's output and gradients.
TEST(DeltaRule, GatedWithUnitDecayIsDeltaNet) {
  const int64_t B = 2, H = 2, N = 29, K = 8, V = 8;
  Inputs plain = make_inputs(B, H, N, K, V, false), gated = plain;
  gated.g.assign(static_cast<size_t>(B * H * N), 0.0);
  const Tensor R = test::uniform_tensor({B, H, N, V}, 3, 9, -1.f, 1.f);
  const KernelRun a = run_kernel(plain, R, 8, false), b = run_kernel(gated, R, 8, false);
  EXPECT_LT(diff(a.o, b.o), 1e-6);
  for (size_t i = 0; i < a.grads.size(); ++i) EXPECT_LT(diff(a.grads[i], b.grads[i]), 1e-5) << i;
}

// KDA with a decay equal across the key dimensions is Gated DeltaNet: the per-dimension path with
// g[.., j] = g for every j gives the per-head path's output and gradients (dg summed over j).
TEST(DeltaRule, ChannelDecayEqualAcrossDimensionsIsGatedDeltaNet) {
  const int64_t B = 2, H = 2, N = 29, K = 8, V = 6;
  Inputs gated = make_inputs(B, H, N, K, V, true), kda = gated;
  kda.gw = K;
  kda.g.clear();
  for (double g : gated.g) kda.g.insert(kda.g.end(), static_cast<size_t>(K), g);
  const Tensor R = test::uniform_tensor({B, H, N, V}, 3, 9, -1.f, 1.f);
  const KernelRun a = run_kernel(gated, R, 8, false), b = run_kernel(kda, R, 8, false);
  EXPECT_LT(diff(a.o, b.o), 1e-5);
  for (size_t i = 0; i < 4; ++i) EXPECT_LT(diff(a.grads[i], b.grads[i]), 1e-4) << i;
  Tensor dg_sum = Tensor::zeros({B, H, N});
  for (int64_t r = 0; r < B * H * N; ++r)
    for (int64_t j = 0; j < K; ++j) dg_sum[r] += b.grads[4][r * K + j];
  EXPECT_LT(diff(a.grads[4], dg_sum), 1e-4);
}

// Token-by-token decoding with the carried state reproduces the causal forward.
TEST(DeltaRule, DecodeStateMatchesForward) {
  for (int mode : {0, 1, 2}) {  // plain, gated, per-key-dimension decay
    const bool gated = mode > 0;
    const int64_t B = 2, H = 3, N = 21, K = 8, V = 5;
    const Inputs in = make_inputs(B, H, N, K, V, gated, 3, mode == 2);
    const Tensor q = to_tensor(in.q, {B, H, N, K}), k = to_tensor(in.k, {B, H, N, K});
    const Tensor v = to_tensor(in.v, {B, H, N, V}), beta = to_tensor(in.beta, {B, H, N});
    const Tensor g = gated ? to_tensor(in.g, mode == 2 ? Shape{B, H, N, K} : Shape{B, H, N}) : Tensor();
    NoGrad ng;
    DeltaRuleOptions opt;
    opt.chunk = 8;
    const Tensor full = delta_rule(Var(q), Var(k), Var(v), Var(beta), gated ? Var(g) : Var(), opt).value();
    DeltaRuleState st(B, H, K, V);
    EXPECT_EQ(st.bytes(), B * H * K * V * 4);
    const auto at = test::position;
    for (int64_t t = 0; t < N; ++t) {
      const Tensor o = st.step(at(q, t), at(k, t), at(v, t), at(beta, t), gated ? at(g, t) : Tensor());
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t j = 0; j < V; ++j) EXPECT_NEAR(o[bh * V + j], full[(bh * N + t) * V + j], 1e-5) << t;
    }
  }
}

TEST(DeltaRule, RejectsBadShapes) {
  Var q(Tensor::zeros({1, 2, 5, 3})), v(Tensor::zeros({1, 2, 5, 2}));
  EXPECT_THROW(delta_rule(q, q, v, Var(Tensor::zeros({1, 2, 4})), Var()), std::invalid_argument);
  EXPECT_THROW(delta_rule(q, q, v, Var(Tensor::zeros({1, 2, 5})), Var(Tensor::zeros({1, 2, 5, 2}))),
               std::invalid_argument);
}

// Every conformance check (shape, causality, decode and its state, gradients, memory model).
TEST(DeltaRuleVariants, ConformanceSuitePasses) {
  const std::vector<std::pair<std::string, Json>> cases = {
      {"deltanet", Json::object()},
      {"deltanet", Json{{"chunk", 64}, {"expand_v", 0.5}, {"conv_size", 1}}},
      {"gated_deltanet", Json::object()},
      {"gated_deltanet", Json{{"chunk", 64}, {"expand_v", 1.0}}},
  };
  test::expect_checks_pass(cases);
}

}  // namespace
