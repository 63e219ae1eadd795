// The generalised (DPLR) delta rule of RWKV-7: the chunked kernel against a naive double-precision
// recurrence written here from the definition, forward and gradients (the reference gradients are
// central differences of that recurrence in double, so the hand-written backward is checked against
// nothing it shares), at lengths that are not multiples of the chunk, several batches and heads;
// with w = 1, a = -beta k, b = k (and a per-channel decay: a = -beta alpha k) it is the delta rule
// of ab::delta_rule, outputs and gradients; the decode state = the forward.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "attnbench/kernels/delta_rule.hpp"
#include "attnbench/kernels/dplr_delta_rule.hpp"
#include "attnbench/ops.hpp"
#include "support/double_reference.hpp"
#include "support/random_tensors.hpp"

using namespace ab;
using ab::test::rel_err;

namespace {

struct Inputs {
  int64_t B, H, N, K, V;
  std::vector<double> q, k, v, a, b, g;  // [B, H, N, K] but v [B, H, N, V]
};

// RWKV-7-like inputs: kk of unit norm, a = -kk, b = kk * lr with lr in (0, 1), g in [-0.6, 0].
Inputs make_inputs(int64_t B, int64_t H, int64_t N, int64_t K, int64_t V, uint64_t seed = 3) {
  Inputs in{B, H, N, K, V, {}, {}, {}, {}, {}, {}};
  auto draw = [&](int64_t n, uint64_t key, float lo, float hi) {
    const Tensor t = test::uniform_tensor({n}, seed, key, lo, hi);
    return std::vector<double>(t.data(), t.data() + n);
  };
  const int64_t nk = B * H * N * K;
  in.q = draw(nk, 1, -1.f, 1.f);
  in.k = draw(nk, 2, -0.5f, 0.5f);
  in.v = draw(B * H * N * V, 3, -1.f, 1.f);
  std::vector<double> kk = draw(nk, 4, -1.f, 1.f), lr = draw(nk, 5, 0.f, 1.f);
  for (int64_t r = 0; r < B * H * N; ++r) {
    double n2 = 0;
    for (int64_t i = 0; i < K; ++i) n2 += kk[r * K + i] * kk[r * K + i];
    for (int64_t i = 0; i < K; ++i) kk[r * K + i] /= std::sqrt(n2);
  }
  in.a.resize(nk);
  in.b.resize(nk);
  for (int64_t i = 0; i < nk; ++i) {
    in.a[i] = -kk[i];
    in.b[i] = kk[i] * lr[i];
  }
  in.g = draw(nk, 6, -0.6f, 0.f);
  return in;
}

// S_t = diag(exp(g_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T, o_t = S_t^T q_t, from the definition.
std::vector<double> naive(const Inputs& in) {
  const int64_t K = in.K, V = in.V, N = in.N;
  std::vector<double> o(static_cast<size_t>(in.B * in.H * N * V), 0.0);
  std::vector<double> S(static_cast<size_t>(K * V)), aS(static_cast<size_t>(V));
  for (int64_t bh = 0; bh < in.B * in.H; ++bh) {
    std::fill(S.begin(), S.end(), 0.0);
    for (int64_t t = 0; t < N; ++t) {
      const int64_t r = (bh * N + t) * K;
      for (int64_t j = 0; j < V; ++j) {
        aS[j] = 0;
        for (int64_t i = 0; i < K; ++i) aS[j] += in.a[r + i] * S[i * V + j];
      }
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < V; ++j)
          S[i * V + j] = std::exp(in.g[r + i]) * S[i * V + j] + in.b[r + i] * aS[j] +
                         in.k[r + i] * in.v[(bh * N + t) * V + j];
      for (int64_t j = 0; j < V; ++j)
        for (int64_t i = 0; i < K; ++i) o[(bh * N + t) * V + j] += in.q[r + i] * S[i * V + j];
    }
  }
  return o;
}

Tensor to_tensor(const std::vector<double>& x, const Shape& s) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(x[i]);
  return t;
}

struct KernelRun {
  Tensor o;
  std::vector<Tensor> grads;  // q, k, v, a, b, g
};

KernelRun run_kernel(const Inputs& in, const Tensor& R, int64_t chunk) {
  const Shape ks{in.B, in.H, in.N, in.K}, vs{in.B, in.H, in.N, in.V};
  Var q(to_tensor(in.q, ks), true), k(to_tensor(in.k, ks), true), v(to_tensor(in.v, vs), true);
  Var a(to_tensor(in.a, ks), true), b(to_tensor(in.b, ks), true), g(to_tensor(in.g, ks), true);
  DplrDeltaRuleOptions opt;
  opt.chunk = chunk;
  Var o = dplr_delta_rule(q, k, v, a, b, g, opt);
  o.backward(R);
  return {o.value(), {q.grad(), k.grad(), v.grad(), a.grad(), b.grad(), g.grad()}};
}

// d<R, naive(in)>/d(every input) by central differences in double.
std::vector<std::vector<double>> reference_grads(Inputs in, const std::vector<double>& R) {
  auto loss = [&] {
    const std::vector<double> o = naive(in);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += R[i] * o[i];
    return s;
  };
  return test::central_differences({&in.q, &in.k, &in.v, &in.a, &in.b, &in.g}, loss);
}

double max_diff(const Tensor& x, const Tensor& y) {
  EXPECT_EQ(x.shape(), y.shape());
  double m = 0;
  for (int64_t i = 0; i < x.numel(); ++i) m = std::max(m, double(std::fabs(x[i] - y[i])));
  return m;
}

class DplrChunked : public ::testing::TestWithParam<int64_t> {};

// N = 37: every chunk length leaves a partial last chunk (1 and 64: one position per chunk, one
// chunk for all); B = 2, H = 2.
TEST_P(DplrChunked, MatchesNaiveRecurrenceForwardAndGradients) {
  const int64_t B = 2, H = 2, N = 37, K = 8, V = 6;
  const Inputs in = make_inputs(B, H, N, K, V);
  const Tensor Rt = test::uniform_tensor({B, H, N, V}, 3, 9, -1.f, 1.f);
  const std::vector<double> R(Rt.data(), Rt.data() + Rt.numel());
  const KernelRun run = run_kernel(in, Rt, GetParam());
  EXPECT_LT(rel_err(run.o, naive(in)), 2e-6) << "forward";
  const auto ref = reference_grads(in, R);
  const char* names[] = {"q", "k", "v", "a", "b", "g"};
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_LT(rel_err(run.grads[i], ref[i]), 2e-5) << "d" << names[i];
}

INSTANTIATE_TEST_SUITE_P(Chunks, DplrChunked, ::testing::Values(16, 5, 1, 64),
                         [](const ::testing::TestParamInfo<int64_t>& i) { return "chunk" + std::to_string(i.param); });

// Strong decays (g down to -30 per step): every exponent stays <= 0, nothing overflows.
TEST(DplrDeltaRule, StrongDecaysStayFinite) {
  const int64_t B = 1, H = 2, N = 40, K = 8, V = 4;
  Inputs in = make_inputs(B, H, N, K, V);
  for (double& g : in.g) g *= 50.0;
  const Tensor Rt = test::uniform_tensor({B, H, N, V}, 3, 9, -1.f, 1.f);
  const KernelRun run = run_kernel(in, Rt, 16);
  EXPECT_LT(rel_err(run.o, naive(in)), 2e-6);
  for (const Tensor& t : run.grads)
    for (int64_t i = 0; i < t.numel(); ++i) ASSERT_TRUE(std::isfinite(t[i]));
}

// With w = alpha (per key channel), a = -beta (alpha o k), b = k and the written key beta k, the
// DPLR update diag(alpha) S - beta k (alpha o k)^T S + beta k v^T is Kimi Delta Attention's
// (I - beta k k^T) diag(alpha) S + beta k v^T; alpha = 1 is DeltaNet. The DPLR inputs are built
// from (k, beta, g) with autograd ops, so the gradients of both sides are the same function's.
TEST(DplrDeltaRule, SpecialCaseIsTheDeltaRule) {
  const int64_t B = 2, H = 2, N = 29, K = 8, V = 6;
  for (bool gated : {false, true}) {
    const Shape ks{B, H, N, K};
    const Tensor kn = test::uniform_tensor(ks, 5, 2, -1.f, 1.f);
    Var q(test::uniform_tensor(ks, 5, 1, -0.5f, 0.5f), true), v(test::uniform_tensor({B, H, N, V}, 5, 3), true);
    Var beta(test::uniform_tensor({B, H, N}, 5, 4, 0.05f, 0.95f), true);
    Var g(gated ? test::uniform_tensor(ks, 5, 6, -0.7f, 0.f) : Tensor::zeros(ks), true);
    Var kraw(kn, true);
    const Tensor R = test::uniform_tensor({B, H, N, V}, 5, 9);
    auto grads = [&](const std::vector<Var*>& xs) {
      std::vector<Tensor> out;
      for (Var* x : xs) {
        out.push_back(x->grad().defined() ? x->grad().clone() : Tensor());
        x->zero_grad();
      }
      return out;
    };
    const std::vector<Var*> leaves{&q, &kraw, &v, &beta, &g};
    Var k = l2_normalize(kraw);
    DeltaRuleOptions dopt;
    dopt.chunk = 8;
    Var od = delta_rule(q, k, v, beta, gated ? g : Var(), dopt);
    od.backward(R);
    const std::vector<Tensor> gd = grads(leaves);

    k = l2_normalize(kraw);
    const Var b4 = reshape(beta, {B, H, N, 1});
    const Var a = scale(mul(mul(b4, exp(g)), k), -1.f);
    DplrDeltaRuleOptions opt;
    opt.chunk = 6;
    Var op = dplr_delta_rule(q, mul(b4, k), v, a, k, g, opt);
    op.backward(R);
    const std::vector<Tensor> gp = grads(leaves);
    EXPECT_LT(max_diff(od.value(), op.value()), 1e-5) << (gated ? "kda" : "deltanet");
    const char* names[] = {"q", "k", "v", "beta", "g"};
    for (size_t i = 0; i < gd.size(); ++i) {
      if (!gated && i == 4) continue;  // DeltaNet has no g
      EXPECT_LT(max_diff(gd[i], gp[i]), 1e-4) << names[i] << (gated ? " kda" : " deltanet");
    }
  }
}

// The anti-causal scan (reverse) is the causal scan of the time-reversed inputs, time-reversed:
// outputs and gradients.
TEST(DplrDeltaRule, ReverseIsTheFlippedCausalScan) {
  const int64_t B = 2, H = 2, N = 23, K = 8, V = 6;
  const Inputs in = make_inputs(B, H, N, K, V);
  auto flip = [&](const std::vector<double>& x, int64_t w) {
    std::vector<double> y(x.size());
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < w; ++i) y[(bh * N + n) * w + i] = x[(bh * N + N - 1 - n) * w + i];
    return y;
  };
  Inputs fl = in;
  for (auto* x : {&fl.q, &fl.k, &fl.a, &fl.b, &fl.g}) *x = flip(*x, K);
  fl.v = flip(in.v, V);
  const Tensor Rt = test::uniform_tensor({B, H, N, V}, 3, 9, -1.f, 1.f);
  const std::vector<double> R(Rt.data(), Rt.data() + Rt.numel());
  const KernelRun causal = run_kernel(fl, to_tensor(flip(R, V), {B, H, N, V}), 5);
  const Shape ks{B, H, N, K}, vs{B, H, N, V};
  Var q(to_tensor(in.q, ks), true), k(to_tensor(in.k, ks), true), v(to_tensor(in.v, vs), true);
  Var a(to_tensor(in.a, ks), true), b(to_tensor(in.b, ks), true), g(to_tensor(in.g, ks), true);
  DplrDeltaRuleOptions opt;
  opt.chunk = 5;
  opt.reverse = true;
  Var o = dplr_delta_rule(q, k, v, a, b, g, opt);
  o.backward(Rt);
  auto vecd = [](const Tensor& t) { return std::vector<double>(t.data(), t.data() + t.numel()); };
  EXPECT_LT(rel_err(o.value(), flip(vecd(causal.o), V)), 1e-6);
  const Var* xs[] = {&q, &k, &v, &a, &b, &g};
  for (int i = 0; i < 6; ++i)
    EXPECT_LT(rel_err(xs[i]->grad(), flip(vecd(causal.grads[i]), i == 2 ? V : K)), 1e-6) << i;
}

// Token-by-token decoding with the carried state reproduces the forward.
TEST(DplrDeltaRule, DecodeStateMatchesForward) {
  const int64_t B = 2, H = 3, N = 21, K = 8, V = 5;
  const Inputs in = make_inputs(B, H, N, K, V);
  const Shape ks{B, H, N, K};
  const Tensor q = to_tensor(in.q, ks), k = to_tensor(in.k, ks), v = to_tensor(in.v, {B, H, N, V});
  const Tensor a = to_tensor(in.a, ks), b = to_tensor(in.b, ks), g = to_tensor(in.g, ks);
  NoGrad ng;
  DplrDeltaRuleOptions opt;
  opt.chunk = 8;
  const Tensor full = dplr_delta_rule(Var(q), Var(k), Var(v), Var(a), Var(b), Var(g), opt).value();
  DplrDeltaRuleState st(B, H, K, V);
  EXPECT_EQ(st.bytes(), B * H * K * V * 4);
  const auto at = test::position;
  for (int64_t t = 0; t < N; ++t) {
    const Tensor o = st.step(at(q, t), at(k, t), at(v, t), at(a, t), at(b, t), at(g, t));
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t j = 0; j < V; ++j) EXPECT_NEAR(o[bh * V + j], full[(bh * N + t) * V + j], 1e-5) << t;
  }
}

TEST(DplrDeltaRule, RejectsBadShapes) {
  Var q(Tensor::zeros({1, 2, 5, 3})), v(Tensor::zeros({1, 2, 5, 2})), bad(Tensor::zeros({1, 2, 5, 2}));
  EXPECT_THROW(dplr_delta_rule(q, q, v, q, q, bad), std::invalid_argument);
  EXPECT_THROW(dplr_delta_rule(q, q, Var(Tensor::zeros({1, 2, 4, 2})), q, q, q), std::invalid_argument);
  DplrDeltaRuleOptions opt;
  opt.chunk = 0;
  EXPECT_THROW(dplr_delta_rule(q, q, v, q, q, q, opt), std::invalid_argument);
}

}  // namespace
