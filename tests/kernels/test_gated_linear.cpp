// Gated linear attention (RetNet / GLA / Mamba-2 recurrence): the recurrent, parallel and chunked
// forms against a naive double-precision recurrence written here from the definition, their
// gradients against each other and against finite differences, the reverse (anti-causal) scan,
// heads sharing q and k, the decode state, and the three variants' conformance suites.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "attnbench/check.hpp"
#include "attnbench/kernels/gated_linear_attention.hpp"
#include "support/random_tensors.hpp"
#include "support/variant_checks.hpp"
#include "support/double_reference.hpp"

using namespace ab;

namespace {

Tensor rand_t(const Shape& s, uint64_t key, float lo = -1.f, float hi = 1.f) {
  return test::uniform_tensor(s, 11, key, lo, hi);
}

// o_t = S_t^T q_t, S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, in double, straight from the definition.
// q: [B, Hq, N, K], k: [B, Hk, N, K], v: [B, H, N, V], g: [B, H, N] or [B, H, N, K].
Tensor naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, bool reverse) {
  const int64_t B = v.dim(0), H = v.dim(1), N = v.dim(2), V = v.dim(3), K = q.dim(3);
  const int64_t Hq = q.dim(1), Hk = k.dim(1);
  const bool vec = g.rank() == 4;
  Tensor o = Tensor::zeros(v.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> S(static_cast<size_t>(K * V), 0.0);
      for (int64_t step = 0; step < N; ++step) {
        const int64_t t = reverse ? N - 1 - step : step;
        for (int64_t i = 0; i < K; ++i) {
          const double lg = vec ? g[((b * H + h) * N + t) * K + i] : g[(b * H + h) * N + t];
          const double kk = k[((b * Hk + (Hk == 1 ? 0 : h)) * N + t) * K + i];
          for (int64_t j = 0; j < V; ++j)
            S[i * V + j] = std::exp(lg) * S[i * V + j] + kk * v[((b * H + h) * N + t) * V + j];
        }
        for (int64_t j = 0; j < V; ++j) {
          double acc = 0;
          for (int64_t i = 0; i < K; ++i) acc += q[((b * Hq + (Hq == 1 ? 0 : h)) * N + t) * K + i] * S[i * V + j];
          o[((b * H + h) * N + t) * V + j] = static_cast<float>(acc);
        }
      }
    }
  return o;
}

using test::max_rel_diff;

struct Inputs {
  Var q, k, v, g;
};

// Decays: scalar [B, H, N] or per key dim [B, H, N, K], log alpha in [-lmax, 0).
Inputs make_inputs(int64_t B, int64_t H, int64_t N, int64_t K, int64_t V, bool vec, int64_t Hqk = 0,
                   float lmax = 0.7f) {
  const int64_t Hs = Hqk ? Hqk : H;
  Inputs in;
  in.q = Var(rand_t({B, Hs, N, K}, 1), true);
  in.k = Var(rand_t({B, Hs, N, K}, 2), true);
  in.v = Var(rand_t({B, H, N, V}, 3), true);
  in.g = Var(rand_t(vec ? Shape{B, H, N, K} : Shape{B, H, N}, 4, -lmax, -0.01f), true);
  return in;
}

GatedLinearAttentionOptions form_opt(GlaForm f, int64_t chunk, bool reverse = false) {
  GatedLinearAttentionOptions o;
  o.form = f;
  o.chunk = chunk;
  o.reverse = reverse;
  return o;
}

// (vector decay, N, chunk, reverse, shared q/k heads)
class GatedForms : public ::testing::TestWithParam<std::tuple<bool, int, int, bool, bool>> {};

TEST_P(GatedForms, ThreeFormsMatchNaiveForwardAndAgreeOnGradients) {
  const auto [vec, N, chunk, reverse, shared] = GetParam();
  const int64_t B = 2, H = 3, K = 5, V = 4;
  Inputs in = make_inputs(B, H, N, K, V, vec, shared ? 1 : 0);
  const Tensor ref = naive(in.q.value(), in.k.value(), in.v.value(), in.g.value(), reverse);
  const Tensor w = rand_t({B, H, N, V}, 9);  // loss = sum(w * o)
  std::vector<std::vector<Tensor>> grads;
  for (GlaForm f : {GlaForm::recurrent, GlaForm::parallel, GlaForm::chunked}) {
    for (Var* x : {&in.q, &in.k, &in.v, &in.g}) x->zero_grad();
    Var o = gated_linear_attention(in.q, in.k, in.v, in.g, form_opt(f, chunk, reverse));
    EXPECT_LT(max_rel_diff(o.value(), ref), 2e-5) << "form " << int(f);
    o.backward(w);
    grads.push_back({in.q.grad().clone(), in.k.grad().clone(), in.v.grad().clone(), in.g.grad().clone()});
  }
  const char* names[] = {"dq", "dk", "dv", "dlog_alpha"};
  for (size_t f = 1; f < grads.size(); ++f)
    for (size_t i = 0; i < 4; ++i) EXPECT_LT(max_rel_diff(grads[f][i], grads[0][i]), 1e-4) << names[i] << " form " << f;
}

INSTANTIATE_TEST_SUITE_P(Decays, GatedForms,
                         ::testing::Values(std::make_tuple(false, 37, 8, false, false),  // N not a multiple of C
                                           std::make_tuple(true, 37, 8, false, false),
                                           std::make_tuple(false, 32, 8, false, false),  // exact multiple
                                           std::make_tuple(true, 32, 16, false, false),
                                           std::make_tuple(true, 20, 64, false, false),  // one partial chunk
                                           std::make_tuple(true, 29, 7, true, false),    // anti-causal
                                           std::make_tuple(false, 29, 6, true, true),    // shared q, k heads
                                           std::make_tuple(true, 23, 4, false, true),
                                           // chunks longer than the 16-position sub-blocks of the
                                           // per-key-dimension decays, the last chunk partial
                                           std::make_tuple(true, 70, 48, false, false),
                                           std::make_tuple(true, 45, 40, true, true),
                                           std::make_tuple(false, 70, 48, false, false),
                                           // shared q, k with scalar decays: the batched SSD path
                                           // (padded last chunk, exact multiple, one chunk, long chunks)
                                           std::make_tuple(false, 37, 8, false, true),
                                           std::make_tuple(false, 32, 8, false, true),
                                           std::make_tuple(false, 20, 64, false, true),
                                           std::make_tuple(false, 70, 48, false, true),
                                           std::make_tuple(false, 45, 16, true, true)));

// Analytic gradients of every input (including the decays) against central differences, for the
// chunked form (N = 11, chunk 4 leaves a partial chunk) and the recurrent form.
TEST(GatedLinearAttention, GradientsMatchFiniteDifferences) {
  for (bool vec : {false, true})
    for (GlaForm f : {GlaForm::chunked, GlaForm::recurrent, GlaForm::parallel}) {
      Inputs in = make_inputs(1, 2, 11, 3, 2, vec);
      const auto opt = form_opt(f, 4);
      GradCheckOptions gopt;
      gopt.max_elements = 40;
      const GradCheckReport rep = grad_check(
          [&] { return gated_linear_attention(in.q, in.k, in.v, in.g, opt); }, {in.q, in.k, in.v, in.g}, gopt);
      EXPECT_TRUE(rep.passed) << "vec " << vec << " form " << int(f) << ": " << rep.detail;
    }
}

// The shared-q/k scalar-decay (SSD) path: 3 heads on one q and k, N = 11 with chunk 4 (padded).
TEST(GatedLinearAttention, SharedKeyGradientsMatchFiniteDifferences) {
  for (bool reverse : {false, true}) {
    Inputs in = make_inputs(2, 3, 11, 3, 2, false, 1);
    GradCheckOptions gopt;
    gopt.max_elements = 40;
    const GradCheckReport rep = grad_check(
        [&] { return gated_linear_attention(in.q, in.k, in.v, in.g, form_opt(GlaForm::chunked, 4, reverse)); },
        {in.q, in.k, in.v, in.g}, gopt);
    EXPECT_TRUE(rep.passed) << "reverse " << reverse << ": " << rep.detail;
  }
}

// Mamba-2's shapes on the SSD path (64 heads of 16 channels on one q, k of 32, chunk 64, strong
// and weak decays, a partial last chunk) against the recurrent form, forward and gradients.
TEST(GatedLinearAttention, SharedKeyPathMatchesRecurrenceAtMamba2Shapes) {
  const int64_t B = 1, H = 64, N = 150, K = 32, V = 16;
  Inputs in = make_inputs(B, H, N, K, V, false, 1, 1.5f);
  const Tensor w = rand_t({B, H, N, V}, 19);
  std::vector<std::vector<Tensor>> grads;
  for (GlaForm f : {GlaForm::recurrent, GlaForm::chunked}) {
    for (Var* x : {&in.q, &in.k, &in.v, &in.g}) x->zero_grad();
    Var o = gated_linear_attention(in.q, in.k, in.v, in.g, form_opt(f, 64));
    o.backward(w);
    grads.push_back({o.value().clone(), in.q.grad().clone(), in.k.grad().clone(), in.v.grad().clone(),
                     in.g.grad().clone()});
  }
  const char* names[] = {"o", "dq", "dk", "dv", "dlog_alpha"};
  for (size_t i = 0; i < 5; ++i) EXPECT_LT(max_rel_diff(grads[1][i], grads[0][i]), 1e-4) << names[i];
}

// The same with chunks of 32 over N = 40 (two sub-blocks in the first chunk, a partial second chunk).
TEST(GatedLinearAttention, SubBlockGradientsMatchFiniteDifferences) {
  Inputs in = make_inputs(1, 1, 40, 3, 2, true);
  GradCheckOptions gopt;
  gopt.max_elements = 60;
  const GradCheckReport rep = grad_check(
      [&] { return gated_linear_attention(in.q, in.k, in.v, in.g, form_opt(GlaForm::chunked, 32)); },
      {in.q, in.k, in.v, in.g}, gopt);
  EXPECT_TRUE(rep.passed) << rep.detail;
}

// Strong decays over a long sequence: the chunked form stays finite and equal to the recurrence
// (a form that divided by cumulative decays exp(G) would overflow here).
TEST(GatedLinearAttention, StrongDecaysStayFinite) {
  for (bool vec : {false, true}) {
    Inputs in = make_inputs(1, 2, 300, 4, 3, vec, 0, 6.0f);
    const Tensor ref = naive(in.q.value(), in.k.value(), in.v.value(), in.g.value(), false);
    Var o = gated_linear_attention(in.q, in.k, in.v, in.g, form_opt(GlaForm::chunked, 64));
    EXPECT_LT(max_rel_diff(o.value(), ref), 2e-5);
    o.backward(Tensor::full(o.shape(), 1.f));
    for (const Var* x : {&in.q, &in.k, &in.v, &in.g})
      for (int64_t i = 0; i < x->grad().numel(); ++i) ASSERT_TRUE(std::isfinite(x->grad()[i]));
  }
}

// Token-by-token decoding with the carried state reproduces the causal forward.
TEST(GatedLinearAttention, DecodeStateMatchesForward) {
  for (bool vec : {false, true})
    for (bool shared : {false, true}) {
      const int64_t B = 2, H = 3, N = 9, K = 4, V = 5;
      Inputs in = make_inputs(B, H, N, K, V, vec, shared ? 1 : 0);
      NoGrad ng;
      const Tensor full = gated_linear_attention(in.q, in.k, in.v, in.g).value();
      GatedLinearState st(B, H, K, V);
      EXPECT_EQ(st.bytes(), B * H * K * V * 4);
      const auto at = test::position;
      for (int64_t t = 0; t < N; ++t) {
        const Tensor o = st.step(at(in.q.value(), t), at(in.k.value(), t), at(in.v.value(), t), at(in.g.value(), t));
        for (int64_t bh = 0; bh < B * H; ++bh)
          for (int64_t j = 0; j < V; ++j) EXPECT_NEAR(o[bh * V + j], full[(bh * N + t) * V + j], 1e-5);
      }
    }
}

// The gate nonlinearities against their definitions (including large |x|) and finite differences.
TEST(GatedLinearAttention, GateNonlinearities) {
  const Tensor x = Tensor::from({6}, {-60.f, -3.f, -0.2f, 0.f, 1.5f, 40.f});
  NoGrad ng;
  const Tensor ls = log_sigmoid(Var(x), 0.25f).value(), sp = softplus(Var(x)).value();
  for (int64_t i = 0; i < 6; ++i) {
    const double v = x[i];
    const double ref_ls = v < 0 ? v - std::log1p(std::exp(v)) : -std::log1p(std::exp(-v));
    EXPECT_NEAR(ls[i], 0.25 * ref_ls, 1e-6 * std::max(1.0, std::fabs(ref_ls)));
    const double ref_sp = v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v));
    EXPECT_NEAR(sp[i], ref_sp, 1e-6 * std::max(1.0, ref_sp));
  }
}

TEST(GatedLinearAttention, GateNonlinearityGradients) {
  Var x(rand_t({3, 7}, 31, -4.f, 4.f), true);
  EXPECT_TRUE(grad_check([&] { return log_sigmoid(x, 1.f / 16); }, {x}).passed);
  EXPECT_TRUE(grad_check([&] { return softplus(x); }, {x}).passed);
}

TEST(GatedLinearAttention, RejectsBadShapes) {
  Inputs in = make_inputs(1, 2, 5, 3, 2, false);
  Var bad(Tensor::zeros({1, 2, 4}), false);
  EXPECT_THROW(gated_linear_attention(in.q, in.k, in.v, bad), std::invalid_argument);
}

// The variants' three forms give the same output and the same gradients of the input and of every
// parameter (N = 37 with chunk 8: a partial last chunk), causal and bidirectional.
TEST(GatedLinearVariants, FormsAgreeInsideTheVariants) {
  const int64_t B = 2, N = 37, D = 16, H = 2;
  const Tensor x = rand_t({B, N, D}, 21);
  const Tensor w = rand_t({B, N, D}, 22);
  for (const std::string name : {"retnet", "gla", "mamba2"})
    for (bool causal : {true, false}) {
      const VariantSpec& spec = VariantRegistry::instance().get(name);
      std::vector<std::vector<Tensor>> results;  // output, dx, parameter gradients
      for (const char* form : {"recurrent", "parallel", "chunked"}) {
        Json given{{"form", form}, {"chunk", 8}};
        if (name == "mamba2") given["headdim"] = 8;
        const Json params = resolve_params(spec.params, given, name);
        auto mixer = spec.make(MixerConfig{D, H, N, 0, 5, params});
        MixerContext ctx;
        ctx.causal = causal;
        Var xv(x.clone(), true);
        Var y = mixer->forward(xv, ctx);
        y.backward(w);
        std::vector<Tensor> r{y.value().clone(), xv.grad().clone()};
        for (auto& [pn, pv] : mixer->parameters()) r.push_back(pv.grad().clone());
        results.push_back(std::move(r));
      }
      for (size_t f = 1; f < results.size(); ++f)
        for (size_t i = 0; i < results[0].size(); ++i)
          EXPECT_LT(max_rel_diff(results[f][i], results[0][i]), 1e-4)
              << name << (causal ? " causal" : " bidirectional") << " form " << f << " tensor " << i;
    }
}

// Every conformance check (shape, causality, decode and its state, gradients, memory model) on the
// three variants, with each of RetNet's forms and a few other settings.
TEST(GatedLinearVariants, ConformanceSuitePasses) {
  const std::vector<std::pair<std::string, Json>> cases = {
      {"retnet", Json::object()},
      {"retnet", Json{{"form", "parallel"}}},
      {"retnet", Json{{"form", "recurrent"}}},
      {"gla", Json::object()},
      {"gla", Json{{"form", "recurrent"}, {"expand_k", 1.0}, {"expand_v", 0.5}}},
      {"mamba2", Json::object()},
      {"mamba2", Json{{"form", "parallel"}, {"d_conv", 1}}},
      {"mamba2", Json{{"chunk", 64}, {"expand", 1}, {"headdim", 4}}},
  };
  test::expect_checks_pass(cases);
}

}  // namespace
