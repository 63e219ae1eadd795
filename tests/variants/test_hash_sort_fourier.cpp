// The FFT service, fnet, reformer_lsh and sinkhorn against naive references written here:
// direct DFTs in double, dense per-round visibility masks for LSH attention, and dense block
// mixtures for Sinkhorn attention; finite-difference gradients of every fused op.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <numeric>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/fft.hpp"
#include "attnbench/ops.hpp"

using namespace ab;

namespace {

using cd = std::complex<double>;
constexpr double kPi = 3.14159265358979323846;

Tensor rand_t(const Shape& s, uint64_t k, float scale = 1.f) {
  RngStream r(99, Purpose::check, k);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = r.normal() * scale;
  return t;
}

// Naive DFT of x (stride in elements), sign -1 forward / +1 inverse, unnormalised.
std::vector<cd> naive_dft(const std::vector<cd>& x, int sign) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<cd> X(n);
  for (int64_t k = 0; k < n; ++k) {
    cd s = 0;
    for (int64_t t = 0; t < n; ++t) s += x[t] * std::polar(1.0, sign * 2 * kPi * double((k * t) % n) / double(n));
    X[k] = s;
  }
  return X;
}

double tol_for(int64_t n) { return 2e-5 * std::max<double>(1.0, double(n)) + 1e-5; }

const VariantSpec& spec_of(const char* name) { return VariantRegistry::instance().get(name); }

Json params_of(const char* name, Json given) { return resolve_params(spec_of(name).params, given, name); }

Var param_named(const Mixer& m, const std::string& name) {
  for (auto& [n, v] : m.parameters())
    if (n == name) return v;
  ADD_FAILURE() << "no parameter " << name;
  return Var();
}

void expect_checks_pass(const char* name, const Json& params) {
  for (const auto& r : check_variant(spec_of(name), params))
    EXPECT_TRUE(r.passed) << name << " " << params.dump() << " " << r.check << ": " << r.detail;
}

// ---------------------------------------------------------------------------------------------
// FFT service

TEST(FftService, ContiguousTransformsMatchANaiveDft) {
  for (int64_t n : {1, 2, 3, 5, 7, 8, 12, 17, 64, 100, 127, 243}) {
    const int64_t batch = 3;
    const Tensor xr = rand_t({batch, n}, 1 + n), xi = rand_t({batch, n}, 2 + n);
    std::vector<fft::cfloat> x(batch * n), X(batch * n), back(batch * n);
    for (int64_t i = 0; i < batch * n; ++i) x[i] = {xr[i], xi[i]};
    fft::fft(x.data(), X.data(), n, batch);
    fft::ifft(X.data(), back.data(), n, batch);
    std::vector<fft::cfloat> R(batch * fft::rfft_length(n));
    fft::rfft(xr.data(), R.data(), n, batch);
    std::vector<float> rback(batch * n);
    const std::vector<fft::cfloat> R_copy = R;
    fft::irfft(R.data(), rback.data(), n, batch);
    for (size_t i = 0; i < R.size(); ++i) ASSERT_EQ(R[i], R_copy[i]) << "c2r modified its input, n " << n;
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<cd> row(n), rrow(n);
      for (int64_t t = 0; t < n; ++t) row[t] = cd(x[b * n + t].real(), x[b * n + t].imag()), rrow[t] = xr[b * n + t];
      const auto ref = naive_dft(row, -1), rref = naive_dft(rrow, -1);
      for (int64_t k = 0; k < n; ++k) {
        EXPECT_NEAR(X[b * n + k].real(), ref[k].real(), tol_for(n)) << "n " << n;
        EXPECT_NEAR(X[b * n + k].imag(), ref[k].imag(), tol_for(n)) << "n " << n;
        EXPECT_NEAR(back[b * n + k].real(), x[b * n + k].real(), 1e-5) << "n " << n;
        EXPECT_NEAR(back[b * n + k].imag(), x[b * n + k].imag(), 1e-5) << "n " << n;
        EXPECT_NEAR(rback[b * n + k], xr[b * n + k], 1e-5) << "n " << n;
      }
      for (int64_t k = 0; k < fft::rfft_length(n); ++k) {
        EXPECT_NEAR(R[b * fft::rfft_length(n) + k].real(), rref[k].real(), tol_for(n)) << "n " << n;
        EXPECT_NEAR(R[b * fft::rfft_length(n) + k].imag(), rref[k].imag(), tol_for(n)) << "n " << n;
      }
    }
  }
}

TEST(FftService, StridedAxesAndMisalignedArrays) {
  // x [B, n, C] real: transform the middle axis (stride C, loops over B and C), real-to-complex into
  // [B, n/2+1, C], and complex in place, from an array offset by one float (misaligned for SIMD).
  for (int64_t n : {6, 9, 16, 30}) {
    const int64_t B = 2, C = 5, nh = fft::rfft_length(n);
    const Tensor x = rand_t({B, n, C}, 10 + n);
    std::vector<fft::cfloat> X(B * nh * C);
    fft::r2c(x.data(), X.data(), fft::Layout{n, C, C, {{B, n * C, nh * C}, {C, 1, 1}}});
    std::vector<float> raw(1 + 2 * B * n * C);
    auto* y = reinterpret_cast<fft::cfloat*>(raw.data() + 1);  // 4-byte offset
    for (int64_t i = 0; i < B * n * C; ++i) y[i] = {x[i], -0.5f * x[i]};
    fft::c2c(y, y, fft::Layout{n, C, C, {{B, n * C, n * C}, {C, 1, 1}}}, fft::Direction::forward);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        std::vector<cd> col(n), ccol(n);
        for (int64_t t = 0; t < n; ++t) col[t] = x[(b * n + t) * C + c], ccol[t] = cd(1.0, -0.5) * double(x[(b * n + t) * C + c]);
        const auto ref = naive_dft(col, -1), cref = naive_dft(ccol, -1);
        for (int64_t k = 0; k < nh; ++k) {
          EXPECT_NEAR(X[(b * nh + k) * C + c].real(), ref[k].real(), tol_for(n));
          EXPECT_NEAR(X[(b * nh + k) * C + c].imag(), ref[k].imag(), tol_for(n));
        }
        for (int64_t k = 0; k < n; ++k) {
          EXPECT_NEAR(y[(b * n + k) * C + c].real(), cref[k].real(), tol_for(n));
          EXPECT_NEAR(y[(b * n + k) * C + c].imag(), cref[k].imag(), tol_for(n));
        }
      }
  }
}

TEST(FftService, LargeBatchesRunInChunksAndPlansAreCached) {
  // 3000 rows of 48 exceed one task's share (chunks of 682 rows plus a remainder).
  const int64_t n = 48, batch = 3000;
  const Tensor x = rand_t({batch, n}, 77);
  std::vector<fft::cfloat> X(batch * fft::rfft_length(n));
  fft::rfft(x.data(), X.data(), n, batch);
  for (int64_t b : {int64_t(0), int64_t(681), int64_t(682), int64_t(2047), batch - 1}) {
    std::vector<cd> row(n);
    for (int64_t t = 0; t < n; ++t) row[t] = x[b * n + t];
    const auto ref = naive_dft(row, -1);
    for (int64_t k = 0; k < fft::rfft_length(n); ++k) {
      EXPECT_NEAR(X[b * fft::rfft_length(n) + k].real(), ref[k].real(), tol_for(n)) << "row " << b;
      EXPECT_NEAR(X[b * fft::rfft_length(n) + k].imag(), ref[k].imag(), tol_for(n)) << "row " << b;
    }
  }
  const int64_t plans = fft::cache_stats().plans;
  std::vector<fft::cfloat> X2(X.size());
  fft::rfft(x.data(), X2.data(), n, batch);
  EXPECT_EQ(fft::cache_stats().plans, plans) << "a repeated problem made new plans";
  EXPECT_EQ(X, X2);
  EXPECT_EQ(fft::good_size(1), 1);
  EXPECT_EQ(fft::good_size(11), 12);
  EXPECT_EQ(fft::good_size(97), 98);
  EXPECT_EQ(fft::good_size(4096), 4096);
}

// ---------------------------------------------------------------------------------------------
// FNet

// Re(sum_{m,e} x[m, e] exp(-2 pi i (n m / N + d e / D))) per batch, in double.
std::vector<double> naive_fnet(const Tensor& x) {
  const int64_t B = x.dim(0), N = x.dim(1), D = x.dim(2);
  std::vector<double> y(B * N * D, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d) {
        double s = 0;
        for (int64_t m = 0; m < N; ++m)
          for (int64_t e = 0; e < D; ++e)
            s += x[(b * N + m) * D + e] * std::cos(2 * kPi * (double((n * m) % N) / N + double((d * e) % D) / D));
        y[(b * N + n) * D + d] = s;
      }
  return y;
}

TEST(FNetVariant, MatchesADirectDftForwardAndBackward) {
  for (auto [N, D] : std::vector<std::pair<int64_t, int64_t>>{{6, 5}, {8, 8}, {7, 12}, {1, 3}}) {
    const int64_t B = 2;
    const Tensor x = rand_t({B, N, D}, 200 + N * D);
    auto mixer = spec_of("fnet").make(MixerConfig{D, 1, N, 0, 1, params_of("fnet", Json::object())});
    Var xv(x.clone(), true);
    Var y = mixer->forward(xv, MixerContext{});
    const auto ref = naive_fnet(x);
    for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(y.value()[i], ref[i], 1e-4 * N * D) << N << "x" << D;
    // Backward: the adjoint of x -> Re(F x F) is g -> Re(F g F), checked against the naive map.
    const Tensor g = rand_t({B, N, D}, 300 + N * D);
    y.backward(g);
    const auto gref = naive_fnet(g);
    for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(xv.grad()[i], gref[i], 1e-4 * N * D) << N << "x" << D;
    // ortho scaling divides by sqrt(N D)
    auto ortho = spec_of("fnet").make(MixerConfig{D, 1, N, 0, 1, params_of("fnet", {{"normalize", "ortho"}})});
    NoGrad ng;
    const Tensor yo = ortho->forward(Var(x), MixerContext{}).value();
    for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(yo[i], ref[i] / std::sqrt(double(N * D)), 1e-4);
  }
}

TEST(FNetVariant, FiniteDifferenceGradient) {
  Var x(rand_t({2, 9, 6}, 5), true);
  const GradCheckReport r = grad_check([&] { return fourier_mix(x, 0.3f); }, {x});
  EXPECT_TRUE(r.passed) << r.detail;
  expect_checks_pass("fnet", {{"normalize", "ortho"}});
}

// ---------------------------------------------------------------------------------------------
// Reformer LSH

struct LshRef {
  int64_t n_hashes, chunk_len, n_buckets, before, after;
  bool normalize, lra_scale;
};

// The documented algorithm with dense per-round visibility: y [B, N, D] from x and the mixer's
// W_qk, W_v, W_o; rotations from RngStream(seed, mixer, step, layer, head), drawn in the order
// [round][d][n_buckets / 2].
std::vector<double> naive_reformer(const Tensor& x, const Tensor& wqk, const Tensor& wv, const Tensor& wo, int64_t H,
                                   const LshRef& p, uint64_t seed, int64_t step, int layer, const std::vector<int>& pad) {
  const int64_t B = x.dim(0), N = x.dim(1), D = x.dim(2), d = D / H, half = p.n_buckets / 2;
  const int64_t nc = (N + p.chunk_len - 1) / p.chunk_len;
  std::vector<double> merged(B * N * D, 0.0), y(B * N * D, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<std::vector<double>> q(N, std::vector<double>(d, 0.0)), v = q, k = q;
      for (int64_t t = 0; t < N; ++t)
        for (int64_t c = 0; c < d; ++c)
          for (int64_t e = 0; e < D; ++e) {
            q[t][c] += double(x[(b * N + t) * D + e]) * wqk[e * D + h * d + c];
            v[t][c] += double(x[(b * N + t) * D + e]) * wv[e * D + h * d + c];
          }
      for (int64_t t = 0; t < N; ++t) {
        double nrm = 0;
        for (double a : q[t]) nrm += a * a;
        for (int64_t c = 0; c < d; ++c) k[t][c] = p.normalize ? q[t][c] / std::sqrt(nrm) : q[t][c];
      }
      RngStream rs(seed, Purpose::mixer, static_cast<uint64_t>(step), static_cast<uint64_t>(layer), static_cast<uint64_t>(h));
      std::vector<float> rot(p.n_hashes * d * half);
      for (auto& r : rot) r = rs.normal();
      // visible[r][t][j]
      std::vector<std::vector<std::vector<bool>>> vis(p.n_hashes, std::vector<std::vector<bool>>(N, std::vector<bool>(N, false)));
      for (int64_t r = 0; r < p.n_hashes; ++r) {
        std::vector<int64_t> bucket(N);
        for (int64_t t = 0; t < N; ++t) {
          if (pad[b * N + t]) {
            bucket[t] = p.n_buckets;
            continue;
          }
          std::vector<double> cand(2 * half, 0.0);
          for (int64_t j = 0; j < half; ++j) {
            for (int64_t c = 0; c < d; ++c) cand[j] += q[t][c] * rot[(r * d + c) * half + j];
            cand[half + j] = -cand[j];
          }
          bucket[t] = std::max_element(cand.begin(), cand.end()) - cand.begin();
        }
        std::vector<int64_t> order(N);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return bucket[a] < bucket[c]; });
        std::vector<int64_t> chunk_of(N);
        for (int64_t s = 0; s < N; ++s) chunk_of[order[s]] = s / p.chunk_len;
        for (int64_t t = 0; t < N; ++t)
          for (int64_t j = 0; j < N; ++j) {
            const int64_t diff = ((chunk_of[j] - chunk_of[t]) % nc + nc) % nc;  // cyclic offset of j's chunk
            bool in = false;
            for (int64_t off = -p.before; off <= p.after; ++off) in = in || ((off % nc + nc) % nc) == diff;
            vis[r][t][j] = in;
          }
      }
      const double scale = p.lra_scale ? std::sqrt(double(d)) : 1.0 / std::sqrt(double(d));
      for (int64_t t = 0; t < N; ++t) {
        std::vector<double> s_list, w_list;
        std::vector<int64_t> j_list;
        for (int64_t r = 0; r < p.n_hashes; ++r)
          for (int64_t j = 0; j < N; ++j) {
            if (!vis[r][t][j] || pad[b * N + j]) continue;
            double s = -5e4;
            if (j != t) {
              s = 0;
              for (int64_t c = 0; c < d; ++c) s += q[t][c] * k[j][c];
              s *= scale;
            }
            s_list.push_back(s);
            j_list.push_back(j);
          }
        if (s_list.empty()) continue;
        const double mx = *std::max_element(s_list.begin(), s_list.end());
        double z = 0;
        for (double s : s_list) z += std::exp(s - mx);
        for (size_t i = 0; i < s_list.size(); ++i)
          for (int64_t c = 0; c < d; ++c) merged[(b * N + t) * D + h * d + c] += std::exp(s_list[i] - mx) / z * v[j_list[i]][c];
      }
    }
  for (int64_t i = 0; i < B * N; ++i)
    for (int64_t o = 0; o < D; ++o) {
      double s = 0;
      for (int64_t e = 0; e < D; ++e) s += merged[i * D + e] * wo[e * D + o];
      y[i * D + o] = s;
    }
  return y;
}

void compare_reformer(const Json& given, int64_t B, int64_t N, int64_t D, int64_t H, bool with_pad, int64_t step, double tol) {
  const Json p = params_of("reformer_lsh", given);
  auto mixer = spec_of("reformer_lsh").make(MixerConfig{D, H, N, 2, 5, p});
  const Tensor x = rand_t({B, N, D}, 500 + N);
  std::vector<int> pad(B * N, 0);
  std::vector<int32_t> tokens(B * N, 1);
  if (with_pad)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = N - 2 - b; t < N; ++t) pad[b * N + t] = 1, tokens[b * N + t] = 0;
  const Tensor kmask = key_padding_mask(tokens, B, N);
  MixerContext ctx;
  ctx.seed = 11;
  ctx.step = step;
  ctx.layer = 2;
  ctx.key_mask = with_pad ? &kmask : nullptr;
  NoGrad ng;
  const Tensor y = mixer->forward(Var(x), ctx).value();
  const int64_t c = p.at("chunk_len").get<int64_t>();
  const int64_t nb = p.at("n_buckets").get<int64_t>() > 0 ? p.at("n_buckets").get<int64_t>()
                                                           : std::max<int64_t>(2, 2 * ((N + 2 * c - 1) / (2 * c)));
  const LshRef ref{p.at("n_hashes").get<int64_t>(), c, nb, p.at("chunks_before").get<int64_t>(),
                   p.at("chunks_after").get<int64_t>(), p.at("normalize_keys").get<bool>(), p.at("lra_compat_scale").get<bool>()};
  const auto yr = naive_reformer(x, param_named(*mixer, "wqk").value(), param_named(*mixer, "wv").value(),
                                 param_named(*mixer, "wo").value(), H, ref, ctx.seed, ctx.step, ctx.layer, pad);
  double worst = 0;
  for (int64_t i = 0; i < y.numel(); ++i) worst = std::max(worst, std::fabs(y[i] - yr[i]));
  EXPECT_LT(worst, tol) << given.dump() << " N " << N << " pad " << with_pad;
}

// Full attention over the shared-QK keys with the self position excluded, written out directly.
TEST(ReformerVariant, OneChunkCoveringNIsFullSharedQkAttentionWithoutSelf) {
  const int64_t B = 2, N = 12, D = 8, H = 2, d = D / H;
  for (const Json& given : {Json{{"chunk_len", 16}}, Json{{"chunk_len", 6}, {"n_hashes", 3}},
                            Json{{"chunk_len", 12}, {"n_buckets", 4}, {"n_hashes", 2}}}) {
    auto mixer = spec_of("reformer_lsh").make(MixerConfig{D, H, N, 0, 3, params_of("reformer_lsh", given)});
    const Tensor x = rand_t({B, N, D}, 31);
    std::vector<int32_t> tokens(B * N, 1);
    tokens[N - 1] = tokens[N - 2] = 0;  // batch 0: two padded keys
    const Tensor kmask = key_padding_mask(tokens, B, N);
    MixerContext ctx;
    ctx.key_mask = &kmask;
    ctx.seed = 4;
    NoGrad ng;
    const Tensor y = mixer->forward(Var(x), ctx).value();
    const Tensor wqk = param_named(*mixer, "wqk").value();
    const Tensor wv = param_named(*mixer, "wv").value();
    const Tensor wo = param_named(*mixer, "wo").value();
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> merged(N * D, 0.0);
      for (int64_t h = 0; h < H; ++h) {
        auto proj = [&](const Tensor& w, int64_t t, int64_t c) {
          double s = 0;
          for (int64_t e = 0; e < D; ++e) s += double(x[(b * N + t) * D + e]) * w[e * D + h * d + c];
          return s;
        };
        for (int64_t i = 0; i < N; ++i) {
          std::vector<double> w(N, 0.0);
          double mx = -1e300;
          for (int64_t j = 0; j < N; ++j) {
            if (j == i || tokens[b * N + j] == 0) continue;
            double dot = 0, nrm = 0;
            for (int64_t c = 0; c < d; ++c) dot += proj(wqk, i, c) * proj(wqk, j, c), nrm += proj(wqk, j, c) * proj(wqk, j, c);
            w[j] = dot / std::sqrt(nrm) / std::sqrt(double(d));
            mx = std::max(mx, w[j]);
          }
          double z = 0;
          for (int64_t j = 0; j < N; ++j) {
            w[j] = (j == i || tokens[b * N + j] == 0) ? 0.0 : std::exp(w[j] - mx);
            z += w[j];
          }
          for (int64_t c = 0; c < d; ++c)
            for (int64_t j = 0; j < N; ++j) merged[i * D + h * d + c] += w[j] / z * proj(wv, j, c);
        }
      }
      for (int64_t i = 0; i < N; ++i)
        for (int64_t o = 0; o < D; ++o) {
          double s = 0;
          for (int64_t e = 0; e < D; ++e) s += merged[i * D + e] * wo[e * D + o];
          EXPECT_NEAR(y[(b * N + i) * D + o], s, 2e-5) << given.dump();
        }
    }
  }
}

TEST(ReformerVariant, SparseChunksMatchADenseVisibilityReference) {
  compare_reformer({{"chunk_len", 4}}, 2, 24, 16, 2, false, 0, 2e-5);
  compare_reformer({{"chunk_len", 3}, {"n_hashes", 3}, {"n_buckets", 4}}, 2, 20, 16, 2, true, 7, 2e-5);
  compare_reformer({{"chunk_len", 5}, {"n_hashes", 2}, {"chunks_after", 1}, {"chunks_before", 0}}, 1, 23, 8, 2, true, 3, 2e-5);
  compare_reformer({{"chunk_len", 4}, {"normalize_keys", false}, {"lra_compat_scale", true}, {"n_hashes", 2}}, 1, 16, 8, 1,
                   false, 1, 1e-3);
}

TEST(ReformerVariant, HashesDependOnTheStep) {
  const int64_t B = 1, N = 32, D = 8;
  auto mixer = spec_of("reformer_lsh").make(MixerConfig{D, 1, N, 0, 3, params_of("reformer_lsh", {{"chunk_len", 4}})});
  const Tensor x = rand_t({B, N, D}, 8);
  NoGrad ng;
  MixerContext a, b;
  b.step = 1;
  const Tensor ya = mixer->forward(Var(x), a).value(), yb = mixer->forward(Var(x), b).value();
  double diff = 0;
  for (int64_t i = 0; i < ya.numel(); ++i) diff = std::max(diff, double(std::fabs(ya[i] - yb[i])));
  EXPECT_GT(diff, 1e-4) << "a new step should redraw the rotations";
}

TEST(ReformerVariant, FiniteDifferenceGradientsWithSparseChunks) {
  // Hashing is piecewise constant; with a fixed seed and step no bucket flips under these steps.
  for (const Json& given : {Json{{"chunk_len", 3}, {"n_hashes", 2}, {"n_buckets", 4}},
                            Json{{"chunk_len", 2}, {"chunks_after", 1}, {"normalize_keys", false}}}) {
    const Json p = params_of("reformer_lsh", given);
    auto mixer = spec_of("reformer_lsh").make(MixerConfig{8, 2, 12, 0, 9, p});
    std::vector<Var> leaves{Var(rand_t({2, 12, 8}, 41), true)};
    for (auto& [n, v] : mixer->parameters()) leaves.push_back(v);
    std::vector<int32_t> tokens(24, 1);
    tokens[11] = tokens[10] = tokens[23] = 0;
    const Tensor kmask = key_padding_mask(tokens, 2, 12);
    MixerContext ctx;
    ctx.seed = 2;
    ctx.step = 5;
    ctx.key_mask = &kmask;
    GradCheckOptions opt;
    opt.step = 2e-3f;
    opt.max_elements = 48;
    const GradCheckReport r = grad_check([&] { return mixer->forward(leaves[0], ctx); }, leaves, opt);
    EXPECT_TRUE(r.passed) << given.dump() << ": " << r.detail;
  }
  expect_checks_pass("reformer_lsh", {{"chunk_len", 4}, {"n_hashes", 3}, {"n_buckets", 2}});
  expect_checks_pass("reformer_lsh", {{"chunk_len", 8}, {"normalize_keys", false}, {"lra_compat_scale", true}});
}

// ---------------------------------------------------------------------------------------------
// Sinkhorn

struct SinkRef {
  int64_t block;
  bool sinkhorn, sum;
  int iters;
  double temperature;
};

// Dense reference of the documented algorithm per head: q, k, v [B, H, N, d], W_P [d, M], b_P [M].
std::vector<double> naive_sinkhorn(const Tensor& q, const Tensor& k_in, const Tensor& v_in, const Tensor& wp,
                                   const Tensor& bp, const SinkRef& p, const std::vector<int>& pad) {
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3), M = wp.dim(1);
  const int64_t b = std::min(p.block, N), nb = (N + b - 1) / b;
  std::vector<double> out(B * H * N * d, 0.0);
  for (int64_t bi = 0; bi < B; ++bi) {
    std::vector<bool> block_dead(nb, true), slot_ok(b, false);
    for (int64_t t = 0; t < N; ++t)
      if (!pad[bi * N + t]) block_dead[t / b] = false;
    if (std::all_of(block_dead.begin(), block_dead.end(), [](bool x) { return x; })) block_dead.assign(nb, false);
    for (int64_t t = 0; t < N; ++t)
      if (!pad[bi * N + t] && !block_dead[t / b]) slot_ok[t % b] = true;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = (bi * H + h) * N * d;
      auto K = [&](int64_t t, int64_t c) { return pad[bi * N + t] ? 0.0 : double(k_in[base + t * d + c]); };
      auto V = [&](int64_t t, int64_t c) { return pad[bi * N + t] ? 0.0 : double(v_in[base + t * d + c]); };
      // sorting logits and Pi
      std::vector<std::vector<double>> R(nb, std::vector<double>(nb));
      for (int64_t pb = 0; pb < nb; ++pb)
        for (int64_t l = 0; l < nb; ++l) {
          double s = bp[l];
          for (int64_t c = 0; c < d; ++c) {
            double sum = 0;
            for (int64_t t = pb * b; t < std::min(N, (pb + 1) * b); ++t) sum += K(t, c);
            s += sum * wp[c * M + l];
          }
          R[pb][l] = block_dead[l] ? -INFINITY : (p.sinkhorn ? s / p.temperature : s);
        }
      std::vector<std::vector<double>> Pi = R;
      auto lse_norm = [&](bool rows) {
        for (int64_t a = 0; a < nb; ++a) {
          double mx = -INFINITY;
          for (int64_t j = 0; j < nb; ++j) mx = std::max(mx, rows ? Pi[a][j] : Pi[j][a]);
          if (mx == -INFINITY) continue;
          double z = 0;
          for (int64_t j = 0; j < nb; ++j) z += std::exp((rows ? Pi[a][j] : Pi[j][a]) - mx);
          for (int64_t j = 0; j < nb; ++j) (rows ? Pi[a][j] : Pi[j][a]) -= mx + std::log(z);
        }
      };
      if (p.sinkhorn) {
        for (int it = 0; it < p.iters; ++it) lse_norm(true), lse_norm(false);
      } else {
        lse_norm(true);
      }
      for (auto& row : Pi)
        for (auto& e : row) e = std::exp(e);
      for (int64_t pb = 0; pb < nb; ++pb) {
        // keys: local block then sorted slots
        std::vector<std::vector<double>> keys, vals;
        std::vector<bool> ok;
        std::vector<int> grp;
        for (int64_t t = pb * b; t < std::min(N, (pb + 1) * b); ++t) {
          std::vector<double> kk(d), vv(d);
          for (int64_t c = 0; c < d; ++c) kk[c] = K(t, c), vv[c] = V(t, c);
          keys.push_back(kk), vals.push_back(vv), ok.push_back(!pad[bi * N + t]), grp.push_back(0);
        }
        for (int64_t i = 0; i < b; ++i) {
          std::vector<double> kk(d, 0.0), vv(d, 0.0);
          for (int64_t l = 0; l < nb; ++l)
            if (l * b + i < N)
              for (int64_t c = 0; c < d; ++c) kk[c] += Pi[pb][l] * K(l * b + i, c), vv[c] += Pi[pb][l] * V(l * b + i, c);
          keys.push_back(kk), vals.push_back(vv), ok.push_back(slot_ok[i]), grp.push_back(p.sum ? 1 : 0);
        }
        for (int64_t t = pb * b; t < std::min(N, (pb + 1) * b); ++t)
          for (int g = 0; g < (p.sum ? 2 : 1); ++g) {
            std::vector<double> s(keys.size(), -INFINITY);
            double mx = -INFINITY;
            for (size_t j = 0; j < keys.size(); ++j) {
              if (!ok[j] || grp[j] != g) continue;
              double dot = 0;
              for (int64_t c = 0; c < d; ++c) dot += double(q[base + t * d + c]) * keys[j][c];
              s[j] = dot / std::sqrt(double(d));
              mx = std::max(mx, s[j]);
            }
            if (mx == -INFINITY) continue;
            double z = 0;
            for (double e : s) z += e == -INFINITY ? 0.0 : std::exp(e - mx);
            for (size_t j = 0; j < keys.size(); ++j)
              if (s[j] != -INFINITY)
                for (int64_t c = 0; c < d; ++c) out[base + t * d + c] += std::exp(s[j] - mx) / z * vals[j][c];
          }
      }
    }
  }
  return out;
}

AttentionMixer* as_attention(std::unique_ptr<Mixer>& m) {
  auto* a = dynamic_cast<AttentionMixer*>(m.get());
  EXPECT_NE(a, nullptr);
  return a;
}

TEST(SinkhornVariant, OneBlockCoveringNIsFullSoftmaxAttention) {
  const int64_t B = 2, H = 2, N = 9, d = 4;
  for (const char* combine : {"concat", "sum"})
    for (const char* sort : {"softmax", "sinkhorn"}) {
      auto mixer = spec_of("sinkhorn").make(
          MixerConfig{H * d, H, N, 0, 1, params_of("sinkhorn", {{"block_size", N}, {"combine", combine}, {"sort", sort}})});
      const Tensor q = rand_t({B, H, N, d}, 61), k = rand_t({B, H, N, d}, 62), v = rand_t({B, H, N, d}, 63);
      std::vector<int32_t> tokens(B * N, 1);
      tokens[2 * N - 1] = tokens[2 * N - 3] = 0;
      const Tensor kmask = key_padding_mask(tokens, B, N);
      MixerContext ctx;
      ctx.key_mask = &kmask;
      NoGrad ng;
      const Tensor y = as_attention(mixer)->attend(Var(q), Var(k), Var(v), ctx).value();
      // One block: Pi = [1] and the sorted block is the block itself, so concat = full attention
      // (every key twice) and sum = twice full attention.
      const double factor = std::string(combine) == "sum" ? 2.0 : 1.0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < N; ++i) {
            const int64_t base = (b * H + h) * N * d;
            std::vector<double> w(N, 0.0);
            double mx = -1e300, z = 0;
            for (int64_t j = 0; j < N; ++j) {
              if (!tokens[b * N + j]) continue;
              double s = 0;
              for (int64_t c = 0; c < d; ++c) s += double(q[base + i * d + c]) * k[base + j * d + c];
              w[j] = s / std::sqrt(double(d));
              mx = std::max(mx, w[j]);
            }
            for (int64_t j = 0; j < N; ++j) z += (w[j] = tokens[b * N + j] ? std::exp(w[j] - mx) : 0.0);
            for (int64_t c = 0; c < d; ++c) {
              double o = 0;
              for (int64_t j = 0; j < N; ++j) o += w[j] / z * v[base + j * d + c];
              EXPECT_NEAR(y[base + i * d + c], factor * o, 1e-5) << combine << " " << sort;
            }
          }
    }
}

TEST(SinkhornVariant, BlocksMatchADenseReference) {
  const int64_t B = 2, H = 2, d = 4;
  struct Case {
    int64_t N, block;
    const char* sort;
    const char* combine;
    bool pad;
  };
  for (const Case& cs : {Case{12, 4, "softmax", "concat", false}, Case{11, 4, "sinkhorn", "concat", true},
                         Case{10, 3, "softmax", "sum", true}, Case{16, 2, "sinkhorn", "sum", false},
                         Case{13, 5, "softmax", "concat", true}}) {
    const Json p = params_of("sinkhorn", {{"block_size", cs.block}, {"sort", cs.sort}, {"combine", cs.combine},
                                          {"sinkhorn_iters", 5}, {"temperature", 0.5}});
    auto mixer = spec_of("sinkhorn").make(MixerConfig{H * d, H, cs.N + 3, 0, 1, p});
    Var bp = param_named(*mixer, "sort_b");
    const Tensor brand = rand_t(bp.shape(), 71);
    bp.value_mut().copy_from(brand);
    const Tensor q = rand_t({B, H, cs.N, d}, 72), k = rand_t({B, H, cs.N, d}, 73, 2.f), v = rand_t({B, H, cs.N, d}, 74);
    std::vector<int> pad(B * cs.N, 0);
    std::vector<int32_t> tokens(B * cs.N, 1);
    if (cs.pad) {
      // batch 0: the tail; batch 1: a whole block and a scattered key
      for (int64_t t = cs.N - 3; t < cs.N; ++t) pad[t] = 1;
      for (int64_t t = 0; t < cs.block; ++t) pad[cs.N + t] = 1;
      pad[cs.N + cs.N - 2] = 1;
      for (int64_t i = 0; i < B * cs.N; ++i) tokens[i] = pad[i] ? 0 : 1;
    }
    const Tensor kmask = key_padding_mask(tokens, B, cs.N);
    MixerContext ctx;
    ctx.key_mask = cs.pad ? &kmask : nullptr;
    NoGrad ng;
    const Tensor y = as_attention(mixer)->attend(Var(q), Var(k), Var(v), ctx).value();
    const auto ref = naive_sinkhorn(q, k, v, param_named(*mixer, "sort_w").value(), bp.value(),
                                    SinkRef{cs.block, std::string(cs.sort) == "sinkhorn", std::string(cs.combine) == "sum", 5, 0.5},
                                    pad);
    double worst = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < cs.N; ++t) {
          if (pad[b * cs.N + t]) continue;  // outputs at padded positions are unspecified
          for (int64_t c = 0; c < d; ++c) {
            const int64_t i = ((b * H + h) * cs.N + t) * d + c;
            worst = std::max(worst, std::fabs(y[i] - ref[i]));
          }
        }
    EXPECT_LT(worst, 2e-5) << "N " << cs.N << " block " << cs.block << " " << cs.sort << " " << cs.combine << " pad " << cs.pad;
  }
}

TEST(SinkhornVariant, FiniteDifferenceGradientsOfTheFusedOps) {
  // attend() directly: gradients of q, k, v and the sorting net, with padding and partial blocks.
  const int64_t B = 2, H = 2, N = 10, d = 3;
  for (const char* sort : {"softmax", "sinkhorn"})
    for (const char* combine : {"concat", "sum"}) {
      auto mixer = spec_of("sinkhorn").make(MixerConfig{H * d, H, N, 0, 1,
                                                        params_of("sinkhorn", {{"block_size", 4}, {"sort", sort}, {"combine", combine}, {"sinkhorn_iters", 3}})});
      std::vector<Var> leaves{Var(rand_t({B, H, N, d}, 81), true), Var(rand_t({B, H, N, d}, 82), true),
                              Var(rand_t({B, H, N, d}, 83), true), param_named(*mixer, "sort_w"), param_named(*mixer, "sort_b")};
      std::vector<int32_t> tokens(B * N, 1);
      tokens[N - 1] = tokens[N + 3] = 0;
      const Tensor kmask = key_padding_mask(tokens, B, N);
      MixerContext ctx;
      ctx.key_mask = &kmask;
      AttentionMixer* a = as_attention(mixer);
      GradCheckOptions opt;
      opt.max_elements = 40;
      const GradCheckReport r = grad_check([&] { return a->attend(leaves[0], leaves[1], leaves[2], ctx); }, leaves, opt);
      EXPECT_TRUE(r.passed) << sort << " " << combine << ": " << r.detail;
    }
  expect_checks_pass("sinkhorn", {{"block_size", 3}, {"sort", "sinkhorn"}, {"combine", "sum"}});
  expect_checks_pass("sinkhorn", {{"block_size", 2}, {"sort", "sinkhorn"}, {"sinkhorn_iters", 2}, {"temperature", 2.0}});
}

}  // namespace
