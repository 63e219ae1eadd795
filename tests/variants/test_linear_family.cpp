// The linear and normalised attention family: cosformer, sigmoid, based, rebased, transnormer, flowformer,
// aaren, and the prefix-scan ops they use (prefix_softmax_attention, causal_linear_numerator,
// cumsum, reciprocal, clamp). Every reference is written here independently, in double, from the
// papers' formulas (explicit N x N sums, no features, no scans); gradients are compared with the
// references' central differences. The registry-wide conformance suite (tests/test_variants.cpp)
// covers shape, causality, padding, decode = forward and the cost models.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numbers>
#include <string>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/prefix_scan_attention.hpp"
#include "attnbench/variant.hpp"
#include "support/mixer_build.hpp"

using namespace ab;
using namespace ab::test;

namespace {

using Vec = std::vector<double>;

Tensor gaussian(const Shape& s, uint64_t key, float scale = 1.f) {
  RngStream r(key, Purpose::check, 4242);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = r.normal() * scale;
  return t;
}

Vec as_double(const Tensor& t) {
  Vec out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = t[i];
  return out;
}

bool kept(const Tensor* mask, int64_t b, int64_t N, int64_t j) { return !mask || std::isfinite((*mask)[b * N + j]); }

using Ref = std::function<Vec(const std::vector<Vec>&)>;
using Op = std::function<Var(const std::vector<Var>&)>;

// Runs op on the inputs and compares its value with ref (rows marked in `skip` are not compared)
// and its gradients (backward of sum(w * y)) with ref's central differences in double.
void expect_op_matches(const Op& op, const Ref& ref, const std::vector<Tensor>& inputs, double tol,
                       const std::string& what, const std::vector<bool>& skip = {}, int64_t row = 1) {
  std::vector<Var> vars;
  std::vector<Vec> xs;
  for (const Tensor& t : inputs) {
    vars.emplace_back(t.clone(), true);
    xs.push_back(as_double(t));
  }
  Var y = op(vars);
  const Vec yr = ref(xs);
  ASSERT_EQ(static_cast<int64_t>(yr.size()), y.value().numel()) << what;
  double worst = 0, scale = 1e-3;
  for (size_t i = 0; i < yr.size(); ++i) {
    if (!skip.empty() && skip[i / row]) continue;
    worst = std::max(worst, std::fabs(yr[i] - y.value()[static_cast<int64_t>(i)]));
    scale = std::max(scale, std::fabs(yr[i]));
  }
  EXPECT_LE(worst, tol * std::max(1.0, scale)) << what << ": forward differs from the reference by " << worst;
  Tensor w = gaussian(y.shape(), 31);
  for (int64_t i = 0; i < w.numel(); ++i)
    if (!skip.empty() && skip[i / row]) w[i] = 0.f;
  y.backward(w);
  auto loss = [&](const std::vector<Vec>& a) {
    const Vec o = ref(a);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += w[static_cast<int64_t>(i)] * o[i];
    return s;
  };
  for (size_t which = 0; which < xs.size(); ++which) {
    const Tensor& g = vars[which].grad();
    ASSERT_TRUE(g.defined()) << what << ": no gradient for input " << which;
    std::vector<Vec> args = xs;
    double gworst = 0, gscale = 0;
    for (size_t i = 0; i < xs[which].size(); ++i) {
      const double h = 1e-6;
      args[which][i] = xs[which][i] + h;
      const double lp = loss(args);
      args[which][i] = xs[which][i] - h;
      const double lm = loss(args);
      args[which][i] = xs[which][i];
      const double num = (lp - lm) / (2 * h);
      gworst = std::max(gworst, std::fabs(num - g[static_cast<int64_t>(i)]));
      gscale = std::max(gscale, std::fabs(num));
    }
    EXPECT_LE(gworst, tol * std::max(1.0, gscale)) << what << ": gradient of input " << which << " differs by " << gworst;
  }
}

double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---- naive references, q, k, v as [B, H, N, d] row-major ----
// out_i = sum_j A_ij v_j / (sum_j A_ij + eps) over visible j (normalised) or sum_j A_ij v_j.
Vec pairwise(int64_t B, int64_t H, int64_t N, int64_t dv, const Vec& v, bool causal, const Tensor* mask,
             const std::function<double(int64_t bh, int64_t i, int64_t j)>& A, bool normalise, double eps) {
  Vec out(static_cast<size_t>(B * H * N * dv), 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < N; ++i) {
      double den = eps;
      Vec num(static_cast<size_t>(dv), 0.0);
      for (int64_t j = 0; j < N; ++j) {
        if ((causal && j > i) || !kept(mask, bh / H, N, j)) continue;
        const double a = A(bh, i, j);
        den += a;
        for (int64_t c = 0; c < dv; ++c) num[c] += a * v[(bh * N + j) * dv + c];
      }
      for (int64_t c = 0; c < dv; ++c)
        out[(bh * N + i) * dv + c] = normalise ? (den != 0.0 ? num[c] / den : 0.0) : num[c];
    }
  return out;
}

double dot_rows(const Vec& a, int64_t ra, const Vec& b, int64_t rb, int64_t d,
                const std::function<double(double)>& f = [](double x) { return x; }) {
  double s = 0;
  for (int64_t c = 0; c < d; ++c) s += f(a[ra * d + c]) * f(b[rb * d + c]);
  return s;
}

// The output projection of the references: o [B, H, N, d] with its heads side by side times
// wo [H d, D] -> y [B, N, D].
Vec merge_heads(const Vec& o, const Tensor& wo, int64_t B, int64_t H, int64_t N, int64_t d, int64_t D) {
  Vec y(static_cast<size_t>(B * N * D), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < D; ++c) {
        double s = 0;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t e = 0; e < d; ++e) s += o[((b * H + h) * N + n) * d + e] * wo[(h * d + e) * D + c];
        y[(b * N + n) * D + c] = s;
      }
  return y;
}

}  // namespace

// ---- cosformer ----
TEST(Cosformer, EqualsTheCosReweightedQuadraticFormWithGradients) {
  const int64_t B = 2, H = 2, N = 7, d = 3, M = 10;
  const Tensor mask = padding_mask(B, N, {7, 5});
  for (const std::string feature : {"relu", "elu"})
    for (bool causal : {false, true})
      for (bool masked : {false, true}) {
        auto mixer = build_mixer("cosformer", Json{{"feature", feature}}, H * d, H, M);
        auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
        ASSERT_NE(attn, nullptr);
        MixerContext ctx;
        ctx.causal = causal;
        ctx.key_mask = masked ? &mask : nullptr;
        const Ref ref = [&](const std::vector<Vec>& x) {
          auto phi = [&](double t) { return feature == "relu" ? std::max(t, 0.0) : (t > 0 ? t + 1 : std::exp(t)); };
          return pairwise(B, H, N, d, x[2], causal, ctx.key_mask, [&](int64_t bh, int64_t i, int64_t j) {
            return dot_rows(x[0], bh * N + i, x[1], bh * N + j, d, phi) *
                   std::cos(std::numbers::pi * double(i - j) / (2.0 * M));
          }, true, 1e-6);
        };
        expect_op_matches([&](const std::vector<Var>& in) { return attn->attend(in[0], in[1], in[2], ctx); }, ref,
                          {gaussian({B, H, N, d}, 1), gaussian({B, H, N, d}, 2), gaussian({B, H, N, d}, 3)}, 1e-4,
                          fmt::format("cosformer feature={} causal={} masked={}", feature, causal, masked));
      }
}

// ---- sigmoid ----
TEST(Sigmoid, EqualsTheNaiveFormForEveryBiasModeWithGradients) {
  const int64_t B = 2, H = 2, N = 6, d = 4, M = 16;
  const Tensor mask = padding_mask(B, N, {6, 4});
  for (const std::string mode : {"max_length", "length", "none"})
    for (bool causal : {false, true}) {
      auto mixer = build_mixer("sigmoid", Json{{"bias", mode}}, H * d, H, M);
      auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
      MixerContext ctx;
      ctx.causal = causal;
      ctx.key_mask = &mask;
      const double b = mode == "none" ? 0.0 : -std::log(mode == "length" ? double(N) : double(M));
      const Ref ref = [&](const std::vector<Vec>& x) {
        return pairwise(B, H, N, d, x[2], causal, ctx.key_mask, [&](int64_t bh, int64_t i, int64_t j) {
          return sigm(dot_rows(x[0], bh * N + i, x[1], bh * N + j, d) / std::sqrt(double(d)) + b);
        }, false, 0.0);
      };
      expect_op_matches([&](const std::vector<Var>& in) { return attn->attend(in[0], in[1], in[2], ctx); }, ref,
                        {gaussian({B, H, N, d}, 4), gaussian({B, H, N, d}, 5), gaussian({B, H, N, d}, 6)}, 1e-4,
                        fmt::format("sigmoid bias={} causal={}", mode, causal));
    }
}

// ---- based, rebased ----
// A Based-family mixer (based_family.hpp) against a reference that never builds features: the
// kernel is evaluated on the projected rows q_i, k_j directly, after a directly computed depthwise
// convolution; forward and central-difference gradients, both conv settings, causal and not.
using PairKernel = std::function<double(const double* qi, const double* kj)>;
void expect_based_family(const std::string& name, const Json& params, int64_t f, double eps,
                         const std::function<PairKernel(const Mixer&)>& make_kernel,
                         const std::function<void(Mixer&)>& prepare = {}) {
  const int64_t B = 2, H = 2, N = 6, D = 4, d = D / H;
  for (int64_t taps : {0, 3})
    for (bool causal : {false, true}) {
      Json given = params;
      given["feature_dim"] = f;
      given["conv_taps"] = taps;
      auto mixer = build_mixer(name, given, D, H, N);
      if (prepare) prepare(*mixer);
      const PairKernel kernel = make_kernel(*mixer);
      const Var wq = mixer_param(*mixer, "wq"), wk = mixer_param(*mixer, "wk"), wv = mixer_param(*mixer, "wv"),
                wo = mixer_param(*mixer, "wo");
      Var cw, cb;
      if (taps > 0) {
        cw = mixer_param(*mixer, "conv.w");
        cb = mixer_param(*mixer, "conv.b");
        for (int64_t i = 0; i < D; ++i) cb.value_mut()[i] = 0.1f * float(i + 1);  // a non-zero bias
      }
      MixerContext ctx;
      ctx.causal = causal;
      const Ref ref = [&](const std::vector<Vec>& in) {
        const Vec& x = in[0];
        Vec u = x;  // u = x + conv(x)
        if (taps > 0)
          for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < N; ++t)
              for (int64_t c = 0; c < D; ++c) {
                double s = cb.value()[c];
                for (int64_t j = 0; j < taps; ++j) {
                  const int64_t src = causal ? t - j : t + j - (taps - 1) / 2;
                  if (src >= 0 && src < N) s += cw.value()[c * taps + j] * x[(b * N + src) * D + c];
                }
                u[(b * N + t) * D + c] += s;
              }
        auto project = [&](const Var& w, int64_t width) {  // [B, N, D] -> [B, H, N, width]
          Vec out(static_cast<size_t>(B * H * N * width), 0.0);
          for (int64_t b = 0; b < B; ++b)
            for (int64_t n = 0; n < N; ++n)
              for (int64_t h = 0; h < H; ++h)
                for (int64_t e = 0; e < width; ++e) {
                  double s = 0;
                  for (int64_t c = 0; c < D; ++c) s += u[(b * N + n) * D + c] * w.value()[c * H * width + h * width + e];
                  out[((b * H + h) * N + n) * width + e] = s;
                }
          return out;
        };
        const Vec q = project(wq, f), k = project(wk, f), v = project(wv, d);
        const Vec o = pairwise(B, H, N, d, v, causal, nullptr, [&](int64_t bh, int64_t i, int64_t j) {
          return kernel(&q[(bh * N + i) * f], &k[(bh * N + j) * f]);
        }, true, eps);
        return merge_heads(o, wo.value(), B, H, N, d, D);
      };
      expect_op_matches([&](const std::vector<Var>& in) { return mixer->forward(in[0], ctx); }, ref,
                        {gaussian({B, N, D}, 7)}, 1e-4, fmt::format("{} taps={} causal={}", name, taps, causal));
    }
}

// based: the Taylor kernel 1 + s + s^2 / 2 with s = q.k / sqrt(f).
TEST(Based, TaylorKernelAndConvolutionMatchTheClosedFormWithGradients) {
  const int64_t f = 3;
  expect_based_family("based", Json::object(), f, 1e-6, [&](const Mixer&) -> PairKernel {
    return [f](const double* qi, const double* kj) {
      double s = 0;
      for (int64_t c = 0; c < f; ++c) s += qi[c] * kj[c];
      s /= std::sqrt(double(f));
      return 1.0 + s + s * s / 2.0;
    };
  });
}

// rebased: (q' . k')^2 / f with x' = gamma LayerNorm(x) + beta (biased variance, eps 1e-5), gamma
// and beta set away from their 1 / 0 initialisation so that both matter.
TEST(Rebased, SquaredAffineNormalisedKernelMatchesTheQuadraticFormWithGradients) {
  const int64_t f = 3;
  auto prepare = [](Mixer& m) {
    Var g = mixer_param(m, "fm.gamma"), b = mixer_param(m, "fm.beta");
    for (int64_t i = 0; i < g.value().numel(); ++i) {
      g.value_mut()[i] = 0.7f + 0.3f * float(i);
      b.value_mut()[i] = 0.2f * float(i) - 0.15f;
    }
  };
  expect_based_family(
      "rebased", Json::object(), f, 1e-5,
      [&](const Mixer& m) -> PairKernel {
        const Tensor g = mixer_param(m, "fm.gamma").value(), be = mixer_param(m, "fm.beta").value();
        return [f, g, be](const double* qi, const double* kj) {
          auto norm = [&](const double* x) {
            double mu = 0, var = 0;
            for (int64_t c = 0; c < f; ++c) mu += x[c] / double(f);
            for (int64_t c = 0; c < f; ++c) var += (x[c] - mu) * (x[c] - mu) / double(f);
            Vec y(static_cast<size_t>(f));
            for (int64_t c = 0; c < f; ++c) y[c] = g[c] * (x[c] - mu) / std::sqrt(var + 1e-5) + be[c];
            return y;
          };
          const Vec a = norm(qi), b = norm(kj);
          double s = 0;
          for (int64_t c = 0; c < f; ++c) s += a[c] * b[c];
          return s * s / double(f);
        };
      },
      prepare);
}

// ---- aaren and its scan ----
// o_t = softmax_{j<=t}(s_j) v_j, directly.
Vec prefix_softmax_reference(int64_t BH, int64_t N, int64_t dv, const Vec& s, const Vec& v, const Tensor* mask,
                             int64_t H) {
  Vec out(static_cast<size_t>(BH * N * dv), 0.0);
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t t = 0; t < N; ++t) {
      double mx = -1e300;
      for (int64_t j = 0; j <= t; ++j)
        if (kept(mask, bh / H, N, j)) mx = std::max(mx, s[bh * N + j]);
      double z = 0;
      Vec acc(static_cast<size_t>(dv), 0.0);
      for (int64_t j = 0; j <= t; ++j) {
        if (!kept(mask, bh / H, N, j)) continue;
        const double p = std::exp(s[bh * N + j] - mx);
        z += p;
        for (int64_t c = 0; c < dv; ++c) acc[c] += p * v[(bh * N + j) * dv + c];
      }
      for (int64_t c = 0; c < dv; ++c) out[(bh * N + t) * dv + c] = z > 0 ? acc[c] / z : 0.0;
    }
  return out;
}

TEST(PrefixSoftmaxAttention, EqualsCausalSoftmaxOfOneQueryAcrossChunksWithGradients) {
  // N = 300 > 256 crosses the scan's chunk boundaries; large scores test the max-shift; the mask leaves
  // the first keys of sequence 1 padded (no visible key: output 0) and a gap in the middle.
  const int64_t B = 2, H = 1, dv = 2;
  for (int64_t N : {5, 300}) {
    std::vector<int32_t> tokens(static_cast<size_t>(B * N), 1);
    tokens[N + 0] = tokens[N + 1] = 0;
    for (int64_t n = N / 2; n < N / 2 + 3; ++n) tokens[n] = 0;
    const Tensor mask = key_padding_mask(tokens, B, N, 0);
    for (bool masked : {false, true}) {
      const Tensor* m = masked ? &mask : nullptr;
      const Ref ref = [&](const std::vector<Vec>& x) { return prefix_softmax_reference(B * H, N, dv, x[0], x[1], m, H); };
      expect_op_matches([&](const std::vector<Var>& in) { return prefix_softmax_attention(in[0], in[1], m); }, ref,
                        {gaussian({B, H, N}, 8, 30.f), gaussian({B, H, N, dv}, 9)}, 1e-4,
                        fmt::format("prefix softmax N={} masked={}", N, masked));
    }
  }
}

TEST(Aaren, IsCausalSoftmaxAttentionWithAFixedLearnedQuery) {
  const int64_t B = 2, H = 2, N = 9, D = 6, d = D / H;
  auto mixer = build_mixer("aaren", Json::object(), D, H, N);
  const Var wk = mixer_param(*mixer, "wk"), wv = mixer_param(*mixer, "wv"), wo = mixer_param(*mixer, "wo"),
            q = mixer_param(*mixer, "query");
  const Tensor mask = padding_mask(B, N, {9, 6});
  MixerContext ctx;
  ctx.causal = true;
  ctx.key_mask = &mask;
  const Ref ref = [&](const std::vector<Vec>& in) {
    const Vec& x = in[0];
    // k, v per head from x; s_t = q_h . k_t / sqrt(d)
    Vec s(static_cast<size_t>(B * H * N)), v(static_cast<size_t>(B * H * N * d));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = 0; n < N; ++n) {
          double sc = 0;
          for (int64_t e = 0; e < d; ++e) {
            double kk = 0, vv = 0;
            for (int64_t c = 0; c < D; ++c) {
              kk += x[(b * N + n) * D + c] * wk.value()[c * D + h * d + e];
              vv += x[(b * N + n) * D + c] * wv.value()[c * D + h * d + e];
            }
            sc += q.value()[h * d + e] * kk;
            v[((b * H + h) * N + n) * d + e] = vv;
          }
          s[(b * H + h) * N + n] = sc / std::sqrt(double(d));
        }
    const Vec o = prefix_softmax_reference(B * H, N, d, s, v, &mask, H);
    return merge_heads(o, wo.value(), B, H, N, d, D);
  };
  expect_op_matches([&](const std::vector<Var>& in) { return mixer->forward(in[0], ctx); }, ref,
                    {gaussian({B, N, D}, 10)}, 1e-4, "aaren");
  // The parameters too (the query included), by the library's finite differences.
  auto fresh = build_mixer("aaren", Json::object(), D, H, N);
  std::vector<Var> leaves{Var(gaussian({B, N, D}, 11), true)};
  for (auto& [n, v] : fresh->parameters()) leaves.push_back(v);
  const GradCheckReport rep = grad_check([&] { return fresh->forward(leaves[0], ctx); }, leaves);
  EXPECT_TRUE(rep.passed) << rep.detail;
}

// ---- the causal numerator and the helpers ----
TEST(PrefixScanOps, CausalNumeratorCumsumReciprocalClampMatchReferences) {
  const int64_t B = 2, H = 2, N = 7, m = 3, dv = 2;
  const Tensor mask = padding_mask(B, N, {7, 4});
  for (bool masked : {false, true}) {
    const Tensor* mk = masked ? &mask : nullptr;
    const Ref ref = [&](const std::vector<Vec>& x) {
      return pairwise(B, H, N, dv, x[2], true, mk,
                      [&](int64_t bh, int64_t i, int64_t j) { return dot_rows(x[0], bh * N + i, x[1], bh * N + j, m); },
                      false, 0.0);
    };
    expect_op_matches([&](const std::vector<Var>& in) { return causal_linear_numerator(in[0], in[1], in[2], mk); }, ref,
                      {gaussian({B, H, N, m}, 12), gaussian({B, H, N, m}, 13), gaussian({B, H, N, dv}, 14)}, 1e-4,
                      fmt::format("causal numerator masked={}", masked));
  }
  // cumsum along the middle dimension of [2, 5, 3]
  expect_op_matches([](const std::vector<Var>& in) { return cumsum(in[0], 1); },
                    [](const std::vector<Vec>& x) {
                      Vec y(x[0].size());
                      for (int64_t o = 0; o < 2; ++o)
                        for (int64_t c = 0; c < 3; ++c) {
                          double s = 0;
                          for (int64_t n = 0; n < 5; ++n) y[(o * 5 + n) * 3 + c] = s += x[0][(o * 5 + n) * 3 + c];
                        }
                      return y;
                    },
                    {gaussian({2, 5, 3}, 15)}, 1e-5, "cumsum");
  Tensor pos = gaussian({10}, 16);
  for (int64_t i = 0; i < 10; ++i) pos[i] = 0.5f + std::fabs(pos[i]);
  expect_op_matches([](const std::vector<Var>& in) { return reciprocal(in[0]); },
                    [](const std::vector<Vec>& x) {
                      Vec y(x[0].size());
                      for (size_t i = 0; i < y.size(); ++i) y[i] = 1.0 / x[0][i];
                      return y;
                    },
                    {pos}, 1e-4, "reciprocal");
  Tensor spread = gaussian({12}, 17, 2.f);
  for (int64_t i = 0; i < 12; ++i)
    if (std::fabs(std::fabs(spread[i]) - 1.f) < 0.05f) spread[i] = 0.f;  // away from the kinks
  expect_op_matches([](const std::vector<Var>& in) { return clamp(in[0], -1.f, 1.f); },
                    [](const std::vector<Vec>& x) {
                      Vec y(x[0].size());
                      for (size_t i = 0; i < y.size(); ++i) y[i] = std::clamp(x[0][i], -1.0, 1.0);
                      return y;
                    },
                    {spread}, 1e-5, "clamp");
}

// ---- transnormer ----
TEST(TransNormer, NormAttentionIsTheLayerNormedNumeratorWithGradients) {
  const int64_t B = 2, H = 2, N = 6, d = 4;
  const Tensor mask = padding_mask(B, N, {6, 4});
  for (const std::string feature : {"elu", "relu"})
    for (bool causal : {false, true}) {
      // Layer 1 of the default split is NormAttention.
      auto mixer = build_mixer("transnormer", Json{{"feature", feature}}, H * d, H, N, 1);
      auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
      Var gamma = mixer_param(*mixer, "norm.gamma"), beta = mixer_param(*mixer, "norm.beta");
      for (int64_t i = 0; i < d; ++i) {
        gamma.value_mut()[i] = 1.f + 0.1f * float(i);
        beta.value_mut()[i] = 0.05f * float(i);
      }
      MixerContext ctx;
      ctx.causal = causal;
      ctx.key_mask = &mask;
      auto phi = [&](double x) { return feature == "relu" ? std::max(x, 0.0) : (x > 0 ? x + 1 : std::exp(x)); };
      const Ref ref = [&](const std::vector<Vec>& x) {
        Vec num = pairwise(B, H, N, d, x[2], causal, &mask, [&](int64_t bh, int64_t i, int64_t j) {
          return dot_rows(x[0], bh * N + i, x[1], bh * N + j, d, phi);
        }, false, 0.0);
        for (int64_t r = 0; r < B * H * N; ++r) {  // LayerNorm over d, eps 1e-5
          double mu = 0, var = 0;
          for (int64_t c = 0; c < d; ++c) mu += num[r * d + c] / d;
          for (int64_t c = 0; c < d; ++c) var += (num[r * d + c] - mu) * (num[r * d + c] - mu) / d;
          for (int64_t c = 0; c < d; ++c)
            num[r * d + c] = (num[r * d + c] - mu) / std::sqrt(var + 1e-5) * gamma.value()[c] + beta.value()[c];
        }
        return num;
      };
      expect_op_matches([&](const std::vector<Var>& in) { return attn->attend(in[0], in[1], in[2], ctx); }, ref,
                        {gaussian({B, H, N, d}, 18), gaussian({B, H, N, d}, 19), gaussian({B, H, N, d}, 20)}, 2e-4,
                        fmt::format("transnormer norm feature={} causal={}", feature, causal));
    }
}

TEST(TransNormer, DiagAttentionIsBlockSoftmaxAndTheSplitFollowsTheLayer) {
  const int64_t B = 1, H = 2, N = 10, d = 3, block = 4;
  for (bool causal : {false, true}) {
    auto mixer = build_mixer("transnormer", Json{{"block", block}, {"diag_layers", 2}}, H * d, H, N, 1);
    EXPECT_EQ(mixer->parameters().size(), 4u) << "DiagAttention layers have no norm parameters";
    auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
    MixerContext ctx;
    ctx.causal = causal;
    const Ref ref = [&](const std::vector<Vec>& x) {
      Vec out(static_cast<size_t>(B * H * N * d), 0.0);
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t i = 0; i < N; ++i) {
          const int64_t lo = i / block * block, hi = std::min(N, lo + block);
          std::vector<double> p;
          double mx = -1e300, z = 0;
          for (int64_t j = lo; j < hi; ++j) {
            p.push_back(causal && j > i ? -1e300 : dot_rows(x[0], bh * N + i, x[1], bh * N + j, d) / std::sqrt(double(d)));
            mx = std::max(mx, p.back());
          }
          for (auto& t : p) z += t = (t <= -1e299 ? 0.0 : std::exp(t - mx));
          for (int64_t j = lo; j < hi; ++j)
            for (int64_t c = 0; c < d; ++c) out[(bh * N + i) * d + c] += p[j - lo] / z * x[2][(bh * N + j) * d + c];
        }
      return out;
    };
    expect_op_matches([&](const std::vector<Var>& in) { return attn->attend(in[0], in[1], in[2], ctx); }, ref,
                      {gaussian({B, H, N, d}, 21), gaussian({B, H, N, d}, 22), gaussian({B, H, N, d}, 23)}, 1e-4,
                      fmt::format("transnormer diag causal={}", causal));
  }
  auto upper = build_mixer("transnormer", Json{{"diag_layers", 2}}, 8, 2, 8, 2);
  EXPECT_EQ(upper->parameters().size(), 6u) << "layer 2 with diag_layers = 2 is NormAttention";
}

TEST(TransNormer, NormAttentionLayersPassTheGradientCheck) {
  for (bool causal : {false, true}) {
    auto m = build_mixer("transnormer", Json::object(), 8, 2, 6, 1);
    std::vector<Var> leaves{Var(gaussian({2, 6, 8}, 24), true)};
    for (auto& [n, v] : m->parameters()) leaves.push_back(v);
    MixerContext ctx;
    ctx.causal = causal;
    const GradCheckReport rep = grad_check([&] { return m->forward(leaves[0], ctx); }, leaves);
    EXPECT_TRUE(rep.passed) << (causal ? "causal: " : "bidirectional: ") << rep.detail;
  }
}

// ---- flowformer ----
// The thuml formulas written out per (batch, head) in double.
Vec flow_reference(int64_t B, int64_t H, int64_t N, int64_t d, const Vec& q, const Vec& k, const Vec& v, bool causal,
                   double eps) {
  Vec out(static_cast<size_t>(B * H * N * d), 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    auto fq = [&](int64_t i, int64_t c) { return sigm(q[(bh * N + i) * d + c]); };
    auto fk = [&](int64_t j, int64_t c) { return sigm(k[(bh * N + j) * d + c]); };
    // visible(i) = keys 0..i (causal) or all; n_i = i + 1 (causal) or 1 with sums over everything
    auto hi = [&](int64_t i) { return causal ? i + 1 : N; };
    auto nrm = [&](int64_t i) { return causal ? double(i + 1) : 1.0; };
    Vec I(N), O(N), Ic(N), Oc(N);
    for (int64_t i = 0; i < N; ++i) {
      double a = 0, b = 0;
      for (int64_t c = 0; c < d; ++c) {
        double sk = 0, sq = 0;
        for (int64_t j = 0; j < hi(i); ++j) {
          sk += fk(j, c);
          sq += fq(j, c);
        }
        a += (fq(i, c) + eps) * (sk + eps);
        b += (fk(i, c) + eps) * (sq + eps);
      }
      I[i] = nrm(i) / a;
      O[i] = nrm(i) / b;
    }
    for (int64_t i = 0; i < N; ++i) {
      double a = 0, b = 0;
      for (int64_t c = 0; c < d; ++c) {
        double sk = 0, sq = 0;
        for (int64_t j = 0; j < hi(i); ++j) {
          sk += fk(j, c) * O[j];
          sq += fq(j, c) * I[j];
        }
        a += (fq(i, c) + eps) * (sk + eps);
        b += (fk(i, c) + eps) * (sq + eps);
      }
      Ic[i] = a / nrm(i);
      Oc[i] = std::clamp(b / nrm(i), -1.0, 1.0);
    }
    Vec comp(N);
    for (int64_t j = 0; j < N; ++j) {
      double z = 0;
      for (int64_t t = 0; t < (causal ? j + 1 : N); ++t) z += std::exp(Oc[t]);
      comp[j] = std::exp(Oc[j]) / z * (causal ? double(j + 1) : double(N));
    }
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < hi(i); ++j) {
        double a = 0;
        for (int64_t c = 0; c < d; ++c) a += fq(i, c) * I[i] / nrm(i) * fk(j, c);
        for (int64_t c = 0; c < d; ++c) out[(bh * N + i) * d + c] += sigm(Ic[i]) * a * comp[j] * v[(bh * N + j) * d + c];
      }
  }
  return out;
}

TEST(Flowformer, BothFormsEqualTheFlowFormulasWithGradients) {
  const int64_t B = 2, H = 2, N = 6, d = 3;
  for (bool causal : {false, true}) {
    auto mixer = build_mixer("flowformer", Json::object(), H * d, H, N);
    auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
    MixerContext ctx;
    ctx.causal = causal;
    const Ref ref = [&](const std::vector<Vec>& x) { return flow_reference(B, H, N, d, x[0], x[1], x[2], causal, 1e-6); };
    expect_op_matches([&](const std::vector<Var>& in) { return attn->attend(in[0], in[1], in[2], ctx); }, ref,
                      {gaussian({B, H, N, d}, 25), gaussian({B, H, N, d}, 26), gaussian({B, H, N, d}, 27)}, 1e-4,
                      fmt::format("flowformer causal={}", causal));
  }
}

TEST(Flowformer, PaddedTokensAreNeitherSourcesNorSinks) {
  // Bidirectional with padding = the same sequence cut to its real tokens.
  const int64_t H = 2, N = 7, real = 5, d = 3;
  auto mixer = build_mixer("flowformer", Json::object(), H * d, H, N);
  auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
  const Tensor q = gaussian({1, H, N, d}, 28), k = gaussian({1, H, N, d}, 29), v = gaussian({1, H, N, d}, 30);
  const Tensor mask = padding_mask(1, N, {real});
  MixerContext ctx;
  ctx.key_mask = &mask;
  NoGrad ng;
  const Tensor full = attn->attend(Var(q), Var(k), Var(v), ctx).value();
  auto cut = [&](const Tensor& t) { return slice(Var(t), 2, 0, real); };
  MixerContext plain;
  const Tensor part = attn->attend(cut(q), cut(k), cut(v), plain).value();
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < real; ++n)
      for (int64_t c = 0; c < d; ++c)
        EXPECT_NEAR(full[((h * N) + n) * d + c], part[((h * real) + n) * d + c], 1e-5) << h << " " << n << " " << c;
}

// ---- the suite with non-default settings ----
// (ReLU feature maps are left to the double-precision tests above: the suite's finite differences,
// step 1e-2, straddle the kink at its tiny sizes.)
TEST(LinearFamily, ConformanceWithOtherSettings) {
  const std::vector<std::pair<std::string, Json>> cases = {
      {"transnormer", Json{{"diag_layers", 0}}},
      {"cosformer", Json{{"eps", 1e-4}}},
      {"based", Json{{"conv_taps", 0}, {"feature_dim", 4}}},
      {"rebased", Json{{"conv_taps", 0}, {"feature_dim", 4}}},
      {"sigmoid", Json{{"bias", "none"}}},
  };
  for (const auto& [name, params] : cases) {
    const VariantSpec& spec = VariantRegistry::instance().get(name);
    for (const CheckResult& r : check_variant(spec, params))
      EXPECT_TRUE(r.passed) << name << " " << params.dump() << " " << r.check << ": " << r.detail;
  }
}
