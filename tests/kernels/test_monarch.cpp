// Monarch products, the Monarch-DFT long convolution, PoNet's max poolings and the ponet mixer, each
// against a naive reference written here from the definitions (dense matrices, direct sums, loops).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

#include "attnbench/check.hpp"
#include "attnbench/kernels/monarch.hpp"
#include "support/random_tensors.hpp"
#include "support/mixer_runs.hpp"

using namespace ab;

namespace {

Tensor rand_t(const Shape& s, uint64_t k, float scale = 1.f) { return test::symmetric_tensor(s, 11, k, scale); }

using Mat = std::vector<std::vector<double>>;
Mat zeros(int64_t r, int64_t c) { return Mat(static_cast<size_t>(r), std::vector<double>(static_cast<size_t>(c), 0.0)); }
Mat matmul(const Mat& a, const Mat& b) {
  Mat c = zeros(static_cast<int64_t>(a.size()), static_cast<int64_t>(b[0].size()));
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t k = 0; k < b.size(); ++k)
      for (size_t j = 0; j < b[0].size(); ++j) c[i][j] += a[i][k] * b[k][j];
  return c;
}

// Dense M = P^T blockdiag(R) P blockdiag(L) built from explicit block-diagonal and permutation matrices.
Mat dense_monarch(const Tensor& L, const Tensor& R) {
  const int64_t m1 = L.dim(0), m2 = L.dim(1), n = m1 * m2;
  Mat Ld = zeros(n, n), Rd = zeros(n, n), P = zeros(n, n), PT = zeros(n, n);
  for (int64_t blk = 0; blk < m1; ++blk)  // L: m1 blocks of m2 x m2
    for (int64_t a = 0; a < m2; ++a)
      for (int64_t b = 0; b < m2; ++b) Ld[blk * m2 + a][blk * m2 + b] = L[(blk * m2 + a) * m2 + b];
  for (int64_t blk = 0; blk < m2; ++blk)  // R: m2 blocks of m1 x m1
    for (int64_t a = 0; a < m1; ++a)
      for (int64_t b = 0; b < m1; ++b) Rd[blk * m1 + a][blk * m1 + b] = R[(blk * m1 + a) * m1 + b];
  for (int64_t i = 0; i < m1; ++i)  // (P z)[j*m1 + i] = z[i*m2 + j]
    for (int64_t j = 0; j < m2; ++j) P[j * m1 + i][i * m2 + j] = 1, PT[i * m2 + j][j * m1 + i] = 1;
  return matmul(PT, matmul(Rd, matmul(P, Ld)));
}

// y[b, :, c] = M x[b, :, c]
Tensor apply_dense(const Mat& M, const Tensor& x) {
  const int64_t N = x.dim(1), C = x.dim(2);
  return test::per_position(x.shape(), [&](int64_t b, int64_t i, int64_t c) {
    double s = 0;
    for (int64_t j = 0; j < N; ++j) s += M[i][j] * x[(b * N + j) * C + c];
    return s;
  });
}

class MonarchProduct : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(MonarchProduct, EqualsTheMaterialisedDenseProductForwardAndBackward) {
  const auto [m1, m2] = GetParam();
  const int64_t B = 2, N = m1 * m2, C = 3;
  Var x(rand_t({B, N, C}, 1), true), L(rand_t({m1, m2, m2}, 2), true), R(rand_t({m2, m1, m1}, 3), true);
  const Mat M = dense_monarch(L.value(), R.value());
  const Tensor Mt = monarch_dense(L.value(), R.value());
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) ASSERT_NEAR(Mt[i * N + j], M[i][j], 1e-6) << i << "," << j;
  Var y = monarch(x, L, R);
  const Tensor ref = apply_dense(M, x.value());
  for (int64_t i = 0; i < ref.numel(); ++i) ASSERT_NEAR(y.value()[i], ref[i], 1e-4) << "element " << i;
  // dx = M^T g for a random g.
  const Tensor g = rand_t(y.shape(), 4);
  y.backward(g);
  Mat MT = zeros(N, N);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) MT[i][j] = M[j][i];
  const Tensor dx = apply_dense(MT, g);
  for (int64_t i = 0; i < dx.numel(); ++i) ASSERT_NEAR(x.grad()[i], dx[i], 1e-4) << "dx element " << i;
  const GradCheckReport r = grad_check([&] { return monarch(x, L, R); }, {x, L, R});
  EXPECT_TRUE(r.passed) << r.detail;
}

INSTANTIATE_TEST_SUITE_P(Sizes, MonarchProduct,
                         ::testing::Values(std::pair{2, 2}, std::pair{3, 4}, std::pair{4, 3}, std::pair{4, 4},
                                           std::pair{1, 5}, std::pair{5, 1}));

TEST(MonarchProduct, RejectsMismatchedFactors) {
  Var x(rand_t({1, 12, 2}, 1)), L(rand_t({3, 4, 4}, 2)), R(rand_t({4, 3, 3}, 3)), Rbad(rand_t({3, 4, 4}, 3));
  EXPECT_NO_THROW(monarch(x, L, R));
  EXPECT_THROW(monarch(x, L, Rbad), std::invalid_argument);
  EXPECT_THROW(monarch(Var(rand_t({1, 10, 2}, 4)), L, R), std::invalid_argument);
}

TEST(MonarchFactors, CoverTheLengthWithNearSquareFactors) {
  for (int64_t n : {1, 2, 3, 8, 16, 17, 100, 2048, 32768}) {
    const auto [m1, m2] = monarch_factors(n);
    EXPECT_GE(m1 * m2, n);
    EXPECT_LT((m1 - 1) * m2, n) << n;  // no spare block
    EXPECT_LE(std::abs(m1 - m2), 1) << n;
  }
}

// y[b, t, c] = sum_{s <= t} k[t - s, c] v[b, s, c] + sum_{s >= t} k_rev[s - t, c] v[b, s, c], directly.
Tensor naive_long_conv(const Tensor& v, const Tensor& k, const Tensor* k_rev) {
  const int64_t N = v.dim(1), C = v.dim(2);
  return test::per_position(v.shape(), [&](int64_t b, int64_t t, int64_t c) {
    double s = 0;
    for (int64_t src = 0; src <= t; ++src) s += double(k[(t - src) * C + c]) * v[(b * N + src) * C + c];
    if (k_rev)
      for (int64_t src = t; src < N; ++src) s += double((*k_rev)[(src - t) * C + c]) * v[(b * N + src) * C + c];
    return s;
  });
}

class LongConv : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(LongConv, MonarchDftConvolutionEqualsTheDirectSum) {
  const int64_t N = std::get<0>(GetParam());
  const bool bidirectional = std::get<1>(GetParam());  // named: clang 14 cannot capture bindings
  const int64_t B = 2, C = 3;
  Var v(rand_t({B, N, C}, 5), true), k(rand_t({N, C}, 6, 0.5f), true), kr(rand_t({N, C}, 7, 0.5f), true);
  Tensor y;
  {
    NoGrad ng;
    y = monarch_long_conv(v, k, bidirectional ? kr : Var()).value();
  }
  const Tensor ref = naive_long_conv(v.value(), k.value(), bidirectional ? &kr.value() : nullptr);
  double scale = 1;
  for (int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, double(std::fabs(ref[i])));
  for (int64_t i = 0; i < ref.numel(); ++i) ASSERT_NEAR(y[i], ref[i], 2e-5 * scale) << "element " << i << " N " << N;
  std::vector<Var> leaves{v, k};
  if (bidirectional) leaves.push_back(kr);
  const GradCheckReport r = grad_check([&] { return monarch_long_conv(v, k, bidirectional ? kr : Var()); }, leaves);
  EXPECT_TRUE(r.passed) << r.detail;
}

INSTANTIATE_TEST_SUITE_P(Lengths, LongConv,
                         ::testing::Combine(::testing::Values(1, 2, 5, 8, 13, 32, 100), ::testing::Bool()));

TEST(LongConv, LongSequenceStaysAccurate) {
  const int64_t B = 1, N = 1500, C = 2;
  const Tensor v = rand_t({B, N, C}, 8), k = rand_t({N, C}, 9, 0.05f), kr = rand_t({N, C}, 10, 0.05f);
  Tensor y;
  {
    NoGrad ng;
    y = monarch_long_conv(Var(v), Var(k), Var(kr)).value();
  }
  const Tensor ref = naive_long_conv(v, k, &kr);
  double worst = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) worst = std::max(worst, double(std::fabs(y[i] - ref[i])));
  EXPECT_LT(worst, 1e-3);
}

// ---- max pooling ----

// The pool of position t: [lo, hi).
struct Pool {
  int64_t lo, hi;
};
Tensor naive_pool(const Tensor& x, const std::vector<bool>& real, const std::function<Pool(int64_t)>& pool,
                  Tensor* route_grad = nullptr, const Tensor* g = nullptr) {
  const int64_t B = x.dim(0), N = x.dim(1), C = x.dim(2);
  Tensor y = Tensor::zeros(x.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t c = 0; c < C; ++c) {
        int64_t win = -1;
        for (int64_t s = pool(t).lo; s < pool(t).hi; ++s)
          if (real[static_cast<size_t>(b * N + s)] && (win < 0 || x[(b * N + s) * C + c] > x[(b * N + win) * C + c])) win = s;
        if (win < 0) continue;
        y[(b * N + t) * C + c] = x[(b * N + win) * C + c];
        if (route_grad) (*route_grad)[(b * N + win) * C + c] += (*g)[(b * N + t) * C + c];
      }
  return y;
}

class MaxPool : public ::testing::TestWithParam<std::tuple<bool, int, bool>> {};

TEST_P(MaxPool, EqualsTheNaivePoolAndRoutesGradientsToTheArgmax) {
  const auto [segment, param_size, masked] = GetParam();
  const int64_t size = segment ? param_size : (param_size | 1);  // local windows are odd
  const int64_t B = 2, N = 11, C = 4;
  Tensor xv = rand_t({B, N, C}, 12);
  // Ties: a repeated value in every channel of sequence 0; the first position must win.
  for (int64_t c = 0; c < C; ++c) xv[(0 * N + 3) * C + c] = xv[(0 * N + 4) * C + c] = 5.f;
  std::vector<int32_t> tokens(static_cast<size_t>(B * N), 1);
  for (int64_t n : {0, 4, 9, 10}) tokens[static_cast<size_t>(1 * N + n)] = 0;  // sequence 1: holes and a tail
  const Tensor mask = key_padding_mask(tokens, B, N, 0);
  std::vector<bool> real(tokens.size(), true);
  if (masked)
    for (size_t i = 0; i < tokens.size(); ++i) real[i] = tokens[i] != 0;
  auto pool = [&, segment = segment, size = size](int64_t t) {
    if (segment) return Pool{t / size * size, std::min<int64_t>(N, (t / size + 1) * size)};
    return Pool{std::max<int64_t>(0, t - size / 2), std::min<int64_t>(N, t + size / 2 + 1)};
  };
  Var x(xv, true);
  const Tensor* m = masked ? &mask : nullptr;
  Var y = segment ? segment_max_pool(x, size, m) : local_max_pool(x, size, m);
  const Tensor g = rand_t(y.shape(), 13);
  Tensor dx = Tensor::zeros(x.shape());
  const Tensor ref = naive_pool(xv, real, pool, &dx, &g);
  for (int64_t i = 0; i < ref.numel(); ++i) ASSERT_EQ(y.value()[i], ref[i]) << "element " << i;
  y.backward(g);
  for (int64_t i = 0; i < dx.numel(); ++i) ASSERT_NEAR(x.grad()[i], dx[i], 1e-6) << "dx element " << i;
}

INSTANTIATE_TEST_SUITE_P(SegmentAndLocal, MaxPool,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1, 3, 4, 6, 11, 20), ::testing::Bool()),
                         [](const auto& info) {
                           const bool seg = std::get<0>(info.param);
                           const int w = seg ? std::get<1>(info.param) : (std::get<1>(info.param) | 1);
                           return std::string(seg ? "segment" : "local") + std::to_string(w) +
                                  (std::get<2>(info.param) ? "_masked" : "");
                         });

TEST(MaxPool, EvenLocalWindowIsRejected) {
  EXPECT_THROW(local_max_pool(Var(rand_t({1, 4, 2}, 1)), 2), std::invalid_argument);
}

// ---- the ponet mixer against a naive reference built from its parameters ----

TEST(PoNetVariant, MatchesANaiveReferenceWithAndWithoutPadding) {
  const VariantSpec& spec = VariantRegistry::instance().get("ponet");
  const int64_t B = 2, N = 10, D = 8, H = 2, d = D / H, seg = 4, win = 3;
  const Json params = resolve_params(spec.params, Json{{"segment_size", seg}, {"local_window", win}}, "ponet");
  auto mixer = spec.make(MixerConfig{D, H, N, 0, 3, params});
  std::map<std::string, Tensor> p;
  for (auto& [name, v] : mixer->parameters()) p[name] = v.value();
  const Tensor x = rand_t({B, N, D}, 20);
  std::vector<int32_t> tokens(static_cast<size_t>(B * N), 1);
  for (int64_t n = 7; n < N; ++n) tokens[static_cast<size_t>(N + n)] = 0;
  const Tensor mask = key_padding_mask(tokens, B, N, 0);
  for (bool masked : {false, true}) {
    auto real = [&](int64_t b, int64_t n) { return !masked || tokens[static_cast<size_t>(b * N + n)] != 0; };
    auto proj = [&](const Tensor& w, int64_t b, int64_t n, int64_t o) {
      double s = 0;
      for (int64_t i = 0; i < D; ++i) s += double(x[(b * N + n) * D + i]) * w[i * D + o];
      return s;
    };
    Tensor ref = Tensor::zeros({B, N, D});
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> ga(static_cast<size_t>(D));
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> g(static_cast<size_t>(d), 0.0);
        int64_t count = 0;
        for (int64_t n = 0; n < N; ++n)
          if (real(b, n)) {
            ++count;
            for (int64_t e = 0; e < d; ++e) g[e] += proj(p.at("wq"), b, n, h * d + e);
          }
        for (auto& e : g) e /= count;
        std::vector<double> score(static_cast<size_t>(N), -1e300);
        double mx = -1e300, z = 0;
        for (int64_t n = 0; n < N; ++n)
          if (real(b, n)) {
            double s = 0;
            for (int64_t e = 0; e < d; ++e) s += g[e] * proj(p.at("wk"), b, n, h * d + e);
            score[n] = s / std::sqrt(double(d));
            mx = std::max(mx, score[n]);
          }
        for (int64_t n = 0; n < N; ++n) z += real(b, n) ? std::exp(score[n] - mx) : 0.0;
        for (int64_t e = 0; e < d; ++e) {
          double s = 0;
          for (int64_t n = 0; n < N; ++n)
            if (real(b, n)) s += std::exp(score[n] - mx) / z * proj(p.at("wk"), b, n, h * d + e);
          ga[h * d + e] = s;
        }
      }
      std::vector<double> comb(static_cast<size_t>(N * D), 0.0);
      for (int64_t t = 0; t < N; ++t) {
        if (!real(b, t)) continue;  // padded outputs are 0
        for (int64_t c = 0; c < D; ++c) {
          double smax = -1e300, lmax = -1e300;
          for (int64_t s = t / seg * seg; s < std::min(N, (t / seg + 1) * seg); ++s)
            if (real(b, s)) smax = std::max(smax, proj(p.at("ws"), b, s, c));
          for (int64_t s = std::max<int64_t>(0, t - win / 2); s <= std::min(N - 1, t + win / 2); ++s)
            if (real(b, s)) lmax = std::max(lmax, proj(p.at("wl"), b, s, c));
          comb[t * D + c] = (ga[c] + smax) * proj(p.at("wo"), b, t, c) + lmax;
        }
      }
      for (int64_t t = 0; t < N; ++t)
        for (int64_t o = 0; o < D; ++o) {
          double s = 0;
          for (int64_t c = 0; c < D; ++c) s += comb[t * D + c] * p.at("wout")[c * D + o];
          ref[(b * N + t) * D + o] = static_cast<float>(s);
        }
    }
    MixerContext ctx;
    if (masked) ctx.key_mask = &mask;
    const Tensor y = test::forward_value(*mixer, x, ctx);
    for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4) << "element " << i << " masked " << masked;
  }
}

TEST(M2Variant, CausalFormIgnoresTheFutureAndGradientsHoldAtALengthWhose2NIsNotASquare) {
  // The registry-wide suite runs N = 8 (2N = 16 = 4 x 4); N = 12 pads the transform to 5 x 5 = 25.
  const VariantSpec& spec = VariantRegistry::instance().get("m2");
  // sin_freq 1: see the variant's check_params (central differences and three sin(10 x) layers).
  const Json params = resolve_params(spec.params, Json{{"sin_freq", 1.0}}, "m2");
  const int64_t B = 2, N = 12, D = 16;
  auto mixer = spec.make(MixerConfig{D, 2, N, 0, 5, params});
  const Tensor x = rand_t({B, N, D}, 30);
  MixerContext bi, causal;
  causal.causal = true;
  Tensor yb, yc, yc2;
  Tensor xp = x.clone();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = (b * N + 6) * D; i < (b + 1) * N * D; ++i) xp[i] += 1.f;
  {
    NoGrad ng;
    yb = mixer->forward(Var(x), bi).value();
    yc = mixer->forward(Var(x), causal).value();
    yc2 = mixer->forward(Var(xp), causal).value();
  }
  double diff = 0;
  for (int64_t i = 0; i < yb.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(yb[i]) && std::isfinite(yc[i]));
    diff = std::max(diff, double(std::fabs(yb[i] - yc[i])));
  }
  EXPECT_GT(diff, 1e-4);  // the encoder form uses the reverse filter
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = b * N * D; i < (b * N + 6) * D; ++i) ASSERT_NEAR(yc2[i], yc[i], 1e-5) << i;
  for (bool c : {false, true}) {
    std::vector<Var> leaves{Var(x.clone(), true)};
    for (auto& [name, v] : mixer->parameters()) leaves.push_back(v);
    MixerContext ctx;
    ctx.causal = c;
    const GradCheckReport r = grad_check([&] { return mixer->forward(leaves[0], ctx); }, leaves);
    EXPECT_TRUE(r.passed) << (c ? "causal: " : "bidirectional: ") << r.detail;
  }
}

TEST(M2Variant, DecodingPastMaxLengthEqualsTheCausalForward) {
  // max_length 5 sets the filter grid; 12 tokens make the decoder extend its taps twice (5 -> 10 -> 20).
  const VariantSpec& spec = VariantRegistry::instance().get("m2");
  const Json params = resolve_params(spec.params, Json::object(), "m2");
  const int64_t B = 2, N = 12, D = 8;
  auto mixer = spec.make(MixerConfig{D, 2, 5, 0, 9, params});
  const Tensor x = rand_t({B, N, D}, 40);
  MixerContext ctx;
  ctx.causal = true;
  const Tensor full = test::forward_value(*mixer, x, ctx);
  std::unique_ptr<DecodeState> state;
  const Tensor decoded = decode_sequence(*mixer, x, ctx, &state);
  const test::Deviation dev = test::deviation(decoded, full);
  EXPECT_LE(dev.worst, 1e-4 * std::max(1.0, dev.largest));
  EXPECT_EQ(state->bytes(), 4 * (B * N * D + B * 2 * 3 * D + 20 * D));  // values, short-conv history, taps
}

}  // namespace
