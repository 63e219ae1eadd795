// The tiled (FlashAttention-style) softmax attention: the fused op against a naive
// double-precision reference written here (forward and all three gradients), the variant against
// the dense `softmax` variant, finite differences, determinism, and O(N) memory.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/flash_attention.hpp"
#include "support/flash_tiles.hpp"
#include "support/random_tensors.hpp"

using namespace ab;

namespace {

Tensor random_tensor(const Shape& s, uint64_t key, float scale = 1.f) { return test::normal_tensor(s, key, 77, scale); }

// Key-padding pattern per batch row: 1 = real token, 0 = pad. Row 0 pads the last third; row 1
// pads the first two keys and every fifth one, so causal rows 0 and 1 see no key at all.
std::vector<int32_t> padding_tokens(int64_t B, int64_t N) {
  std::vector<int32_t> t(static_cast<size_t>(B * N), 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < N; ++j) {
      const bool pad = b % 2 == 0 ? (N > 1 && j >= N - N / 3) : (j < 2 || j % 5 == 4);
      if (pad) t[b * N + j] = 0;
    }
  return t;
}

struct Reference {
  std::vector<double> o, dq, dk, dv;
};

// Dense double-precision attention and its gradients for the upstream gradient g:
// P = softmax(scale q k^T + mask (+ causal)), O = P v, dV = P^T g, dP = g v^T,
// dS = P o (dP - rowsum(P o dP)), dQ = scale dS k, dK = scale dS^T q. Rows without a visible key: O = 0.
Reference naive(const Tensor& qt, const Tensor& kt, const Tensor& vt, const Tensor& gt, const Tensor* mask,
                bool causal, double scale) {
  const int64_t B = qt.dim(0), H = qt.dim(1), Nq = qt.dim(2), N = kt.dim(2), d = qt.dim(3);
  const float *q = qt.data(), *k = kt.data(), *v = vt.data(), *g = gt.data();
  const float* mp = mask ? mask->data() : nullptr;
  Reference r;
  r.o.assign(qt.numel(), 0);
  r.dq.assign(qt.numel(), 0);
  r.dk.assign(kt.numel(), 0);
  r.dv.assign(vt.numel(), 0);
  std::vector<double> p(N), dp(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t qbase = (b * H + h) * Nq * d, base = (b * H + h) * N * d;
      for (int64_t i = 0; i < Nq; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        std::vector<bool> seen(N, false);
        for (int64_t j = 0; j < N; ++j) {
          const double mval = mp ? mp[b * N + j] : 0.0;
          if ((causal && j > i) || std::isinf(mval)) continue;
          seen[j] = true;
          double s = 0;
          for (int64_t c = 0; c < d; ++c) s += double(q[qbase + i * d + c]) * k[base + j * d + c];
          p[j] = s * scale + mval;
          mx = std::max(mx, p[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < N; ++j) {
          p[j] = seen[j] ? std::exp(p[j] - mx) : 0.0;
          z += p[j];
        }
        if (z == 0) continue;  // no visible key: output and gradients 0
        for (int64_t j = 0; j < N; ++j) p[j] /= z;
        double D = 0;
        for (int64_t j = 0; j < N; ++j) {
          dp[j] = 0;
          for (int64_t c = 0; c < d; ++c) {
            r.o[qbase + i * d + c] += p[j] * v[base + j * d + c];
            r.dv[base + j * d + c] += p[j] * g[qbase + i * d + c];
            dp[j] += double(g[qbase + i * d + c]) * v[base + j * d + c];
          }
          D += p[j] * dp[j];
        }
        for (int64_t j = 0; j < N; ++j) {
          const double ds = p[j] * (dp[j] - D) * scale;
          for (int64_t c = 0; c < d; ++c) {
            r.dq[qbase + i * d + c] += ds * k[base + j * d + c];
            r.dk[base + j * d + c] += ds * q[qbase + i * d + c];
          }
        }
      }
    }
  return r;
}

// max |a - ref| <= tol * (1 + max |ref|), and everything finite.
void expect_close(const Tensor& a, const std::vector<double>& ref, double tol, const std::string& what) {
  ASSERT_EQ(a.numel(), static_cast<int64_t>(ref.size())) << what;
  double worst = 0, scale = 0;
  int64_t at = -1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i])) << what << " element " << i;
    scale = std::max(scale, std::fabs(ref[i]));
    const double e = std::fabs(a[i] - ref[i]);
    if (e > worst) worst = e, at = i;
  }
  EXPECT_LE(worst, tol * (1 + scale)) << what << ": worst error at element " << at << " (" << a[at] << " vs "
                                      << ref[at] << ")";
}

struct Case {
  int64_t N, d;
  bool causal, masked;
};

// ||a - ref|| / ||ref||
double relative_error(const Tensor& a, const std::vector<double>& ref) {
  double err = 0, norm = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    err += (a[i] - ref[i]) * (a[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(err / std::max(norm, 1e-300));
}

// tol_o, tol_g: element tolerances of expect_close for the output and the gradients; rel: if > 0,
// also the relative-norm error of each of them.
void check_against_reference(const Case& c, const FlashAttentionOptions& opt, const std::string& label,
                             double tol_o = 2e-5, double tol_g = 5e-5, double rel = 0) {
  const int64_t B = 2, H = 2;
  const Shape s{B, H, c.N, c.d};
  const uint64_t key = static_cast<uint64_t>(c.N * 1000 + c.d * 10 + c.causal * 2 + c.masked);
  // q scaled up so that logits spread widely and the online rescaling matters.
  Var q(random_tensor(s, key + 1, 2.f), true), k(random_tensor(s, key + 2), true), v(random_tensor(s, key + 3), true);
  const Tensor g = random_tensor(s, key + 4);
  const Tensor mask = key_padding_mask(padding_tokens(B, c.N), B, c.N);
  const Tensor* mp = c.masked ? &mask : nullptr;
  const float scale = 1.f / std::sqrt(static_cast<float>(c.d));
  Var o = flash_attention(q, k, v, scale, c.causal, mp, opt);
  o.backward(g);
  const Reference r = naive(q.value(), k.value(), v.value(), g, mp, c.causal, scale);
  const std::string what = label + " N=" + std::to_string(c.N) + " d=" + std::to_string(c.d) +
                           (c.causal ? " causal" : "") + (c.masked ? " masked" : "");
  expect_close(o.value(), r.o, tol_o, what + " output");
  expect_close(q.grad(), r.dq, tol_g, what + " dq");
  expect_close(k.grad(), r.dk, tol_g, what + " dk");
  expect_close(v.grad(), r.dv, tol_g, what + " dv");
  if (rel > 0) {
    EXPECT_LE(relative_error(o.value(), r.o), rel) << what << " output";
    EXPECT_LE(relative_error(v.grad(), r.dv), rel) << what << " dv";
  }
  if (rel > 0 && c.N > 1) {  // with one key dq and dk are exactly 0: only the absolute check applies
    EXPECT_LE(relative_error(q.grad(), r.dq), rel) << what << " dq";
    EXPECT_LE(relative_error(k.grad(), r.dk), rel) << what << " dk";
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int64_t N : {1, 7, 130, 300})
    for (int64_t d : {16, 64})
      for (bool causal : {false, true})
        for (bool masked : {false, true}) out.push_back({N, d, causal, masked});
  return out;
}

}  // namespace

TEST(FlashAttention, MatchesNaiveReferenceWithDefaultTiles) {
  for (const Case& c : cases()) check_against_reference(c, {}, "default tiles");
}

TEST(FlashAttention, MatchesNaiveReferenceWithSmallRaggedTiles) {
  const FlashAttentionOptions opt{.block_q = 23, .block_k = 37, .bwd_block_q = 19, .bwd_block_k = 70};
  for (const Case& c : cases()) check_against_reference(c, opt, "small tiles");
}

TEST(FlashAttention, PortableKernelsMatchNaiveReference) {
  const FlashAttentionOptions opt{.block_q = 50, .block_k = 96, .portable = true};
  for (const Case& c : cases()) check_against_reference(c, opt, "portable");
}

// bf16 tile products: inputs rounded to 8 significant bits (relative 2^-9), fp32 sums. Per element
// the error of a d-term dot product of rounded factors is a few 2^-9 of the terms' magnitude; the
// norm-relative error stays below 1% (about 3e-3 here), far from what a wrong pair, a dropped
// tile row or a missing scale would give (order 1).
TEST(FlashAttention, Bf16TileProductsMatchNaiveReference) {
  if (!flash_attention_has_bf16()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  FlashAttentionOptions def, small;
  def.bf16 = small.bf16 = true;
  small.block_q = 23;  // odd sizes are rounded up to even (pairs of rows)
  small.block_k = 37;
  small.bwd_block_q = 19;
  small.bwd_block_k = 70;
  for (const Case& c : cases()) {
    check_against_reference(c, def, "bf16 default tiles", 3e-2, 3e-2, 1e-2);
    check_against_reference(c, small, "bf16 small tiles", 3e-2, 3e-2, 1e-2);
  }
  for (int64_t d : {1, 5, 24, 130}) check_against_reference({45, d, true, true}, def, "bf16 odd d", 3e-2, 3e-2, 1e-2);
}

TEST(FlashAttention, Bf16IsRoundedAndRefusedWhereUnavailable) {
  const Shape s{1, 2, 200, 64};
  Var q(random_tensor(s, 61)), k(random_tensor(s, 62)), v(random_tensor(s, 63));
  FlashAttentionOptions bf;
  bf.bf16 = true;
  if (!flash_attention_has_bf16()) {
    EXPECT_THROW(flash_attention(q, k, v, 0.125f, false, nullptr, bf), std::invalid_argument);
    return;
  }
  const Tensor o32 = flash_attention(q, k, v, 0.125f, false).value();
  const Tensor o16 = flash_attention(q, k, v, 0.125f, false, nullptr, bf).value();
  std::vector<double> ref(o32.numel());
  for (int64_t i = 0; i < o32.numel(); ++i) ref[i] = o32[i];
  const double e = relative_error(o16, ref);
  EXPECT_GT(e, 1e-4) << "bf16 gave fp32 results: the bf16 path did not run";
  EXPECT_LT(e, 1e-2);
  bf.portable = true;
  EXPECT_THROW(flash_attention(q, k, v, 0.125f, false, nullptr, bf), std::invalid_argument);
}

TEST(SoftmaxTiledVariant, PrecisionNamesItsChoices) {
  const VariantSpec& tiled = VariantRegistry::instance().get("softmax_tiled");
  Json tp = Json::object();
  tp["precision"] = "fp16";
  try {
    resolve_params(tiled.params, tp, "softmax_tiled");
    FAIL() << "precision=fp16 accepted";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("fp32"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bf16"), std::string::npos) << msg;
  }
}

TEST(FlashAttention, OddHeadDimensions) {
  for (int64_t d : {1, 5, 8, 24, 80, 130})
    for (bool causal : {false, true}) check_against_reference({45, d, causal, true}, {}, "odd d");
}

TEST(FlashAttention, QueriesAndKeysOfDifferentLengths) {
  const int64_t B = 2, H = 2, Nq = 33, Nk = 70, d = 16;
  const Tensor mask = key_padding_mask(padding_tokens(B, Nk), B, Nk);
  FlashAttentionOptions small;
  small.block_q = 8;
  small.block_k = 20;
  small.bwd_block_q = 10;
  small.bwd_block_k = 16;
  for (const FlashAttentionOptions& opt : {FlashAttentionOptions{}, small}) {
    Var q(random_tensor({B, H, Nq, d}, 51), true), k(random_tensor({B, H, Nk, d}, 52), true),
        v(random_tensor({B, H, Nk, d}, 53), true);
    const Tensor g = random_tensor({B, H, Nq, d}, 54);
    Var o = flash_attention(q, k, v, 0.3f, false, &mask, opt);
    o.backward(g);
    const Reference r = naive(q.value(), k.value(), v.value(), g, &mask, false, 0.3);
    expect_close(o.value(), r.o, 2e-5, "cross output");
    expect_close(q.grad(), r.dq, 5e-5, "cross dq");
    expect_close(k.grad(), r.dk, 5e-5, "cross dk");
    expect_close(v.grad(), r.dv, 5e-5, "cross dv");
  }
  EXPECT_THROW(flash_attention(Var(random_tensor({1, 1, 3, 4}, 1)), Var(random_tensor({1, 1, 5, 4}, 2)),
                               Var(random_tensor({1, 1, 5, 4}, 3)), 1.f, true),
               std::invalid_argument);
}

TEST(FlashAttention, FullyMaskedRowsGiveZerosNotNaN) {
  const int64_t B = 2, H = 1, N = 20, d = 16;
  const Shape s{B, H, N, d};
  Var q(random_tensor(s, 5), true), k(random_tensor(s, 6), true), v(random_tensor(s, 7), true);
  std::vector<int32_t> tokens(B * N, 1);
  for (int64_t j = 0; j < N; ++j) tokens[j] = 0;  // batch 0: every key is padding
  const Tensor mask = key_padding_mask(tokens, B, N);
  Var o = flash_attention(q, k, v, 0.25f, false, &mask);
  o.backward(random_tensor(s, 8));
  for (int64_t i = 0; i < B * H * N * d; ++i) {
    ASSERT_TRUE(std::isfinite(o.value()[i]) && std::isfinite(q.grad()[i]) && std::isfinite(k.grad()[i]) &&
                std::isfinite(v.grad()[i]));
    if (i < H * N * d) {
      EXPECT_EQ(o.value()[i], 0.f);
      EXPECT_EQ(q.grad()[i], 0.f);
      EXPECT_EQ(k.grad()[i], 0.f);
      EXPECT_EQ(v.grad()[i], 0.f);
    }
  }
}

TEST(FlashAttention, FiniteDifferenceGradients) {
  const Shape s{1, 2, 9, 5};
  const Tensor mask = key_padding_mask({1, 1, 0, 1, 1, 1, 1, 0, 1}, 1, 9);
  const FlashAttentionOptions opt = test::ragged_small_tiles();
  for (bool causal : {false, true}) {
    std::vector<Var> leaves{Var(random_tensor(s, 11), true), Var(random_tensor(s, 12), true),
                            Var(random_tensor(s, 13), true)};
    const GradCheckReport rep = grad_check(
        [&] { return flash_attention(leaves[0], leaves[1], leaves[2], 0.6f, causal, &mask, opt); }, leaves);
    EXPECT_TRUE(rep.passed) << "causal " << causal << ": " << rep.detail << " (max abs " << rep.max_abs_error << ")";
    EXPECT_EQ(rep.checked, 3 * 24);
  }
}

TEST(FlashAttention, DeterministicAndForwardIndependentOfThreads) {
  const Shape s{1, 3, 200, 32};
  const Tensor q = random_tensor(s, 21), k = random_tensor(s, 22), v = random_tensor(s, 23), g = random_tensor(s, 24);
  const FlashAttentionOptions opt{.block_q = 32, .block_k = 64};
  auto run = [&] {
    Var qv(q.clone(), true), kv(k.clone(), true), vv(v.clone(), true);
    Var o = flash_attention(qv, kv, vv, 0.2f, true, nullptr, opt);
    o.backward(g);
    return std::vector<std::vector<float>>{o.value().to_vector(), qv.grad().to_vector(), kv.grad().to_vector(),
                                           vv.grad().to_vector()};
  };
  const int before = num_threads();
  set_num_threads(2);
  const auto a = run(), b = run();
  set_num_threads(1);
  const auto c = run();
  set_num_threads(before);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "result " << i << " differs between runs";
  EXPECT_EQ(a[0], c[0]) << "forward depends on the thread count";
}

TEST(SoftmaxTiledVariant, SameOutputAndGradientsAsDenseSoftmax) {
  const VariantSpec& dense = VariantRegistry::instance().get("softmax");
  const VariantSpec& tiled = VariantRegistry::instance().get("softmax_tiled");
  const int64_t B = 2, D = 32, H = 2;
  for (int64_t N : {7, 130}) {
    // Padding that leaves every row at least one visible key (the dense variant gives NaN otherwise).
    std::vector<int32_t> tokens(B * N, 1);
    for (int64_t j = N - N / 3; j < N; ++j) tokens[N + j] = 0;
    const Tensor mask = key_padding_mask(tokens, B, N);
    for (bool causal : {false, true}) {
      auto md = dense.make({D, H, N, 0, 5, resolve_params(dense.params, Json::object(), "softmax")});
      Json tp = Json::object();
      tp["block_q"] = 16;
      tp["block_k"] = 32;
      auto mt = tiled.make({D, H, N, 0, 5, resolve_params(tiled.params, tp, "softmax_tiled")});
      MixerContext ctx;
      ctx.causal = causal;
      ctx.key_mask = &mask;
      ctx.training = true;
      const Tensor x = random_tensor({B, N, D}, 31 + N);
      const Tensor g = random_tensor({B, N, D}, 32 + N);
      Var xd(x.clone(), true), xt(x.clone(), true);
      Var yd = md->forward(xd, ctx), yt = mt->forward(xt, ctx);
      yd.backward(g);
      yt.backward(g);
      const std::string what = "N=" + std::to_string(N) + (causal ? " causal" : "");
      auto compare = [&](const Tensor& a, const Tensor& b, const std::string& name) {
        ASSERT_EQ(a.shape(), b.shape()) << name;
        double worst = 0, scale = 0;
        for (int64_t i = 0; i < a.numel(); ++i) {
          worst = std::max(worst, double(std::fabs(a[i] - b[i])));
          scale = std::max(scale, double(std::fabs(b[i])));
        }
        EXPECT_LE(worst, 1e-5 * (1 + scale)) << what << " " << name;
      };
      compare(yt.value(), yd.value(), "output");
      compare(xt.grad(), xd.grad(), "dx");
      const auto pd = md->parameters(), pt = mt->parameters();
      ASSERT_EQ(pd.size(), pt.size());
      for (size_t i = 0; i < pd.size(); ++i) {
        compare(pt[i].second.value(), pd[i].second.value(), "initial " + pd[i].first);
        compare(pt[i].second.grad(), pd[i].second.grad(), "d" + pd[i].first);
      }
    }
  }
}

TEST(SoftmaxTiledVariant, MemoryIsLinearInLength) {
  const VariantSpec& tiled = VariantRegistry::instance().get("softmax_tiled");
  const VariantSpec& dense = VariantRegistry::instance().get("softmax");
  const Json tp = resolve_params(tiled.params, Json::object(), "softmax_tiled");
  const int64_t B = 1, N = 1024, D = 64, H = 4;
  const double one_nxn = 4.0 * N * N;  // bytes of a single N x N fp32 buffer (one head)
  for (bool causal : {false, true}) {
    const MemoryMeasure m = measure_mixer_memory(tiled, tp, B, N, D, H, causal);
    const double declared = tiled.cost({B, N, D, H, &tp, causal}).activation_bytes;
    // Everything here is O(N D): about a dozen [N, D] tensors (q, k, v, O, merged heads,
    // projections and their gradients), 2.7 MB, below one N x N buffer of 4 MiB even at D = 64.
    EXPECT_LT(m.peak_bytes, one_nxn) << "forward+backward peak " << m.peak_bytes << " bytes";
    EXPECT_NEAR(m.saved_bytes, declared, 0.1 * declared);
    // Linear in N: doubling the length doubles the peak (an N^2 term would quadruple it).
    const MemoryMeasure m2 = measure_mixer_memory(tiled, tp, B, 2 * N, D, H, causal);
    EXPECT_LT(m2.peak_bytes, 2.2 * m.peak_bytes) << m2.peak_bytes << " vs " << m.peak_bytes;
  }
  // The dense variant keeps H of them.
  const MemoryMeasure md =
      measure_mixer_memory(dense, resolve_params(dense.params, Json::object(), "softmax"), B, N, D, H, false);
  EXPECT_GT(md.saved_bytes, H * one_nxn);
  // The op alone: its forward+backward extra memory is O(N d) (no score buffer of any size).
  const Shape s{1, H, N, 16};
  Var q(random_tensor(s, 41), true), k(random_tensor(s, 42), true), v(random_tensor(s, 43), true);
  const Tensor g = random_tensor(s, 44);
  PeakScope peak;
  {
    Var o = flash_attention(q, k, v, 0.25f, false);
    o.backward(g);
  }
  EXPECT_LT(peak.peak_bytes(), 8 * 4 * H * N * 16 + 4096) << "op peak";
}
