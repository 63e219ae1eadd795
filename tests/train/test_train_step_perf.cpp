// Correctness of the training-step fast paths (no timing asserts): the chunked, hash-based
// dropout draws (ops.cpp) against the statistics a Bernoulli(1 - p) mask must have, and their
// replay in backward and independence of the thread count; the linear layers' GEMMs split over
// threads by rows or by K, against naive double-precision references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/params.hpp"
#include "attnbench/rng.hpp"

using namespace ab;

namespace {

Tensor ones(int64_t n) { return Tensor::full({n}, 1.f); }

// Drop flags of dropout(ones) under `stream`.
std::vector<uint8_t> drop_flags(int64_t n, float p, const RngStream& stream) {
  const Tensor y = dropout(Var(ones(n)), p, stream, true).value();
  std::vector<uint8_t> f(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) f[i] = y[i] == 0.f;
  return f;
}

// |observed - expected| in units of the binomial standard deviation of a count over n trials.
double sigmas(double count, double n, double prob) {
  return std::abs(count - n * prob) / std::sqrt(n * prob * (1 - prob));
}

TEST(TrainStepDropout, DropFractionAndKeptScale) {
  const int64_t n = (1 << 20) + 1237;  // a ragged last chunk
  for (float p : {0.1f, 0.5f, 0.9f}) {
    const RngStream stream(11, Purpose::dropout, 3, 1, 2);
    Tensor x = Tensor::empty({n});
    for (int64_t i = 0; i < n; ++i) x[i] = 0.25f + static_cast<float>(i % 97) * 0.01f;
    const Tensor y = dropout(Var(x), p, stream, true).value();
    const float keep_scale = 1.f / (1.f - p);
    double zeros = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (y[i] == 0.f) {
        ++zeros;
      } else {
        ASSERT_EQ(y[i], x[i] * keep_scale) << "kept element " << i << " at p = " << p;
      }
    }
    EXPECT_LT(sigmas(zeros, static_cast<double>(n), p), 5.0) << "p = " << p << ": " << zeros / n << " dropped";
    // The tail beyond the last full chunk is drawn too (not all kept, not all dropped).
    double tail_zeros = 0;
    for (int64_t i = n - 1237; i < n; ++i) tail_zeros += y[i] == 0.f;
    EXPECT_LT(sigmas(tail_zeros, 1237, p), 5.0) << "p = " << p;
  }
}

TEST(TrainStepDropout, DrawsLookIndependent) {
  const int64_t n = 1 << 20;
  const float p = 0.5f;
  const auto a = drop_flags(n, p, RngStream(5, Purpose::dropout, 7, 1, 1));
  const auto b = drop_flags(n, p, RngStream(5, Purpose::dropout, 8, 1, 1));  // next step
  const auto c = drop_flags(n, p, RngStream(5, Purpose::dropout, 7, 1, 2));  // other site
  // Pairs at lags inside a chunk, across chunk boundaries (1024) and across streams: both
  // dropped with probability p^2 when independent.
  for (int64_t lag : {1, 2, 16, 1023, 1024, 1025, 4096}) {
    double both = 0, m = 0;
    for (int64_t i = 0; i + lag < n; ++i, ++m) both += a[i] && a[i + lag];
    EXPECT_LT(sigmas(both, m, p * p), 5.0) << "lag " << lag;
  }
  double ab_both = 0, ac_both = 0;
  for (int64_t i = 0; i < n; ++i) {
    ab_both += a[i] && b[i];
    ac_both += a[i] && c[i];
  }
  EXPECT_LT(sigmas(ab_both, n, p * p), 5.0) << "steps";
  EXPECT_LT(sigmas(ac_both, n, p * p), 5.0) << "sites";
  // Chunks are not copies of each other: count each chunk's pattern against chunk 0.
  int identical = 0;
  for (int64_t c0 = 1024; c0 < n; c0 += 1024) {
    bool same = true;
    for (int64_t j = 0; j < 1024 && same; ++j) same = a[j] == a[c0 + j];
    identical += same;
  }
  EXPECT_EQ(identical, 0);
}

TEST(TrainStepDropout, BackwardReplaysTheForwardMaskAtAnyThreadCount) {
  const int64_t n = 300001;
  const RngStream stream(3, Purpose::dropout, 2, 1, 3);
  Tensor x = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) x[i] = 1.f + static_cast<float>(i % 13);
  const int before = num_threads();
  std::vector<std::vector<float>> outs, grads;
  for (int t : {1, 2}) {
    set_num_threads(t);
    Var xv(x, true);
    Var y = dropout(xv, 0.3f, stream, true);
    ab::sum(y).backward();
    outs.push_back(y.value().to_vector());
    grads.push_back(xv.grad().to_vector());
  }
  set_num_threads(before);
  EXPECT_EQ(outs[0], outs[1]) << "the mask must not depend on the thread count";
  EXPECT_EQ(grads[0], grads[1]);
  const float keep_scale = 1.f / (1.f - 0.3f);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i)
    mismatches += grads[0][i] != (outs[0][i] == 0.f ? 0.f : keep_scale);
  EXPECT_EQ(mismatches, 0) << "backward must drop exactly the elements forward dropped";
}

// ---- the linear layers' GEMMs, split by rows or by K over the threads (kernels_onednn.cpp) ----

Tensor filled(const Shape& s, uint64_t key) {
  RngStream r(key, Purpose::check);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = r.uniform() * 2.f - 1.f;
  return t;
}

// c[M, N] = op(a) op(b) in double, a stored [M, K] or (trans_a) [K, M], b [K, N] or (trans_b) [N, K].
std::vector<double> naive_mm(const Tensor& a, const Tensor& b, int64_t M, int64_t N, int64_t K, bool ta, bool tb) {
  std::vector<double> c(static_cast<size_t>(M * N), 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const double av = ta ? a[k * M + i] : a[i * K + k];
      for (int64_t j = 0; j < N; ++j) c[i * N + j] += av * (tb ? b[j * K + k] : b[k * N + j]);
    }
  return c;
}

void expect_close(const Tensor& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  int64_t bad = 0;
  for (int64_t i = 0; i < got.numel(); ++i) bad += std::abs(got[i] - want[i]) > 1e-4 * (1.0 + std::abs(want[i]));
  EXPECT_EQ(bad, 0) << what;
}

TEST(TrainStepGemm, SplitMatmulsMatchNaiveReferenceAtOneAndTwoThreads) {
  struct Case {
    int64_t M, N, K;
    bool ta, tb;
  };
  // Row split (M >= 4096 per thread pair, ragged), transposed operands, and K split (small c, long K).
  const Case cases[] = {{8209, 48, 64, false, false}, {8209, 40, 64, true, false}, {8200, 64, 48, false, true},
                        {40, 40, 9000, false, true},   {64, 48, 8209, true, false}, {33, 17, 20000, true, true}};
  const int before = num_threads();
  for (const Case& cs : cases) {
    const Tensor a = filled(cs.ta ? Shape{cs.K, cs.M} : Shape{cs.M, cs.K}, 1);
    const Tensor b = filled(cs.tb ? Shape{cs.N, cs.K} : Shape{cs.K, cs.N}, 2);
    const auto want = naive_mm(a, b, cs.M, cs.N, cs.K, cs.ta, cs.tb);
    for (int t : {1, 2}) {
      set_num_threads(t);
      const Tensor c = matmul(Var(a), Var(b), cs.ta, cs.tb).value();
      const Tensor c2 = matmul(Var(a), Var(b), cs.ta, cs.tb).value();
      expect_close(c, want, fmt::format("M {} N {} K {} trans {} {} threads {}", cs.M, cs.N, cs.K, cs.ta, cs.tb, t));
      EXPECT_EQ(c.to_vector(), c2.to_vector()) << "repeatable for a given thread count";
    }
  }
  set_num_threads(before);
}

// bf16 inputs: a product of two bf16 numbers is exact in fp32, so the result equals the double
// reference on inputs rounded to bf16 (nearest even), up to the fp32 summation order.
Tensor rounded_to_bf16(const Tensor& x) {
  Tensor y = x.clone();
  for (int64_t i = 0; i < y.numel(); ++i) {
    uint32_t u;
    std::memcpy(&u, &y[i], 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    std::memcpy(&y[i], &u, 4);
  }
  return y;
}

TEST(TrainStepGemm, Bf16InputsMatchAReferenceOnRoundedInputs) {
  struct Case {
    int64_t M, N, K;
    bool ta, tb;
  };
  const Case cases[] = {{8209, 48, 64, false, false}, {40, 40, 9000, false, true}, {33, 17, 200, true, true}};
  const int before = num_threads();
  for (const Case& cs : cases) {
    const Tensor a = filled(cs.ta ? Shape{cs.K, cs.M} : Shape{cs.M, cs.K}, 1);
    const Tensor b = filled(cs.tb ? Shape{cs.N, cs.K} : Shape{cs.K, cs.N}, 2);
    const auto want = naive_mm(rounded_to_bf16(a), rounded_to_bf16(b), cs.M, cs.N, cs.K, cs.ta, cs.tb);
    const auto exact = naive_mm(a, b, cs.M, cs.N, cs.K, cs.ta, cs.tb);
    for (int t : {1, 2}) {
      set_num_threads(t);
      set_matmul_precision("bf16");
      const Tensor c = matmul(Var(a), Var(b), cs.ta, cs.tb).value();
      set_matmul_precision("fp32");
      const std::string what = fmt::format("M {} N {} K {} threads {}", cs.M, cs.N, cs.K, t);
      expect_close(c, want, what);
      double worst = 0;  // and it is not the fp32 product: bf16 keeps 8 significant bits
      for (int64_t i = 0; i < c.numel(); ++i) worst = std::max(worst, std::abs(c[i] - exact[i]));
      EXPECT_GT(worst, 1e-4) << what;
    }
  }
  set_num_threads(before);
  EXPECT_THROW(set_matmul_precision("fp16"), UsageError);
}

TEST(TrainStepGemm, LinearLayerGradientsMatchNaiveReferenceAtTwoThreads) {
  const int64_t rows = 8209, in = 64, out = 48;
  const Tensor x = filled({rows, in}, 3), w = filled({in, out}, 4), bias = filled({out}, 5), g = filled({rows, out}, 6);
  const int before = num_threads();
  set_num_threads(2);
  Var xv(x, true), wv(w, true), bv(bias, true);
  Var y = linear(xv, wv, bv);
  ab::sum(mul(y, Var(g))).backward();  // dy = g
  set_num_threads(before);
  std::vector<double> want_y = naive_mm(x, w, rows, out, in, false, false);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < out; ++j) want_y[i * out + j] += bias[j];
  expect_close(y.value(), want_y, "y");
  expect_close(xv.grad(), naive_mm(g, w, rows, in, out, false, true), "dx");
  expect_close(wv.grad(), naive_mm(x, g, in, out, rows, true, false), "dw");
  std::vector<double> want_db(static_cast<size_t>(out), 0.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < out; ++j) want_db[j] += g[i * out + j];
  expect_close(bv.grad(), want_db, "dbias");
}

}  // namespace
