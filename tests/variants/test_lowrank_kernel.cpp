// Low-rank, kernelised and synthetic attention: linformer, linear_elu, performer, synthesizer,
// nystrom and their fused ops (linear_attention, favor_features, sequence_depthwise_conv).
// References are written here independently: explicit N x N quadratic forms in double, naive
// softmax attention, and central differences of the double references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/variant.hpp"
#include "support/random_tensors.hpp"

using namespace ab;

namespace {

Tensor randn(const Shape& s, uint64_t key, float scale = 1.f) { return test::normal_tensor(s, key, 77, scale); }

std::vector<double> to_double(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = t[i];
  return out;
}

Json resolved(const std::string& variant, const Json& given) {
  const VariantSpec& spec = VariantRegistry::instance().get(variant);
  return resolve_params(spec.params, given, variant);
}

std::unique_ptr<Mixer> make(const std::string& variant, const Json& given, int64_t D, int64_t H, int64_t L,
                            uint64_t seed = 1) {
  MixerConfig cfg{D, H, L, 0, seed, resolved(variant, given)};
  return VariantRegistry::instance().get(variant).make(cfg);
}

AttentionMixer* as_attention(const std::unique_ptr<Mixer>& m) {
  auto* a = dynamic_cast<AttentionMixer*>(m.get());
  EXPECT_NE(a, nullptr);
  return a;
}

// keep[b * N + n] from a key mask; all ones without one.
std::vector<double> keep_of(const Tensor* mask, int64_t B, int64_t N) {
  std::vector<double> keep(static_cast<size_t>(B * N), 1.0);
  if (mask)
    for (int64_t i = 0; i < B * N; ++i) keep[i] = std::isinf((*mask)[i]) ? 0.0 : 1.0;
  return keep;
}

// ---- the quadratic (N x N) form of kernelised attention, in double ----
struct QuadraticForm {
  int64_t B, H, N, m, dv;
  std::function<double(double)> phi;
  bool causal;
  std::vector<double> keep;  // [B * N]
  double eps;

  // q, k: [B, H, N, m]; v: [B, H, N, dv] -> [B, H, N, dv]
  std::vector<double> operator()(const std::vector<double>& q, const std::vector<double>& k,
                                 const std::vector<double>& v) const {
    std::vector<double> out(static_cast<size_t>(B * H * N * dv), 0.0);
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t i = 0; i < N; ++i) {
        double den = eps;
        std::vector<double> num(static_cast<size_t>(dv), 0.0);
        for (int64_t j = 0; j < N; ++j) {
          if (causal && j > i) continue;
          if (keep[(bh / H) * N + j] == 0.0) continue;
          double a = 0;  // A_ij = phi(q_i) . phi(k_j)
          for (int64_t c = 0; c < m; ++c) a += phi(q[(bh * N + i) * m + c]) * phi(k[(bh * N + j) * m + c]);
          den += a;
          for (int64_t c = 0; c < dv; ++c) num[c] += a * v[(bh * N + j) * dv + c];
        }
        for (int64_t c = 0; c < dv; ++c) out[(bh * N + i) * dv + c] = den != 0.0 ? num[c] / den : 0.0;
      }
    return out;
  }
};

double elu1(double x) { return x > 0 ? x + 1 : std::exp(x); }

// Compares an op's forward and its gradients (backward with seed w) with a double reference and
// the reference's central differences (step 1e-5 in double).
void expect_matches_reference(const std::function<Var(const Var&, const Var&, const Var&)>& op,
                              const std::function<std::vector<double>(const std::vector<double>&, const std::vector<double>&,
                                                                      const std::vector<double>&)>& ref,
                              Tensor q, Tensor k, Tensor v, double tol, const std::string& what) {
  Var qv(q, true), kv(k, true), vv(v, true);
  Var y = op(qv, kv, vv);
  const std::vector<double> dq = to_double(q), dk = to_double(k), dvv = to_double(v);
  const std::vector<double> yr = ref(dq, dk, dvv);
  ASSERT_EQ(static_cast<int64_t>(yr.size()), y.value().numel()) << what;
  double worst = 0;
  for (size_t i = 0; i < yr.size(); ++i) worst = std::max(worst, std::fabs(yr[i] - y.value()[i]));
  EXPECT_LT(worst, tol) << what << ": forward differs from the quadratic form by " << worst;
  const Tensor w = randn(y.shape(), 99);
  y.backward(w);
  auto loss = [&](const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& c) {
    const std::vector<double> o = ref(a, b, c);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += w[i] * o[i];
    return s;
  };
  const std::vector<double>* inputs[3] = {&dq, &dk, &dvv};
  const Var* vars[3] = {&qv, &kv, &vv};
  for (int which = 0; which < 3; ++which) {
    std::vector<double> args[3] = {dq, dk, dvv};
    const Tensor& g = vars[which]->grad();
    ASSERT_TRUE(g.defined()) << what << ": no gradient for input " << which;
    double gworst = 0, gscale = 0;
    for (size_t i = 0; i < inputs[which]->size(); ++i) {
      const double x0 = args[which][i], h = 1e-5;
      args[which][i] = x0 + h;
      const double lp = loss(args[0], args[1], args[2]);
      args[which][i] = x0 - h;
      const double lm = loss(args[0], args[1], args[2]);
      args[which][i] = x0;
      const double num = (lp - lm) / (2 * h);
      gworst = std::max(gworst, std::fabs(num - g[static_cast<int64_t>(i)]));
      gscale = std::max(gscale, std::fabs(num));
    }
    EXPECT_LT(gworst, tol * std::max(1.0, gscale)) << what << ": gradient of input " << which << " differs by " << gworst;
  }
}

// Naive softmax attention in double: q, k, v [B, H, N, d] -> [B, H, N, d], optional key mask.
std::vector<double> softmax_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* mask = nullptr) {
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3);
  const std::vector<double> keep = keep_of(mask, B, N);
  std::vector<double> out(static_cast<size_t>(q.numel()), 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> s(static_cast<size_t>(N), -1e300);
      double mx = -1e300, z = 0;
      for (int64_t j = 0; j < N; ++j) {
        if (keep[(bh / H) * N + j] == 0.0) continue;
        double t = 0;
        for (int64_t c = 0; c < d; ++c) t += double(q[(bh * N + i) * d + c]) * k[(bh * N + j) * d + c];
        s[j] = t / std::sqrt(double(d));
        mx = std::max(mx, s[j]);
      }
      for (int64_t j = 0; j < N; ++j) {
        s[j] = keep[(bh / H) * N + j] == 0.0 ? 0.0 : std::exp(s[j] - mx);
        z += s[j];
      }
      for (int64_t j = 0; j < N; ++j)
        for (int64_t c = 0; c < d; ++c) out[(bh * N + i) * d + c] += s[j] / z * v[(bh * N + j) * d + c];
    }
  return out;
}

double max_abs_diff(const std::vector<double>& a, const Tensor& b, const std::vector<double>* keep_rows = nullptr,
                    int64_t N = 1, int64_t H = 1, int64_t d = 1) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (keep_rows) {  // skip padded query rows: [B, H, N, d]
      const int64_t row = static_cast<int64_t>(i) / d, n = row % N, b = row / N / H;
      if ((*keep_rows)[b * N + n] == 0.0) continue;
    }
    worst = std::max(worst, std::fabs(a[i] - b[static_cast<int64_t>(i)]));
  }
  return worst;
}

Tensor mask_with_padding(int64_t B, int64_t N, std::vector<int64_t> real_lengths) {
  std::vector<int32_t> tokens(static_cast<size_t>(B * N), 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = real_lengths[b]; n < N; ++n) tokens[b * N + n] = 0;
  return key_padding_mask(tokens, B, N, 0);
}

// linear_elu's attend against its explicit quadratic form, values and gradients, without and with
// a padding mask (`real`: the real length of each batch row); q, k, v from streams seed, seed+1, seed+2.
void expect_linear_elu_is_quadratic_form(bool causal, int64_t B, int64_t H, int64_t N, int64_t d,
                                         std::vector<int64_t> real, uint64_t seed) {
  const Tensor mask = mask_with_padding(B, N, std::move(real));
  const std::string direction = causal ? "causal" : "bidirectional";
  for (bool with_mask : {false, true}) {
    auto mixer = make("linear_elu", Json::object(), H * d, H, N);
    AttentionMixer* attn = as_attention(mixer);
    MixerContext ctx;
    ctx.causal = causal;
    ctx.key_mask = with_mask ? &mask : nullptr;
    QuadraticForm qf{B, H, N, d, d, elu1, causal, keep_of(ctx.key_mask, B, N), 1e-6};
    expect_matches_reference([&](const Var& q, const Var& k, const Var& v) { return attn->attend(q, k, v, ctx); },
                             qf, randn({B, H, N, d}, seed), randn({B, H, N, d}, seed + 1),
                             randn({B, H, N, d}, seed + 2), 2e-5, with_mask ? direction + ", masked" : direction);
  }
}

}  // namespace

// ---- linear_elu against its explicit quadratic form ----
TEST(LinearElu, CausalPrefixSumsEqualTheMaskedQuadraticFormWithGradients) {
  expect_linear_elu_is_quadratic_form(true, 2, 2, 9, 4, {9, 6}, 1);
}

TEST(LinearElu, BidirectionalEqualsTheQuadraticFormWithGradients) {
  expect_linear_elu_is_quadratic_form(false, 2, 2, 7, 3, {5, 7}, 4);
}

TEST(LinearAttentionOp, EveryFeatureMapAndDirectionMatchesTheQuadraticForm) {
  // Different key and value widths (m != dv), features given directly (identity: positive inputs).
  const int64_t B = 1, H = 3, N = 11, m = 5, dv = 2;
  const Tensor mask = mask_with_padding(B, N, {8});
  struct Case {
    FeatureMap f;
    std::function<double(double)> phi;
    const char* name;
  };
  const std::vector<Case> cases = {
      {FeatureMap::identity, [](double x) { return x; }, "identity"},
      {FeatureMap::elu_plus_one, elu1, "elu+1"},
      {FeatureMap::relu_plus_eps, [](double x) { return (x > 0 ? x : 0) + 1e-3; }, "relu+eps"}};
  for (const auto& c : cases)
    for (bool causal : {false, true})
      for (bool with_mask : {false, true}) {
        LinearAttentionOptions opt;
        opt.feature = c.f;
        opt.causal = causal;
        opt.eps = 1e-4f;
        opt.key_mask = with_mask ? &mask : nullptr;
        QuadraticForm qf{B, H, N, m, dv, c.phi, causal, keep_of(opt.key_mask, B, N), 1e-4};
        Tensor q = randn({B, H, N, m}, 7), k = randn({B, H, N, m}, 8);
        if (c.f == FeatureMap::identity)  // positive features
          for (int64_t i = 0; i < q.numel(); ++i) q[i] = std::exp(0.5f * q[i]), k[i] = std::exp(0.5f * k[i]);
        if (c.f == FeatureMap::relu_plus_eps)  // keep inputs away from the kink for the differences
          for (int64_t i = 0; i < q.numel(); ++i) {
            if (std::fabs(q[i]) < 0.05f) q[i] = 0.3f;
            if (std::fabs(k[i]) < 0.05f) k[i] = -0.3f;
          }
        expect_matches_reference([&](const Var& a, const Var& b, const Var& v) { return linear_attention(a, b, v, opt); },
                                 qf, q, k, randn({B, H, N, dv}, 9), 5e-5,
                                 std::string(c.name) + (causal ? " causal" : " bidirectional") + (with_mask ? " masked" : ""));
      }
}

TEST(LinearAttentionOp, FiniteDifferencesAndNoVisibleKeyGivesZero) {
  const int64_t B = 2, H = 2, N = 6, m = 4, dv = 3;
  const Tensor mask = mask_with_padding(B, N, {6, 3});
  for (bool causal : {false, true}) {
    LinearAttentionOptions opt;
    opt.feature = FeatureMap::elu_plus_one;
    opt.causal = causal;
    opt.key_mask = &mask;
    Var q(randn({B, H, N, m}, 10), true), k(randn({B, H, N, m}, 11), true), v(randn({B, H, N, dv}, 12), true);
    const GradCheckReport rep = grad_check([&] { return linear_attention(q, k, v, opt); }, {q, k, v});
    EXPECT_TRUE(rep.passed) << (causal ? "causal: " : "bidirectional: ") << rep.detail;
  }
  // Causal with the first keys padded: the first query rows see no key and are exactly 0.
  std::vector<int32_t> tokens = {0, 0, 1, 1};
  const Tensor lead = key_padding_mask(tokens, 1, 4, 0);
  LinearAttentionOptions opt;
  opt.feature = FeatureMap::elu_plus_one;
  opt.causal = true;
  opt.eps = 0.f;
  opt.key_mask = &lead;
  const Tensor y = linear_attention(Var(randn({1, 1, 4, 2}, 13)), Var(randn({1, 1, 4, 2}, 14)),
                                    Var(randn({1, 1, 4, 2}, 15)), opt).value();
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(y[i], 0.f);
  for (int64_t i = 4; i < 8; ++i) EXPECT_TRUE(std::isfinite(y[i]) && y[i] != 0.f);
}

// ---- Performer ----
TEST(FavorFeatures, FiniteDifferencesForEveryKernel) {
  const int64_t B = 2, H = 2, N = 5, d = 4, m = 6;
  const Tensor w = randn({m, d}, 20);
  const Tensor mask = mask_with_padding(B, N, {5, 3});
  for (FavorKernel kind : {FavorKernel::softmax_positive, FavorKernel::softmax_hyperbolic, FavorKernel::relu})
    for (bool is_query : {true, false}) {
      FavorOptions opt;
      opt.kernel = kind;
      opt.is_query = is_query;
      opt.key_mask = is_query ? nullptr : &mask;
      opt.stabilizer = 0.f;  // the max is a constant in backward; without the stabiliser it cancels exactly
      Tensor xt = randn({B, H, N, d}, 21);
      if (kind == FavorKernel::relu)  // away from the kink: |w . x^| >= 0.05 for every feature
        for (int attempt = 0; attempt < 50; ++attempt) {
          bool ok = true;
          for (int64_t r = 0; r < B * H * N && ok; ++r)
            for (int64_t a = 0; a < m && ok; ++a) {
              double u = 0;
              for (int64_t c = 0; c < d; ++c) u += double(w[a * d + c]) * xt[r * d + c];
              ok = std::fabs(u) * std::pow(double(d), -0.25) >= 0.05;
            }
          if (ok) break;
          xt = randn({B, H, N, d}, 100 + attempt);
        }
      Var x(xt, true);
      // Through linear_attention, where only ratios matter (the stabilising max cancels).
      const Var v(randn({B, H, N, 3}, 22));
      LinearAttentionOptions lo;
      lo.key_mask = &mask;
      lo.eps = 0.f;
      const Var other = favor_features(Var(randn({B, H, N, d}, 23)), w, [&] {
        FavorOptions o = opt;
        o.is_query = !is_query;
        o.key_mask = is_query ? &mask : nullptr;
        return o;
      }());
      const GradCheckReport rep = grad_check(
          [&] {
            const Var f = favor_features(x, w, opt);
            return is_query ? linear_attention(f, other, v, lo) : linear_attention(other, f, v, lo);
          },
          {x});
      EXPECT_TRUE(rep.passed) << "kernel " << static_cast<int>(kind) << (is_query ? " query: " : " key: ") << rep.detail;
      // The features themselves, where the max does not move (relu has none).
      if (kind == FavorKernel::relu) {
        const GradCheckReport direct = grad_check([&] { return favor_features(x, w, opt); }, {x});
        EXPECT_TRUE(direct.passed) << "relu features: " << direct.detail;
      }
    }
}

TEST(FavorFeatures, PositiveFeaturesEstimateTheSoftmaxKernel) {
  // phi(q) . phi(k) * exp(c_q + c_k) estimates exp(q . k / sqrt(d)); check the values for a
  // single query and key row against the definition with the stabilising maxima undone.
  const int64_t d = 4, m = 3;
  const Tensor w = randn({m, d}, 30);
  const Tensor x = randn({1, 1, 1, d}, 31);
  FavorOptions opt;
  opt.stabilizer = 0.f;
  const Tensor f = favor_features(Var(x), w, opt).value();
  const double s4 = std::pow(double(d), -0.25);
  double hn = 0;
  for (int64_t c = 0; c < d; ++c) hn += 0.5 * x[c] * x[c] * s4 * s4;
  std::vector<double> e(m);
  double mx = -1e300;
  for (int64_t a = 0; a < m; ++a) {
    double u = 0;
    for (int64_t c = 0; c < d; ++c) u += double(w[a * d + c]) * x[c] * s4;
    e[a] = u - hn;
    mx = std::max(mx, e[a]);
  }
  for (int64_t a = 0; a < m; ++a) EXPECT_NEAR(f[a], std::exp(e[a] - mx) / std::sqrt(double(m)), 1e-6);
}

TEST(Performer, ApproximationErrorFallsWithTheNumberOfFeatures) {
  const int64_t B = 1, H = 2, N = 48, d = 16;
  const Tensor q = randn({B, H, N, d}, 40, 0.6f), k = randn({B, H, N, d}, 41, 0.6f), v = randn({B, H, N, d}, 42);
  const std::vector<double> exact = softmax_attention(q, k, v);
  std::vector<double> errors;
  for (int64_t m : {16, 256, 1024}) {
    auto mixer = make("performer", {{"num_features", m}}, H * d, H, N);
    AttentionMixer* attn = as_attention(mixer);
    double sq = 0;
    const int draws = 8;
    for (int s = 0; s < draws; ++s) {
      MixerContext ctx;
      ctx.seed = 1000 + s;
      const Tensor y = attn->attend(Var(q), Var(k), Var(v), ctx).value();
      for (int64_t i = 0; i < y.numel(); ++i) sq += (y[i] - exact[i]) * (y[i] - exact[i]);
    }
    errors.push_back(std::sqrt(sq / (draws * static_cast<double>(q.numel()))));
  }
  // RMS error like 1/sqrt(m): ratios sqrt(16) = 4 and sqrt(4) = 2, with room for the noise.
  EXPECT_GT(errors[0] / errors[1], 2.0) << errors[0] << " " << errors[1];
  EXPECT_LT(errors[0] / errors[1], 8.0) << errors[0] << " " << errors[1];
  EXPECT_GT(errors[1] / errors[2], 1.3) << errors[1] << " " << errors[2];
  EXPECT_LT(errors[1] / errors[2], 3.5) << errors[1] << " " << errors[2];
  EXPECT_LT(errors[2], 0.05);
}

TEST(Performer, RedrawsEveryIntervalAndEvaluatesWithTheLastDraw) {
  const int64_t B = 1, H = 2, N = 6, d = 4;
  auto mixer = make("performer", {{"num_features", 8}, {"redraw_interval", 10}}, H * d, H, N);
  AttentionMixer* attn = as_attention(mixer);
  const Tensor q = randn({B, H, N, d}, 50), k = randn({B, H, N, d}, 51), v = randn({B, H, N, d}, 52);
  auto run = [&](bool training, int64_t step) {
    NoGrad ng;
    MixerContext ctx;
    ctx.seed = 3;
    ctx.training = training;
    ctx.step = step;
    return attn->attend(Var(q), Var(k), Var(v), ctx).value().to_vector();
  };
  const auto s0 = run(true, 0), s9 = run(true, 9), s10 = run(true, 10), ev = run(false, 0), s25 = run(true, 25);
  EXPECT_EQ(s0, s9);
  EXPECT_NE(s0, s10);
  EXPECT_EQ(ev, s10);  // evaluation keeps the draw of the last training step
  EXPECT_NE(s25, s10);
  // The deterministic LRA mode draws nothing.
  auto relu = make("performer", {{"kernel", "relu"}, {"redraw_interval", 1}}, H * d, H, N);
  MixerContext c1, c2;
  c1.training = c2.training = true;
  c2.step = 5;
  NoGrad ng;
  EXPECT_EQ(as_attention(relu)->attend(Var(q), Var(k), Var(v), c1).value().to_vector(),
            as_attention(relu)->attend(Var(q), Var(k), Var(v), c2).value().to_vector());
}

TEST(Performer, ReluModeIsTheDeterministicReluKernel) {
  const int64_t B = 1, H = 2, N = 7, d = 3;
  auto mixer = make("performer", {{"kernel", "relu"}}, H * d, H, N);
  AttentionMixer* attn = as_attention(mixer);
  MixerContext ctx;
  ctx.causal = true;
  QuadraticForm qf{B, H, N, d, d, [](double x) { return (x > 0 ? x : 0) + 1e-3; }, true, keep_of(nullptr, B, N), 0.0};
  const Tensor q = randn({B, H, N, d}, 60), k = randn({B, H, N, d}, 61), v = randn({B, H, N, d}, 62);
  const Tensor y = attn->attend(Var(q), Var(k), Var(v), ctx).value();
  EXPECT_LT(max_abs_diff(qf(to_double(q), to_double(k), to_double(v)), y), 1e-5);
}

// ---- Nystromformer ----
TEST(Nystrom, LandmarksEqualToNGiveSoftmaxAttention) {
  const int64_t B = 2, H = 2, N = 12, d = 8;
  const Tensor mask = mask_with_padding(B, N, {12, 9});
  // Peaked scores keep A = softmax(q k^T / sqrt(d)) well conditioned for the iterative inverse.
  const Tensor q = randn({B, H, N, d}, 70, 1.5f), k = randn({B, H, N, d}, 71, 1.5f), v = randn({B, H, N, d}, 72);
  for (bool with_mask : {false, true}) {
    auto mixer = make("nystrom", {{"landmarks", N}, {"pinv_iterations", 40}, {"conv_kernel", 0}}, H * d, H, N);
    MixerContext ctx;
    ctx.key_mask = with_mask ? &mask : nullptr;
    const Tensor y = as_attention(mixer)->attend(Var(q), Var(k), Var(v), ctx).value();
    const std::vector<double> keep = keep_of(ctx.key_mask, B, N);
    const double err = max_abs_diff(softmax_attention(q, k, v, ctx.key_mask), y, &keep, N, H, d);
    EXPECT_LT(err, 2e-3) << (with_mask ? "masked" : "unmasked");
  }
  // Few iterations do not converge: the test can tell.
  auto rough = make("nystrom", {{"landmarks", N}, {"pinv_iterations", 1}, {"conv_kernel", 0}}, H * d, H, N);
  const Tensor y1 = as_attention(rough)->attend(Var(q), Var(k), Var(v), MixerContext{}).value();
  EXPECT_GT(max_abs_diff(softmax_attention(q, k, v), y1), 1e-2);
}

TEST(Nystrom, ConformanceWithOtherSettings) {
  const VariantSpec& spec = VariantRegistry::instance().get("nystrom");
  for (const Json& p : {Json{{"landmarks", 3}, {"conv_kernel", 0}}, Json{{"landmarks", 8}, {"pinv_init", "global"}},
                        Json{{"landmarks", 5}, {"conv_kernel", 4}, {"pinv_iterations", 2}}}) {
    for (const auto& r : check_variant(spec, p)) EXPECT_TRUE(r.passed) << p.dump() << " " << r.check << ": " << r.detail;
  }
}

TEST(SequenceDepthwiseConv, MatchesDirectConvolutionAndFiniteDifferences) {
  for (int64_t K : {1, 3, 4, 9}) {
    const int64_t B = 2, H = 2, N = 6, d = 3;
    Var v(randn({B, H, N, d}, 80), true), w(randn({H, K}, 81), true);
    const Tensor y = sequence_depthwise_conv(v, w).value();
    double worst = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t c = 0; c < d; ++c) {
            double s = 0;
            for (int64_t t = 0; t < K; ++t) {
              const int64_t src = n + t - K / 2;
              if (src >= 0 && src < N) s += double(w.value()[h * K + t]) * v.value()[((b * H + h) * N + src) * d + c];
            }
            worst = std::max(worst, std::fabs(s - y[((b * H + h) * N + n) * d + c]));
          }
    EXPECT_LT(worst, 1e-5) << "K = " << K;
    const GradCheckReport rep = grad_check([&] { return sequence_depthwise_conv(v, w); }, {v, w});
    EXPECT_TRUE(rep.passed) << "K = " << K << ": " << rep.detail;
  }
}

// ---- Linformer ----
TEST(Linformer, IdentityProjectionsWithKEqualToNGiveSoftmaxAttention) {
  const int64_t B = 2, H = 2, N = 10, d = 4;
  for (bool share : {false, true}) {
    auto mixer = make("linformer", {{"k", N}, {"share_kv", share}}, H * d, H, N);
    for (auto& [name, p] : mixer->parameters())
      if (name == "e" || name == "f") {
        Tensor& t = p.value_mut();
        ASSERT_EQ(t.shape(), (Shape{N, N}));
        t.fill(0.f);
        for (int64_t i = 0; i < N; ++i) t[i * N + i] = 1.f;
      }
    const Tensor q = randn({B, H, N, d}, 90), k = randn({B, H, N, d}, 91), v = randn({B, H, N, d}, 92);
    const Tensor y = as_attention(mixer)->attend(Var(q), Var(k), Var(v), MixerContext{}).value();
    EXPECT_LT(max_abs_diff(softmax_attention(q, k, v), y), 1e-5) << "share_kv " << share;
  }
}

TEST(Linformer, ShorterSequencesUseTheLeadingRowsAndLongerOnesAreRefused) {
  const int64_t B = 1, H = 2, N = 6, L = 9, d = 4;
  auto mixer = make("linformer", {{"k", 3}}, H * d, H, L);
  const Tensor q = randn({B, H, N, d}, 93), k = randn({B, H, N, d}, 94), v = randn({B, H, N, d}, 95);
  // Zero-padding the sequence to L (keys and values) gives the same output at the real rows.
  auto pad = [&](const Tensor& t) {
    Tensor p = Tensor::zeros({B, H, L, d});
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < d; ++c) p[(h * L + n) * d + c] = t[(h * N + n) * d + c];
    return p;
  };
  AttentionMixer* attn = as_attention(mixer);
  const Tensor y = attn->attend(Var(q), Var(k), Var(v), MixerContext{}).value();
  const Tensor yp = attn->attend(Var(pad(q)), Var(pad(k)), Var(pad(v)), MixerContext{}).value();
  double worst = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < d; ++c) worst = std::max(worst, double(std::fabs(y[(h * N + n) * d + c] - yp[(h * L + n) * d + c])));
  EXPECT_LT(worst, 1e-6);
  const Tensor big = randn({B, H, L + 1, d}, 96);
  EXPECT_THROW(attn->attend(Var(big), Var(big), Var(big), MixerContext{}), UsageError);
}

// ---- Synthesizer ----
TEST(Synthesizer, EveryModePassesConformanceAndHasItsParameters) {
  const VariantSpec& spec = VariantRegistry::instance().get("synthesizer");
  struct Mode {
    Json params;
    std::vector<std::string> names;
  };
  const std::vector<Mode> modes = {
      {{{"mode", "random"}}, {"r", "wv", "wo"}},
      {{{"mode", "random"}, {"fixed", true}}, {"wv", "wo"}},
      {{{"mode", "factorized_random"}, {"k", 3}}, {"r1", "r2", "wv", "wo"}},
      {{{"mode", "dense"}}, {"w1", "b1", "w2", "b2", "wv", "wo"}}};
  for (const auto& m : modes) {
    const bool dense = m.params.at("mode") == "dense";
    for (const auto& r : check_variant(spec, m.params)) {
      // Dense: steps of 1e-2 cross the ReLU's kinks; checked below with a smaller step.
      if (dense && r.check.rfind("gradient", 0) == 0) continue;
      EXPECT_TRUE(r.passed) << m.params.dump() << " " << r.check << ": " << r.detail;
    }
    auto mixer = make("synthesizer", m.params, 16, 2, 8);
    if (dense) {
      std::vector<Var> leaves{Var(randn({2, 8, 16}, 96), true)};
      for (auto& [n, p] : mixer->parameters()) leaves.push_back(p);
      for (bool causal : {false, true}) {
        MixerContext ctx;
        ctx.causal = causal;
        GradCheckOptions opt;
        opt.step = 1e-3f;
        opt.atol = 2e-3f;
        const GradCheckReport rep = grad_check([&] { return mixer->forward(leaves[0], ctx); }, leaves, opt);
        EXPECT_TRUE(rep.passed) << "dense, causal " << causal << ": " << rep.detail;
      }
    }
    std::vector<std::string> names;
    for (auto& [n, p] : mixer->parameters()) names.push_back(n);
    std::sort(names.begin(), names.end());
    std::vector<std::string> want = m.names;
    std::sort(want.begin(), want.end());
    EXPECT_EQ(names, want) << m.params.dump();
    // Shapes: [B, N, D] out for a sequence shorter than max_length, with gradients everywhere.
    Var x(randn({3, 5, 16}, 97), true);
    MixerContext ctx;
    Var y = mixer->forward(x, ctx);
    EXPECT_EQ(y.shape(), (Shape{3, 5, 16}));
    y.backward(Tensor::full(y.shape(), 1.f));
    EXPECT_TRUE(x.grad().defined());
    for (auto& [n, p] : mixer->parameters()) EXPECT_TRUE(p.grad().defined()) << n;
  }
}

TEST(Synthesizer, RandomModeIsSoftmaxOfTheLeadingBlockTimesTheValues) {
  const int64_t B = 2, N = 5, L = 7, H = 2, d = 3, D = H * d;
  auto mixer = make("synthesizer", {{"mode", "random"}}, D, H, L);
  Tensor r, wv, wo;
  for (auto& [n, p] : mixer->parameters()) {
    if (n == "r") r = p.value();
    if (n == "wv") wv = p.value();
    if (n == "wo") wo = p.value();
  }
  const Tensor x = randn({B, N, D}, 98);
  const Tensor mask = mask_with_padding(B, N, {5, 3});
  for (bool causal : {false, true})
    for (bool with_mask : {false, true}) {
      MixerContext ctx;
      ctx.causal = causal;
      ctx.key_mask = with_mask ? &mask : nullptr;
      const Tensor y = mixer->forward(Var(x), ctx).value();
      const std::vector<double> keep = keep_of(ctx.key_mask, B, N);
      double worst = 0;
      for (int64_t b = 0; b < B; ++b) {
        // vals = x wv [N, D]; merged[i, h d + c] = sum_j P_h[i, j] vals[j, h d + c]
        std::vector<double> vals(static_cast<size_t>(N * D), 0.0), merged(static_cast<size_t>(N * D), 0.0);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t o = 0; o < D; ++o)
            for (int64_t i = 0; i < D; ++i) vals[n * D + o] += double(x[(b * N + n) * D + i]) * wv[i * D + o];
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < N; ++i) {
            std::vector<double> p(static_cast<size_t>(N), 0.0);
            double mx = -1e300, z = 0;
            for (int64_t j = 0; j < N; ++j)
              if (keep[b * N + j] != 0.0 && (!causal || j <= i)) mx = std::max(mx, double(r[(h * L + i) * L + j]));
            for (int64_t j = 0; j < N; ++j)
              if (keep[b * N + j] != 0.0 && (!causal || j <= i)) z += p[j] = std::exp(r[(h * L + i) * L + j] - mx);
            for (int64_t j = 0; j < N; ++j)
              for (int64_t c = 0; c < d; ++c) merged[i * D + h * d + c] += p[j] / z * vals[j * D + h * d + c];
          }
        for (int64_t n = 0; n < N; ++n)
          for (int64_t o = 0; o < D; ++o) {
            double s = 0;
            for (int64_t i = 0; i < D; ++i) s += merged[n * D + i] * wo[i * D + o];
            worst = std::max(worst, std::fabs(s - y[(b * N + n) * D + o]));
          }
      }
      EXPECT_LT(worst, 1e-5) << "causal " << causal << " mask " << with_mask;
    }
}

// ---- the other modes of the kernel variants through the conformance suite ----
TEST(KernelVariants, ConformanceWithOtherSettings) {
  const std::vector<std::pair<std::string, Json>> cases = {
      {"performer", {{"kernel", "softmax_hyp"}, {"num_features", 8}}},
      {"performer", {{"kernel", "relu_random"}, {"num_features", 8}}},
      {"performer", {{"kernel", "relu"}}},
      {"performer", {{"num_features", 8}, {"orthogonal", false}}},
      {"linformer", {{"k", 3}, {"share_kv", true}}},
      {"linear_elu", {{"eps", 0.0}}}};
  for (const auto& [name, p] : cases)
    for (const auto& r : check_variant(VariantRegistry::instance().get(name), p)) {
      // ReLU kernels have kinks that steps of 1e-2 cross; their gradients are checked in
      // FavorFeatures and LinearAttentionOp with inputs away from the kinks.
      const std::string kernel = p.value("kernel", "");
      if ((kernel == "relu_random" || kernel == "relu") && r.check.rfind("gradient", 0) == 0) continue;
      EXPECT_TRUE(r.passed) << name << " " << p.dump() << " " << r.check << ": " << r.detail;
    }
}
