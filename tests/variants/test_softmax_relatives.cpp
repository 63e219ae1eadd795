// Softmax relatives and windowed / sparse seeds of issue 18: softmax_clip, softmax_gate, hstu,
// softmax_dconv, fox, swin1d, probsparse. The flash kernel's per-head key bias (fox) against a naive
// double reference written here (forward and the four gradients) and finite differences; then the
// equivalences the maths gives: clip without clipping = softmax, fox with f = 1 = softmax, dconv with
// identity taps = softmax, swin1d with one window = softmax and its shifted windows = softmax masked
// to the windows, probsparse with every query active = softmax and otherwise each row = its softmax
// row or mean(V), sea with every column selected = softmax and otherwise each row = softmax over its
// estimated top columns. The registry-wide conformance suite covers gradients, decode, padding, memory.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/flash_attention.hpp"
#include "attnbench/variant.hpp"
#include "../../variants/favor_projections.hpp"
#include "support/flash_tiles.hpp"
#include "support/mixer_build.hpp"
#include "support/random_tensors.hpp"

using namespace ab;
using namespace ab::test;

namespace {

void expect_close(const Tensor& a, const Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i])) << what << " element " << i;
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  EXPECT_LE(worst, tol * (1 + scale)) << what;
}

// Runs both mixers on the same x and upstream gradient; compares outputs, dx and the gradients of
// the parameters both have (wq, wk, wv, wo).
void expect_same_mixer(Mixer& a, Mixer& b, const MixerContext& ctx, int64_t B, int64_t N, int64_t D, double tol,
                       const std::string& what) {
  const Tensor x = normal_tensor({B, N, D}, 91 + N, 1818), g = normal_tensor({B, N, D}, 92 + N, 1818);
  Var xa(x.clone(), true), xb(x.clone(), true);
  Var ya = a.forward(xa, ctx), yb = b.forward(xb, ctx);
  ya.backward(g);
  yb.backward(g);
  expect_close(ya.value(), yb.value(), tol, what + " output");
  expect_close(xa.grad(), xb.grad(), tol, what + " dx");
  for (const char* w : {"wq", "wk", "wv", "wo"})
    expect_close(mixer_param(a, w).grad(), mixer_param(b, w).grad(), tol, what + " d" + w);
}

// ---- the flash kernel's key bias ----

// Dense double attention with scores scale q.k + kb_j (+ mask, causal) and the gradients for g.
struct Ref {
  std::vector<double> o, dq, dk, dv, dkb;
};
Ref naive_biased(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& kb, const Tensor& g,
                 const Tensor* mask, bool causal, double scale) {
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3);
  Ref r;
  r.o.assign(q.numel(), 0);
  r.dq.assign(q.numel(), 0);
  r.dk.assign(k.numel(), 0);
  r.dv.assign(v.numel(), 0);
  r.dkb.assign(kb.numel(), 0);
  std::vector<double> p(N), dp(N);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < N; ++i) {
      double mx = -INFINITY;
      std::vector<bool> seen(N, false);
      for (int64_t j = 0; j < N; ++j) {
        const double m = mask ? (*mask)[(bh / H) * N + j] : 0.0;
        if ((causal && j > i) || std::isinf(m)) continue;
        seen[j] = true;
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += double(q[(bh * N + i) * d + c]) * k[(bh * N + j) * d + c];
        p[j] = s * scale + kb[bh * N + j] + m;
        mx = std::max(mx, p[j]);
      }
      double z = 0;
      for (int64_t j = 0; j < N; ++j) z += (p[j] = seen[j] ? std::exp(p[j] - mx) : 0.0);
      if (z == 0) continue;
      double D = 0;
      for (int64_t j = 0; j < N; ++j) {
        p[j] /= z;
        dp[j] = 0;
        for (int64_t c = 0; c < d; ++c) {
          r.o[(bh * N + i) * d + c] += p[j] * v[(bh * N + j) * d + c];
          r.dv[(bh * N + j) * d + c] += p[j] * g[(bh * N + i) * d + c];
          dp[j] += double(g[(bh * N + i) * d + c]) * v[(bh * N + j) * d + c];
        }
        D += p[j] * dp[j];
      }
      for (int64_t j = 0; j < N; ++j) {
        const double ds = p[j] * (dp[j] - D);
        r.dkb[bh * N + j] += ds;
        for (int64_t c = 0; c < d; ++c) {
          r.dq[(bh * N + i) * d + c] += ds * scale * k[(bh * N + j) * d + c];
          r.dk[(bh * N + j) * d + c] += ds * scale * q[(bh * N + i) * d + c];
        }
      }
    }
  return r;
}

void expect_ref(const Tensor& a, const std::vector<double>& ref, double tol, const std::string& what) {
  Tensor t = Tensor::empty(a.shape());
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(ref[i]);
  expect_close(a, t, tol, what);
}

}  // namespace

TEST(FlashKeyBias, MatchesNaiveReference) {
  const int64_t B = 2, H = 2, d = 16;
  for (bool portable : {false, true})
    for (int64_t N : {7, 130})
      for (bool causal : {false, true})
        for (bool masked : {false, true}) {
          const Shape s{B, H, N, d};
          Var q(normal_tensor(s, 1, 1818, 2.f), true), k(normal_tensor(s, 2, 1818), true),
              v(normal_tensor(s, 3, 1818), true);
          // A FoX-like bias: -cumsum of negative log-forget values (large towards the end).
          Tensor kbt = Tensor::empty({B, H, N});
          RngStream r(4, Purpose::check, 1);
          for (int64_t bh = 0; bh < B * H; ++bh) {
            float c = 0;
            for (int64_t j = 0; j < N; ++j) kbt[bh * N + j] = (c += 0.3f * r.uniform());
          }
          Var kb(kbt, true);
          const Tensor g = normal_tensor(s, 5, 1818);
          std::vector<int32_t> tokens(B * N, 1);
          for (int64_t j = N - N / 3; j < N; ++j) tokens[j] = 0;
          const Tensor mask = key_padding_mask(tokens, B, N);
          const FlashAttentionOptions opt{
              .block_q = 16, .block_k = 32, .bwd_block_q = 16, .bwd_block_k = 16, .portable = portable};
          const float scale = 0.25f;
          Var o = flash_attention_key_bias(q, k, v, kb, scale, causal, masked ? &mask : nullptr, opt);
          o.backward(g);
          const Ref ref = naive_biased(q.value(), k.value(), v.value(), kbt, g, masked ? &mask : nullptr, causal, scale);
          const std::string what = std::string(portable ? "portable" : "default") + " N=" + std::to_string(N) +
                                   (causal ? " causal" : "") + (masked ? " masked" : "");
          expect_ref(o.value(), ref.o, 2e-5, what + " output");
          expect_ref(q.grad(), ref.dq, 5e-5, what + " dq");
          expect_ref(k.grad(), ref.dk, 5e-5, what + " dk");
          expect_ref(v.grad(), ref.dv, 5e-5, what + " dv");
          expect_ref(kb.grad(), ref.dkb, 5e-5, what + " dkb");
        }
}

TEST(FlashKeyBias, FiniteDifferenceGradients) {
  const Shape s{1, 2, 9, 5};
  const FlashAttentionOptions opt = ragged_small_tiles();
  for (bool causal : {false, true}) {
    std::vector<Var> leaves{Var(normal_tensor(s, 11, 1818), true), Var(normal_tensor(s, 12, 1818), true),
                            Var(normal_tensor(s, 13, 1818), true), Var(normal_tensor({1, 2, 9}, 14, 1818), true)};
    const GradCheckReport rep = grad_check(
        [&] { return flash_attention_key_bias(leaves[0], leaves[1], leaves[2], leaves[3], 0.6f, causal, nullptr, opt); },
        leaves);
    EXPECT_TRUE(rep.passed) << "causal " << causal << ": " << rep.detail;
  }
}

// ---- equivalences ----

TEST(SoftmaxClip, WithoutClippingIsSoftmax) {
  const int64_t B = 2, N = 11, D = 16, H = 2;
  for (bool causal : {false, true}) {
    auto a = build_mixer("softmax_clip", {{"gamma", 0.0}, {"zeta", 1.0}}, D, H, N, 0, 5);
    auto b = build_mixer("softmax", Json::object(), D, H, N, 0, 5);
    MixerContext ctx;
    ctx.causal = causal;
    expect_same_mixer(*a, *b, ctx, B, N, D, 1e-5, std::string("clip") + (causal ? " causal" : ""));
  }
}

TEST(SoftmaxClip, ClipsToExactZerosAndOnes) {
  // q, k, v through attend: with gamma = -0.5 the small weights are exactly 0 and, zeta = 2, the
  // dominant ones exactly 1: the output equals sum over the clipped weights of v, computed here.
  const int64_t N = 6, D = 8, H = 1;
  auto m = build_mixer("softmax_clip", {{"gamma", -0.5}, {"zeta", 2.0}}, D, H, N, 0, 5);
  auto& am = dynamic_cast<AttentionMixer&>(*m);
  const Tensor q = normal_tensor({1, 1, N, D}, 31, 1818, 3.f), k = normal_tensor({1, 1, N, D}, 32, 1818),
               v = normal_tensor({1, 1, N, D}, 33, 1818);
  const Tensor o = am.attend(Var(q), Var(k), Var(v), MixerContext{}).value();
  Tensor ref = Tensor::zeros({1, 1, N, D});
  for (int64_t i = 0; i < N; ++i) {
    std::vector<double> p(N);
    double mx = -INFINITY, z = 0;
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t c = 0; c < D; ++c) s += double(q[i * D + c]) * k[j * D + c];
      mx = std::max(mx, p[j] = s / std::sqrt(double(D)));
    }
    for (auto& x : p) z += (x = std::exp(x - mx));
    for (int64_t j = 0; j < N; ++j) {
      const double w = std::clamp(2.5 * p[j] / z - 0.5, 0.0, 1.0);
      for (int64_t c = 0; c < D; ++c) ref[i * D + c] += static_cast<float>(w * v[j * D + c]);
    }
  }
  expect_close(o, ref, 1e-5, "clipped output");
}

TEST(Fox, ZeroForgetIsCausalSoftmax) {
  const int64_t B = 2, N = 13, D = 16, H = 2;
  auto a = build_mixer("fox", {{"forget_bias", 20.0}, {"block_q", 4}, {"block_k", 8}}, D, H, N, 0, 5);
  // f = sigmoid(0 x + 20): log f = -2e-9, i.e. no forgetting at fp32 resolution.
  Tensor wf = mixer_param(*a, "wf").value();
  for (int64_t i = 0; i < wf.numel(); ++i) wf[i] = 0.f;
  auto b = build_mixer("softmax", Json::object(), D, H, N, 0, 5);
  MixerContext ctx;
  ctx.causal = true;
  expect_same_mixer(*a, *b, ctx, B, N, D, 1e-5, "fox f=1");
}

TEST(Fox, ForgetBiasIsTheCumulativeLogForget) {
  // With a strong constant forget (wf = 0, f = sigmoid(-3)) the output equals softmax attention whose
  // scores carry (i - j) log f, here written out densely from q, k, v.
  const int64_t N = 9, D = 8, H = 1;
  auto m = build_mixer("fox", {{"forget_bias", -3.0}}, D, H, N, 0, 5);
  Tensor wf = mixer_param(*m, "wf").value();
  for (int64_t i = 0; i < wf.numel(); ++i) wf[i] = 0.f;
  const Tensor x = normal_tensor({1, N, D}, 41, 1818);
  MixerContext ctx;
  ctx.causal = true;
  const Tensor y = m->forward(Var(x), ctx).value();
  const double logf = -std::log1p(std::exp(3.0));
  // Recompute through the projections: q = x Wq etc. (one head).
  auto proj = [&](const char* w) { return matmul(Var(x), mixer_param(*m, w)).value(); };
  const Tensor q = proj("wq"), k = proj("wk"), v = proj("wv");
  Tensor o = Tensor::zeros({1, N, D});
  for (int64_t i = 0; i < N; ++i) {
    std::vector<double> p(N, 0);
    double mx = -INFINITY, z = 0;
    for (int64_t j = 0; j <= i; ++j) {
      double s = 0;
      for (int64_t c = 0; c < D; ++c) s += double(q[i * D + c]) * k[j * D + c];
      mx = std::max(mx, p[j] = s / std::sqrt(double(D)) + (i - j) * logf);
    }
    for (int64_t j = 0; j <= i; ++j) z += (p[j] = std::exp(p[j] - mx));
    for (int64_t j = 0; j <= i; ++j)
      for (int64_t c = 0; c < D; ++c) o[i * D + c] += static_cast<float>(p[j] / z * v[j * D + c]);
  }
  expect_close(y, matmul(Var(o), mixer_param(*m, "wo")).value(), 1e-5, "fox constant forget");
}

TEST(SoftmaxDconv, IdentityTapsAreSoftmax) {
  const int64_t B = 2, N = 10, D = 16, H = 2;
  for (bool causal : {false, true}) {
    auto a = build_mixer("softmax_dconv", Json::object(), D, H, N, 0, 5);
    for (const char* w : {"conv_q", "conv_k", "conv_v"}) {
      Tensor t = mixer_param(*a, w).value();  // [D, 3]: causal tap 0 is the token itself, centred tap 1
      for (int64_t c = 0; c < D; ++c)
        for (int64_t j = 0; j < 3; ++j) t[c * 3 + j] = j == (causal ? 0 : 1) ? 1.f : 0.f;
    }
    auto b = build_mixer("softmax", Json::object(), D, H, N, 0, 5);
    MixerContext ctx;
    ctx.causal = causal;
    expect_same_mixer(*a, *b, ctx, B, N, D, 1e-5, std::string("dconv") + (causal ? " causal" : ""));
  }
}

TEST(Swin1d, OneWindowIsSoftmax) {
  const int64_t B = 2, N = 12, D = 16, H = 2;
  for (const char* shift : {"none", "always"})
    for (bool causal : {false, true}) {
      auto a = build_mixer("swin1d", {{"window", 12}, {"shift", shift}}, D, H, N, 0, 5);
      auto b = build_mixer("softmax", Json::object(), D, H, N, 0, 5);
      MixerContext ctx;
      ctx.causal = causal;
      expect_same_mixer(*a, *b, ctx, B, N, D, 1e-5, std::string("swin one window ") + shift);
    }
}

TEST(Swin1d, ShiftedWindowsAreSoftmaxMaskedToTheWindows) {
  // window 4, N 11: unshifted windows [0,4) [4,8) [8,11); shifted by 2: [0,2) [2,6) [6,10) [10,11).
  // Layer 0 of "alternate" is unshifted and layer 1 shifted.
  const int64_t N = 11, D = 8, H = 2;
  const Tensor q = normal_tensor({1, H, N, D / H}, 51, 1818), k = normal_tensor({1, H, N, D / H}, 52, 1818),
               v = normal_tensor({1, H, N, D / H}, 53, 1818);
  auto dense = build_mixer("softmax", Json::object(), D, H, N, 0, 5);
  for (int layer : {0, 1}) {
    auto m = build_mixer("swin1d", {{"window", 4}, {"shift", "alternate"}}, D, H, N, layer, 5);
    const int64_t s = layer == 1 ? 2 : 0;
    auto win = [&](int64_t i) { return i < s ? -1 : (i - s) / 4; };
    Tensor mask = Tensor::empty({N, N});
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) mask[i * N + j] = win(i) == win(j) ? 0.f : -INFINITY;
    const Var ref = matmul(softmax(matmul(scale(Var(q), 1.f / std::sqrt(float(D / H))), Var(k), false, true), &mask),
                           Var(v));
    const Tensor o = dynamic_cast<AttentionMixer&>(*m).attend(Var(q), Var(k), Var(v), MixerContext{}).value();
    expect_close(o, ref.value(), 1e-5, "swin layer " + std::to_string(layer));
  }
}

TEST(ProbSparse, EveryQueryActiveIsSoftmax) {
  const int64_t B = 2, N = 9, D = 16, H = 2;
  auto a = build_mixer("probsparse", {{"factor", 100.0}}, D, H, N, 0, 5);
  auto b = build_mixer("softmax", Json::object(), D, H, N, 0, 5);
  expect_same_mixer(*a, *b, MixerContext{}, B, N, D, 1e-5, "probsparse u = N");
}

TEST(ProbSparse, RowsAreTheirSoftmaxRowOrTheMeanOfV) {
  const int64_t N = 40, D = 8, H = 2, d = D / H;  // factor 1: u = ceil(ln 40) = 4 active rows per head
  auto m = build_mixer("probsparse", {{"factor", 1.0}}, D, H, N, 0, 5);
  const Tensor q = normal_tensor({1, H, N, d}, 61, 1818, 2.f), k = normal_tensor({1, H, N, d}, 62, 1818),
               v = normal_tensor({1, H, N, d}, 63, 1818);
  const Tensor o = dynamic_cast<AttentionMixer&>(*m).attend(Var(q), Var(k), Var(v), MixerContext{}).value();
  const Tensor full = matmul(softmax(matmul(scale(Var(q), 1.f / std::sqrt(float(d))), Var(k), false, true)), Var(v)).value();
  const Tensor mean = mean_dim(Var(v), 2, true).value();  // [1, H, 1, d]
  for (int64_t h = 0; h < H; ++h) {
    int active = 0;
    for (int64_t i = 0; i < N; ++i) {
      double e_full = 0, e_mean = 0;
      for (int64_t c = 0; c < d; ++c) {
        const float x = o[(h * N + i) * d + c];
        e_full = std::max(e_full, double(std::fabs(x - full[(h * N + i) * d + c])));
        e_mean = std::max(e_mean, double(std::fabs(x - mean[h * d + c])));
      }
      EXPECT_TRUE(e_full < 1e-5 || e_mean < 1e-5) << "head " << h << " row " << i;
      active += e_full < 1e-5 && e_mean >= 1e-5;
    }
    EXPECT_EQ(active, 4) << "head " << h;
  }
}

// ---- sea ----
// k >= N: every column is selected and sea is exactly softmax attention (the estimate is skipped),
// forward and gradients, per-row and grouped selections, causal and not, with key padding.
TEST(Sea, EveryColumnSelectedIsSoftmax) {
  const int64_t B = 2, D = 16, H = 2;
  for (int64_t N : {11, 37})  // columns of 2-3 keys (grouped key blocks) and of 18-19 (one block each)
  for (bool causal : {false, true})
    for (int64_t qb : {1, 3})
      for (bool padded : {false, true}) {
        const Tensor mask = padding_mask(B, N, {N, 7});
        auto a = build_mixer("sea", {{"columns", N < 30 ? 4 : 2}, {"k", N}, {"query_block", qb}}, D, H, N, 0, 5);
        auto b = build_mixer("softmax", Json::object(), D, H, N, 0, 5);
        MixerContext ctx;
        ctx.causal = causal;
        if (padded) ctx.key_mask = &mask;
        expect_same_mixer(*a, *b, ctx, B, N, D, 1e-5,
                          "sea N=" + std::to_string(N) + " k=N qb=" + std::to_string(qb) + (causal ? " causal" : "") + (padded ? " padded" : ""));
      }
}

// k < N: every row is exact softmax over the keys of exactly kc whole columns (intersected with
// j <= i when causal), and they are the kc columns with the largest FAVOR+ estimate
// A^[i, c] = sum_{j in c, visible} phi(q_i) . phi(k_j), recomputed here in double from the layer's
// projections (drawn as the variant draws them) with phi_r(x) = exp(w_r . x^ - |x^|^2 / 2), x^ =
// x d^-1/4 (the stabilisers are positive per-row factors: no effect on the ranking). Checked by
// enumerating every kc-subset of the visible columns.
// N = 16: 8 columns of 2 keys (grouped into wider key blocks with element masks); N = 64: 4
// columns of 16 keys (the columns are the key blocks).
TEST(Sea, RowsAttendToTheTopColumnsOfTheEstimate) {
  for (int64_t N : {16, 64}) {
  const int64_t H = 2, d = 8, K = N == 16 ? 8 : 4, w = N / K, kc = K / 2, m = 32;  // k = N / 2: round(k K / N) = K / 2
  auto mixer = build_mixer("sea", {{"columns", K}, {"k", N / 2}, {"num_features", m}}, H * d, H, N, 0, 5);
  const Tensor W = ab_favor::draw_projections(m, d, true, RngStream(5, Purpose::mixer, 0, 0));
  const Tensor q = normal_tensor({1, H, N, d}, 71, 1818), k = normal_tensor({1, H, N, d}, 72, 1818),
               v = normal_tensor({1, H, N, d}, 73, 1818);
  const double scale = 1.0 / std::sqrt(double(d)), r = std::pow(double(d), -0.25);
  auto phi = [&](const Tensor& x, int64_t row) {
    std::vector<double> f(static_cast<size_t>(m));
    double n2 = 0;
    for (int64_t c = 0; c < d; ++c) n2 += r * x[row * d + c] * r * x[row * d + c];
    for (int64_t e = 0; e < m; ++e) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c) s += W[e * d + c] * r * x[row * d + c];
      f[e] = std::exp(s - n2 / 2);
    }
    return f;
  };
  for (bool causal : {false, true}) {
    MixerContext ctx;
    ctx.causal = causal;
    const Tensor o = dynamic_cast<AttentionMixer&>(*mixer).attend(Var(q), Var(k), Var(v), ctx).value();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t visible = causal ? i + 1 : N, cols = (visible + w - 1) / w;
        std::vector<double> p(static_cast<size_t>(visible)), est(static_cast<size_t>(cols), 0.0);
        const std::vector<double> fq = phi(q, h * N + i);
        double mx = -1e300;
        for (int64_t j = 0; j < visible; ++j) {
          double s = 0;
          for (int64_t c = 0; c < d; ++c) s += double(q[(h * N + i) * d + c]) * k[(h * N + j) * d + c];
          mx = std::max(mx, p[j] = s * scale);
          const std::vector<double> fk = phi(k, h * N + j);
          for (int64_t e = 0; e < m; ++e) est[j / w] += fq[e] * fk[e];
        }
        for (double& x : p) x = std::exp(x - mx);
        double best = 0, matched = -1;
        for (int64_t set = 0; set < (int64_t(1) << cols); ++set) {
          if (__builtin_popcountll(static_cast<unsigned long long>(set)) != std::min(kc, cols)) continue;
          double score = 0, err = 0, zs = 0;
          std::vector<double> acc(static_cast<size_t>(d), 0.0);
          for (int64_t j = 0; j < visible; ++j)
            if (set >> (j / w) & 1) {
              zs += p[j];
              for (int64_t c = 0; c < d; ++c) acc[c] += p[j] * v[(h * N + j) * d + c];
            }
          for (int64_t c = 0; c < cols; ++c) score += (set >> c & 1) ? est[c] : 0.0;
          for (int64_t c = 0; c < d; ++c) err = std::max(err, std::fabs(acc[c] / zs - o[(h * N + i) * d + c]));
          best = std::max(best, score);
          if (err < 1e-5) matched = score;
        }
        const std::string at = "N " + std::to_string(N) + " head " + std::to_string(h) + " row " + std::to_string(i) + (causal ? " causal" : "");
        ASSERT_GE(matched, 0.0) << at << ": the output is no softmax over " << kc << " whole columns";
        EXPECT_GE(matched, best * (1 - 1e-5)) << at << ": the columns are not the estimate's top " << kc;
      }
  }
  }
}

TEST(Hstu, MatchesADoubleReference) {
  // y = Wo^T (LayerNorm(sum_j SiLU(q_i . k_j) / n v_j) * SiLU(x Wu)), q, k, v = SiLU(x W), per head,
  // n = N (norm = length), written out in double from the mixer's weights.
  const int64_t N = 7, D = 8, H = 2, d = D / H;
  for (bool causal : {false, true}) {
    auto m = build_mixer("hstu", {{"norm", "length"}}, D, H, N, 0, 5);
    const Tensor x = normal_tensor({1, N, D}, 71, 1818);
    MixerContext ctx;
    ctx.causal = causal;
    const Tensor y = m->forward(Var(x), ctx).value();
    auto silu = [](double z) { return z / (1 + std::exp(-z)); };
    auto proj = [&](const char* w, bool act) {
      const Tensor W = mixer_param(*m, w).value();  // [D, D]
      std::vector<double> out(N * D);
      for (int64_t t = 0; t < N; ++t)
        for (int64_t o = 0; o < D; ++o) {
          double s = 0;
          for (int64_t c = 0; c < D; ++c) s += double(x[t * D + c]) * W[c * D + o];
          out[t * D + o] = act ? silu(s) : s;
        }
      return out;
    };
    const auto q = proj("wq", true), k = proj("wk", true), v = proj("wv", true), u = proj("wu", true);
    std::vector<double> a(N * D, 0);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) {
          if (causal && j > i) continue;
          double s = 0;
          for (int64_t c = 0; c < d; ++c) s += q[i * D + h * d + c] * k[j * D + h * d + c];
          for (int64_t c = 0; c < d; ++c) a[i * D + h * d + c] += silu(s) / N * v[j * D + h * d + c];
        }
    const Tensor Wo = mixer_param(*m, "wo").value();
    Tensor ref = Tensor::zeros({1, N, D});
    for (int64_t i = 0; i < N; ++i) {
      double mu = 0, var = 0;
      for (int64_t c = 0; c < D; ++c) mu += a[i * D + c] / D;
      for (int64_t c = 0; c < D; ++c) var += (a[i * D + c] - mu) * (a[i * D + c] - mu) / D;
      std::vector<double> g(D);
      for (int64_t c = 0; c < D; ++c) g[c] = (a[i * D + c] - mu) / std::sqrt(var + 1e-5) * u[i * D + c];
      for (int64_t o = 0; o < D; ++o) {
        double s = 0;
        for (int64_t c = 0; c < D; ++c) s += g[c] * Wo[c * D + o];
        ref[i * D + o] = static_cast<float>(s);
      }
    }
    expect_close(y, ref, 2e-5, std::string("hstu") + (causal ? " causal" : ""));
  }
}
