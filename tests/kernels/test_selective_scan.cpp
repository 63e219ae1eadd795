// Selective scan against its materialised matrix form, gradients by finite differences, chunking
// and thread independence, the decode state; mamba's bidirectional mode against two independently
// written directional passes; poolformer against a naive average.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <map>
#include <string>

#include "attnbench/check.hpp"
#include "attnbench/kernels/selective_scan.hpp"
#include "support/random_tensors.hpp"

using namespace ab;

namespace {

Tensor rand_t(const Shape& s, uint64_t k, float lo = -1.f, float hi = 1.f) {
  return test::uniform_tensor(s, 11, k, lo, hi);
}

double softplus_d(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }

// y = M u per (b, c) with M[t, s] = C_t . (prod_{r in (s, t]} exp(dt_r A)) dt_s B_s (s <= t in scan
// order), plus D u; written from the matrix definition in double.
Tensor materialised(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                    const Tensor* D, const Tensor* bias, bool softplus, bool reverse) {
  const int64_t B = u.dim(0), N = u.dim(1), C = u.dim(2), n = A.dim(1);
  Tensor y = Tensor::zeros(u.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      std::vector<double> dt(N);
      for (int64_t t = 0; t < N; ++t) {
        const double x = delta[(b * N + t) * C + c] + (bias ? (*bias)[c] : 0.f);
        dt[t] = softplus ? softplus_d(x) : x;
      }
      for (int64_t t = 0; t < N; ++t) {
        double acc = D ? double((*D)[c]) * u[(b * N + t) * C + c] : 0.0;
        for (int64_t s = 0; s < N; ++s) {
          if (reverse ? s < t : s > t) continue;
          double sum_dt = 0;  // dt_r over r strictly after s up to t in scan order
          const int64_t lo = std::min(s, t), hi = std::max(s, t);
          for (int64_t r = lo; r <= hi; ++r)
            if (r != s) sum_dt += dt[r];
          double m = 0;
          for (int64_t k = 0; k < n; ++k)
            m += double(Cm[(b * N + t) * n + k]) * std::exp(sum_dt * A[c * n + k]) * dt[s] * Bm[(b * N + s) * n + k];
          acc += m * u[(b * N + s) * C + c];
        }
        y[(b * N + t) * C + c] = static_cast<float>(acc);
      }
    }
  return y;
}

struct ScanInputs {
  Var u, delta, A, Bm, Cm, D, bias;
  ScanInputs(int64_t B, int64_t N, int64_t C, int64_t n, uint64_t seed = 0)
      : u(rand_t({B, N, C}, seed + 1), true),
        delta(rand_t({B, N, C}, seed + 2, -1.5f, 0.5f), true),
        A(rand_t({C, n}, seed + 3, -2.f, -0.3f), true),
        Bm(rand_t({B, N, n}, seed + 4), true),
        Cm(rand_t({B, N, n}, seed + 5), true),
        D(rand_t({C}, seed + 6), true),
        bias(rand_t({C}, seed + 7, -0.5f, 0.5f), true) {}
  std::vector<Var> leaves() const { return {u, delta, A, Bm, Cm, D, bias}; }
  Var run(bool softplus, bool reverse, int64_t chunk, bool with_d = true) const {
    SelectiveScanOptions o;
    if (with_d) o.D = D, o.delta_bias = bias;
    o.delta_softplus = softplus;
    o.reverse = reverse;
    o.chunk = chunk;
    return selective_scan(u, delta, A, Bm, Cm, o);
  }
};

class SelectiveScan : public ::testing::TestWithParam<std::tuple<bool, bool, int>> {};

TEST_P(SelectiveScan, EqualsMaterialisedMatrixAndGradientsMatchFiniteDifferences) {
  const auto softplus = std::get<0>(GetParam());  // named: clang 14 cannot capture bindings
  const auto reverse = std::get<1>(GetParam());
  const auto chunk = std::get<2>(GetParam());
  const int64_t B = 2, N = 11, C = 5, n = 3;
  ScanInputs in(B, N, C, n);
  if (!softplus) {  // positive steps without the softplus
    for (int64_t i = 0; i < in.delta.value().numel(); ++i) in.delta.value_mut()[i] = 0.1f + std::fabs(in.delta.value()[i]);
    for (int64_t i = 0; i < C; ++i) in.bias.value_mut()[i] = std::fabs(in.bias.value()[i]);
  }
  Tensor y;
  {
    NoGrad ng;
    y = in.run(softplus, reverse, chunk).value();
  }
  const Tensor ref = materialised(in.u.value(), in.delta.value(), in.A.value(), in.Bm.value(), in.Cm.value(),
                                  &in.D.value(), &in.bias.value(), softplus, reverse);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << "element " << i;
  GradCheckOptions opt;
  opt.max_elements = 40;
  const GradCheckReport r = grad_check([&] { return in.run(softplus, reverse, chunk); }, in.leaves(), opt);
  EXPECT_TRUE(r.passed) << r.detail << " (max abs err " << r.max_abs_error << ")";
}

// chunk 3 and 4 cut N = 11 into chunks with a partial last one; 64 is a single chunk.
INSTANTIATE_TEST_SUITE_P(SoftplusReverseChunk, SelectiveScan,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(), ::testing::Values(1, 3, 4, 64)));

TEST(SelectiveScanOp, WithoutSkipAndBias) {
  const int64_t B = 1, N = 6, C = 3, n = 2;
  ScanInputs in(B, N, C, n, 40);
  Tensor y;
  {
    NoGrad ng;
    y = in.run(true, false, 2, false).value();
  }
  const Tensor ref = materialised(in.u.value(), in.delta.value(), in.A.value(), in.Bm.value(), in.Cm.value(), nullptr,
                                  nullptr, true, false);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5 * (1 + std::fabs(ref[i])));
  const GradCheckReport r =
      grad_check([&] { return in.run(true, false, 2, false); }, {in.u, in.delta, in.A, in.Bm, in.Cm});
  EXPECT_TRUE(r.passed) << r.detail;
}

// The reverse scan equals the forward scan of the time-reversed inputs, reversed.
TEST(SelectiveScanOp, ReverseEqualsFlippedForward) {
  const int64_t B = 2, N = 37, C = 20, n = 4;  // C > 16: several channel blocks
  ScanInputs in(B, N, C, n, 50);
  auto flip = [](const Tensor& x) {
    const int64_t Bx = x.dim(0), Nx = x.dim(1), W = x.dim(2);
    Tensor y = Tensor::empty(x.shape());
    for (int64_t b = 0; b < Bx; ++b)
      for (int64_t t = 0; t < Nx; ++t)
        for (int64_t w = 0; w < W; ++w) y[(b * Nx + t) * W + w] = x[(b * Nx + Nx - 1 - t) * W + w];
    return y;
  };
  NoGrad ng;
  const Tensor yr = in.run(true, true, 8).value();
  SelectiveScanOptions o;
  o.D = in.D;
  o.delta_bias = in.bias;
  o.delta_softplus = true;
  o.chunk = 5;
  const Tensor yf = flip(selective_scan(Var(flip(in.u.value())), Var(flip(in.delta.value())), in.A,
                                        Var(flip(in.Bm.value())), Var(flip(in.Cm.value())), o)
                             .value());
  for (int64_t i = 0; i < yr.numel(); ++i) ASSERT_NEAR(yr[i], yf[i], 1e-5 * (1 + std::fabs(yf[i])));
}

// Chunk size and thread count change neither the output nor any gradient (beyond rounding of the
// recomputation, which is bitwise the same arithmetic).
TEST(SelectiveScanOp, ChunkAndThreadsDoNotChangeResults) {
  const int64_t B = 3, N = 150, C = 40, n = 16;
  std::vector<std::vector<float>> grads[2];
  std::vector<float> outs[2];
  const int threads_before = num_threads();
  for (int k = 0; k < 2; ++k) {
    set_num_threads(k == 0 ? 1 : 2);
    ScanInputs in(B, N, C, n, 60);
    Var y = in.run(true, false, k == 0 ? 64 : 7);
    y.backward(rand_t(y.shape(), 99));
    outs[k] = y.value().to_vector();
    for (const auto& v : in.leaves()) grads[k].push_back(v.grad().to_vector());
  }
  set_num_threads(threads_before);
  for (size_t i = 0; i < outs[0].size(); ++i) ASSERT_EQ(outs[0][i], outs[1][i]);
  for (size_t l = 0; l < grads[0].size(); ++l)
    for (size_t i = 0; i < grads[0][l].size(); ++i)
      ASSERT_NEAR(grads[0][l][i], grads[1][l][i], 1e-5 * (1 + std::fabs(grads[0][l][i]))) << "leaf " << l;
}

// Training-mode forward keeps the inputs and the checkpoints, not [B, N, C, n] states.
TEST(SelectiveScanOp, SavesCheckpointsNotStates) {
  const int64_t B = 2, N = 512, C = 32, n = 16, chunk = 64;
  ScanInputs in(B, N, C, n, 70);
  const int64_t before = memory_stats().live_bytes;
  Var y = in.run(true, false, chunk);
  const int64_t saved = memory_stats().live_bytes - before - y.value().bytes();
  EXPECT_NEAR(static_cast<double>(saved), selective_scan_checkpoint_bytes(B, N, C, n, chunk), 4096.0);
  EXPECT_LT(saved, B * N * C * n * 4 / 16);
}

TEST(SelectiveScanState, StepwiseEqualsScan) {
  const int64_t B = 2, N = 9, C = 6, n = 4;
  ScanInputs in(B, N, C, n, 80);
  Tensor y;
  {
    NoGrad ng;
    y = in.run(true, false, 4).value();
  }
  SelectiveScanState st(B, C, n);
  auto row = [&](const Tensor& x, int64_t t) {
    const int64_t W = x.dim(2);
    Tensor r = Tensor::empty({B, 1, W});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t w = 0; w < W; ++w) r[b * W + w] = x[(b * N + t) * W + w];
    return r;
  };
  for (int64_t t = 0; t < N; ++t) {
    const Tensor y_t = st.step(row(in.u.value(), t), row(in.delta.value(), t), in.A.value(), row(in.Bm.value(), t),
                               row(in.Cm.value(), t), &in.D.value(), &in.bias.value(), true);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) ASSERT_NEAR(y_t[b * C + c], y[(b * N + t) * C + c], 1e-5) << "t " << t;
  }
  EXPECT_EQ(st.bytes(), B * C * n * 4);
}


// ---- mamba: the block written out naively in double, one direction at a time ----
using Params = std::map<std::string, Tensor>;

std::unique_ptr<Mixer> make_mixer(const std::string& name, const Json& given, int64_t D, int64_t N, uint64_t seed = 3) {
  const VariantSpec& spec = VariantRegistry::instance().get(name);
  MixerConfig cfg{D, 2, N, 0, seed, resolve_params(spec.params, given, name)};
  return spec.make(cfg);
}

Params params_of(const Mixer& m) {
  Params p;
  for (const auto& [name, v] : m.parameters()) p[name] = v.value();
  return p;
}

using Mat = std::vector<double>;  // row-major

// x [rows, in] @ w [in, out]
Mat matmul_d(const Mat& x, const Tensor& w, int64_t rows) {
  const int64_t in = w.dim(0), out = w.dim(1);
  Mat y(static_cast<size_t>(rows * out), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t o = 0; o < out; ++o) y[r * out + o] += x[r * in + i] * w[i * out + o];
  return y;
}
double silu_d(double v) { return v / (1 + std::exp(-v)); }

// The scan output of one direction for sequence b: [N, Di] in original time order. prefix "" or "rev_".
Mat naive_branch(const Params& p, const std::string& pre, const Mat& u0, int64_t N, int64_t Di, bool reverse) {
  const Tensor& cw = p.at(pre + "conv_w");
  const int64_t K = cw.dim(1), n = p.at(pre + "A_log").dim(1);
  auto at = [&](int64_t i) { return reverse ? N - 1 - i : i; };  // scan step -> position
  // causal conv in scan order + SiLU
  Mat u(static_cast<size_t>(N * Di));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < Di; ++c) {
      double s = p.at(pre + "conv_b")[c];
      for (int64_t j = 0; j < K && j <= i; ++j) s += double(cw[c * K + j]) * u0[at(i - j) * Di + c];
      u[at(i) * Di + c] = silu_d(s);
    }
  const Mat dt_in = matmul_d(u, p.at(pre + "x_proj_dt"), N);
  const Mat Bm = matmul_d(u, p.at(pre + "x_proj_b"), N), Cm = matmul_d(u, p.at(pre + "x_proj_c"), N);
  const Mat draw = matmul_d(dt_in, p.at(pre + "dt_proj"), N);
  Mat y(static_cast<size_t>(N * Di));
  for (int64_t c = 0; c < Di; ++c) {
    std::vector<double> h(n, 0.0);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t t = at(i);
      const double dt = softplus_d(draw[t * Di + c] + p.at(pre + "dt_bias")[c]);
      double acc = double(p.at(pre + "D")[c]) * u[t * Di + c];
      for (int64_t s = 0; s < n; ++s) {
        const double A = -std::exp(double(p.at(pre + "A_log")[c * n + s]));
        h[s] = std::exp(dt * A) * h[s] + dt * Bm[t * n + s] * u[t * Di + c];
        acc += Cm[t * n + s] * h[s];
      }
      y[t * Di + c] = acc;
    }
  }
  return y;
}

// out = ((y_fwd [+ y_rev]) * SiLU(x W_z)) W_out for every sequence.
Tensor naive_mamba(const Params& p, const Tensor& x, bool with_reverse) {
  const int64_t B = x.dim(0), N = x.dim(1), D = x.dim(2), Di = p.at("in_proj_x").dim(1);
  Tensor out = Tensor::empty(x.shape());
  for (int64_t b = 0; b < B; ++b) {
    Mat xb(x.data() + b * N * D, x.data() + (b + 1) * N * D);
    const Mat u0 = matmul_d(xb, p.at("in_proj_x"), N), z = matmul_d(xb, p.at("in_proj_z"), N);
    Mat y = naive_branch(p, "", u0, N, Di, false);
    if (with_reverse) {
      const Mat yr = naive_branch(p, "rev_", u0, N, Di, true);
      for (size_t i = 0; i < y.size(); ++i) y[i] += yr[i];
    }
    for (size_t i = 0; i < y.size(); ++i) y[i] *= silu_d(z[i]);
    const Mat o = matmul_d(y, p.at("out_proj"), N);
    for (int64_t i = 0; i < N * D; ++i) out[b * N * D + i] = static_cast<float>(o[i]);
  }
  return out;
}

void expect_close(const Tensor& got, const Tensor& ref, double tol) {
  ASSERT_EQ(got.shape(), ref.shape());
  double scale = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) scale = std::max(scale, double(std::fabs(ref[i])));
  for (int64_t i = 0; i < ref.numel(); ++i)
    ASSERT_NEAR(got[i], ref[i], tol * std::max(1.0, scale)) << "element " << i;
}

TEST(Mamba, BidirectionalAddEqualsForwardPlusReverseScan) {
  const int64_t B = 2, N = 13, D = 16;
  auto m = make_mixer("mamba", Json{{"chunk", 4}, {"d_state", 4}}, D, N);
  const Params p = params_of(*m);
  ASSERT_TRUE(p.count("rev_conv_w") && p.count("rev_A_log"));
  // Distinct reverse parameters, so a swapped or missing branch would show.
  for (const auto& [name, v] : m->parameters())
    if (name.rfind("rev_", 0) == 0) {
      Var w = v;
      for (int64_t i = 0; i < w.value().numel(); ++i) w.value_mut()[i] *= 1.0f + 0.3f * static_cast<float>(i % 3);
    }
  const Params p2 = params_of(*m);
  const Tensor x = rand_t({B, N, D}, 200);
  NoGrad ng;
  MixerContext ctx;
  ctx.causal = false;
  expect_close(m->forward(Var(x), ctx).value(), naive_mamba(p2, x, true), 2e-5);
  ctx.causal = true;  // causal: the forward branch only
  expect_close(m->forward(Var(x), ctx).value(), naive_mamba(p2, x, false), 2e-5);
  // "none": the forward scan in the encoder form too, and no reverse parameters.
  auto one = make_mixer("mamba", Json{{"bidirectional", "none"}, {"d_state", 4}}, D, N);
  const Params p1 = params_of(*one);
  EXPECT_EQ(p1.count("rev_conv_w"), 0u);
  ctx.causal = false;
  expect_close(one->forward(Var(x), ctx).value(), naive_mamba(p1, x, false), 2e-5);
}

TEST(Mamba, InitialisationFollowsTheReference) {
  auto m = make_mixer("mamba", Json::object(), 64, 32);
  const Params p = params_of(*m);
  EXPECT_EQ(p.at("in_proj_x").shape(), (Shape{64, 128}));
  EXPECT_EQ(p.at("x_proj_dt").shape(), (Shape{128, 4}));  // dt_rank auto = ceil(64 / 16)
  EXPECT_EQ(p.at("A_log").shape(), (Shape{128, 16}));
  for (int64_t s = 0; s < 16; ++s) EXPECT_FLOAT_EQ(p.at("A_log")[5 * 16 + s], std::log(float(s + 1)));
  for (int64_t c = 0; c < 128; ++c) {
    EXPECT_EQ(p.at("D")[c], 1.f);
    const double dt = softplus_d(p.at("dt_bias")[c]);
    EXPECT_GE(dt, 1e-3 * 0.999);
    EXPECT_LE(dt, 1e-1 * 1.001);
  }
  auto r8 = make_mixer("mamba", Json{{"dt_rank", "8"}}, 64, 32);
  EXPECT_EQ(params_of(*r8).at("x_proj_dt").shape(), (Shape{128, 8}));
  EXPECT_THROW(make_mixer("mamba", Json{{"dt_rank", "x"}}, 64, 32), UsageError);
}

TEST(Mamba, ConformanceSuitePasses) {
  for (const Json& given : {Json::object(), Json{{"bidirectional", "none"}}}) {
    for (const auto& r : check_variant(VariantRegistry::instance().get("mamba"), given))
      EXPECT_TRUE(r.passed) << given.dump() << " " << r.check << ": " << r.detail;
  }
}

// ---- poolformer against a naive average ----
Tensor naive_pool(const Tensor& x, int64_t k, bool causal, const std::vector<int>& real) {
  const int64_t N = x.dim(1), D = x.dim(2);
  return test::per_position(x.shape(), [&](int64_t b, int64_t t, int64_t d) {
    double sum = 0;
    int count = 0;
    const int64_t lo = causal ? t - k + 1 : t - k / 2, hi = causal ? t : t + k / 2;
    for (int64_t s = lo; s <= hi; ++s)
      if (s >= 0 && s < N && (real.empty() || real[b * N + s])) sum += x[(b * N + s) * D + d], ++count;
    return (count ? sum / count : 0.0) - x[(b * N + t) * D + d];
  });
}

TEST(PoolFormer, EqualsNaiveAverageWithGradients) {
  const int64_t B = 2, N = 10, D = 3;
  const Tensor x = rand_t({B, N, D}, 300);
  std::vector<int32_t> tokens(B * N, 1);
  for (int64_t n = 6; n < N; ++n) tokens[N + n] = 0;  // second sequence padded from 6
  tokens[2] = 0;                                      // and a pad inside the first
  std::vector<int> real(tokens.begin(), tokens.end());
  const Tensor mask = key_padding_mask(tokens, B, N, 0);
  for (int64_t k : {1, 3, 5})
    for (bool causal : {false, true})
      for (bool masked : {false, true}) {
        auto m = make_mixer("poolformer", Json{{"pool_size", k}}, D, N);
        MixerContext ctx;
        ctx.causal = causal;
        ctx.key_mask = masked ? &mask : nullptr;
        Var xv(x.clone(), true);
        Tensor y;
        {
          NoGrad ng;
          y = m->forward(xv, ctx).value();
        }
        SCOPED_TRACE(testing::Message() << "k " << k << " causal " << causal << " masked " << masked);
        expect_close(y, naive_pool(x, k, causal, masked ? real : std::vector<int>{}), 1e-6);
        const GradCheckReport r = grad_check([&] { return m->forward(xv, ctx); }, {xv});
        EXPECT_TRUE(r.passed) << r.detail;
      }
  EXPECT_THROW(make_mixer("poolformer", Json{{"pool_size", 4}}, D, N), UsageError);
}

TEST(PoolFormer, ConformanceSuitePasses) {
  for (const Json& given : {Json::object(), Json{{"pool_size", 5}}})
    for (const auto& r : check_variant(VariantRegistry::instance().get("poolformer"), given))
      EXPECT_TRUE(r.passed) << given.dump() << " " << r.check << ": " << r.detail;
}

}  // namespace
