// Every op's backward against central finite differences, and forward values against naive loops.
#include <gtest/gtest.h>

#include <cmath>

#include "attnbench/check.hpp"
#include "attnbench/ops.hpp"
#include "support/random_tensors.hpp"

using namespace ab;

namespace {

Tensor rand_t(const Shape& s, uint64_t k, float lo = -1.f, float hi = 1.f) {
  return test::uniform_tensor(s, 42, k, lo, hi);
}

Var leaf(const Shape& s, uint64_t k, float lo = -1.f, float hi = 1.f) { return Var(rand_t(s, k, lo, hi), true); }

void expect_grad(const std::function<Var()>& f, const std::vector<Var>& leaves, const char* what) {
  const GradCheckReport r = grad_check(f, leaves);
  EXPECT_TRUE(r.passed) << what << ": " << r.detail << " (max abs err " << r.max_abs_error << ")";
  EXPECT_GT(r.checked, 0) << what;
}

// Naive C[b] = op(A[b]) op(B[b]).
std::vector<float> naive_matmul(const Tensor& a, const Tensor& b, int64_t batch, bool shared_b, int64_t M, int64_t N,
                                int64_t K, bool ta, bool tb) {
  std::vector<float> c(static_cast<size_t>(batch * M * N), 0.f);
  for (int64_t p = 0; p < batch; ++p)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) {
          const float av = ta ? a[p * M * K + k * M + i] : a[p * M * K + i * K + k];
          const int64_t bo = shared_b ? 0 : p * K * N;
          const float bv = tb ? b[bo + j * K + k] : b[bo + k * N + j];
          s += double(av) * bv;
        }
        c[p * M * N + i * N + j] = static_cast<float>(s);
      }
  return c;
}

}  // namespace

TEST(Ops, MatmulForwardMatchesNaiveForEveryTransposeAndBroadcast) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool shared : {false, true}) {
        const int64_t batch = 3, M = 5, N = 4, K = 6;
        Var a(rand_t(ta ? Shape{batch, K, M} : Shape{batch, M, K}, 1));
        Var b(rand_t(shared ? (tb ? Shape{N, K} : Shape{K, N}) : (tb ? Shape{batch, N, K} : Shape{batch, K, N}), 2));
        const Tensor c = matmul(a, b, ta, tb).value();
        const auto ref = naive_matmul(a.value(), b.value(), batch, shared, M, N, K, ta, tb);
        ASSERT_EQ(c.shape(), (Shape{batch, M, N}));
        for (int64_t i = 0; i < c.numel(); ++i) EXPECT_NEAR(c[i], ref[i], 1e-5) << ta << tb << shared;
      }
}

TEST(Ops, MatmulGradients) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Var a = leaf(ta ? Shape{2, 3, 4} : Shape{2, 4, 3}, 3), b = leaf(tb ? Shape{2, 5, 3} : Shape{2, 3, 5}, 4);
      expect_grad([&] { return matmul(a, b, ta, tb); }, {a, b}, "batched matmul");
    }
  for (bool tb : {false, true}) {
    Var a = leaf({2, 4, 3}, 5), w = leaf(tb ? Shape{5, 3} : Shape{3, 5}, 6);
    expect_grad([&] { return matmul(a, w, false, tb); }, {a, w}, "matmul with shared b");
  }
}

TEST(Ops, LinearGradientsWithAndWithoutBias) {
  Var x = leaf({2, 3, 4}, 7), w = leaf({4, 6}, 8), b = leaf({6}, 9);
  expect_grad([&] { return linear(x, w, b); }, {x, w, b}, "linear+bias");
  expect_grad([&] { return linear(x, w); }, {x, w}, "linear");
  // Forward: bias is added to every row.
  const Tensor y = linear(Var(x.value()), Var(w.value()), Var(b.value())).value();
  const Tensor y0 = linear(Var(x.value()), Var(w.value())).value();
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y[i] - y0[i], b.value()[i % 6], 1e-5);
}

TEST(Ops, BroadcastArithmeticGradients) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4}, {4}}, {{2, 3, 4}, {2, 1, 4}}, {{2, 3, 4}, {2, 3, 1}}, {{3, 1}, {1, 4}}};
  for (const auto& [sa, sb] : cases) {
    Var a = leaf(sa, 10), b = leaf(sb, 11);
    expect_grad([&] { return add(a, b); }, {a, b}, "add");
    expect_grad([&] { return sub(a, b); }, {a, b}, "sub");
    expect_grad([&] { return mul(a, b); }, {a, b}, "mul");
  }
  Var a = leaf({3, 4}, 12);
  expect_grad([&] { return scale(a, -2.5f); }, {a}, "scale");
  expect_grad([&] { return add_scalar(a, 3.f); }, {a}, "add_scalar");
  // Forward value of a broadcast.
  const Tensor y = add(Var(Tensor::from({2, 1}, {1, 2})), Var(Tensor::from({3}, {10, 20, 30}))).value();
  EXPECT_EQ(y.to_vector(), (std::vector<float>{11, 21, 31, 12, 22, 32}));
}

TEST(Ops, ShapeOpGradients) {
  Var a = leaf({2, 3, 4, 5}, 13);
  expect_grad([&] { return reshape(a, {6, 20}); }, {a}, "reshape");
  expect_grad([&] { return permute(a, {0, 2, 1, 3}); }, {a}, "permute inner");
  expect_grad([&] { return permute(a, {3, 1, 0, 2}); }, {a}, "permute last axis moved");
  expect_grad([&] { return transpose(a, -1, -2); }, {a}, "transpose");
  expect_grad([&] { return slice(a, 2, 1, 2); }, {a}, "slice");
  Var b = leaf({2, 3, 2, 5}, 14);
  expect_grad([&] { return concat({a, b, a}, 2); }, {a, b}, "concat");
  // Forward values.
  Var p(Tensor::from({2, 3}, {0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(transpose(p, 0, 1).value().to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(slice(p, 1, 1, 2).value().to_vector(), (std::vector<float>{1, 2, 4, 5}));
  EXPECT_EQ(concat({p, p}, 0).value().shape(), (Shape{4, 3}));
}

TEST(Ops, SoftmaxGradientsAndMasks) {
  Var x = leaf({2, 3, 5}, 15, -2.f, 2.f);
  expect_grad([&] { return softmax(x); }, {x}, "softmax");
  Tensor mask = Tensor::zeros({2, 1, 5});
  mask[3] = -INFINITY;
  mask[5 + 0] = -INFINITY;
  expect_grad([&] { return softmax(x, &mask); }, {x}, "masked softmax");
  const Tensor y = softmax(Var(x.value()), &mask).value();
  for (int64_t r = 0; r < 6; ++r) {
    double s = 0;
    for (int64_t c = 0; c < 5; ++c) s += y[r * 5 + c];
    EXPECT_NEAR(s, 1.0, 1e-5);
  }
  for (int64_t r = 0; r < 3; ++r) EXPECT_EQ(y[r * 5 + 3], 0.f) << "masked key has weight";
  const Tensor cm = causal_mask(4);
  const Tensor yc = softmax(Var(rand_t({4, 4}, 16)), &cm).value();
  EXPECT_FLOAT_EQ(yc[0], 1.f);
  EXPECT_EQ(yc[1 * 4 + 2], 0.f);
}

TEST(Ops, LayerNormGradientsAndValues) {
  Var x = leaf({3, 4, 8}, 17, -2.f, 2.f), g = leaf({8}, 18, 0.5f, 1.5f), b = leaf({8}, 19);
  expect_grad([&] { return layer_norm(x, g, b); }, {x, g, b}, "layer_norm");
  const Tensor y = layer_norm(Var(x.value()), Var(Tensor::full({8}, 1.f)), Var(Tensor::zeros({8}))).value();
  for (int64_t r = 0; r < 12; ++r) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < 8; ++c) m += y[r * 8 + c];
    m /= 8;
    for (int64_t c = 0; c < 8; ++c) v += (y[r * 8 + c] - m) * (y[r * 8 + c] - m);
    EXPECT_NEAR(m, 0.0, 1e-5);
    EXPECT_NEAR(v / 8, 1.0, 1e-3);
  }
}

TEST(Ops, ActivationGradientsAndValues) {
  // Inputs kept away from 0 so that ReLU and ELU kinks are not straddled by the difference step.
  Var x = leaf({4, 6}, 20, 0.05f, 2.f);
  Var xn = Var(scale(Var(x.value()), -1.f).value(), true);
  for (const Var& v : {x, xn}) {
    expect_grad([&] { return gelu(v); }, {v}, "gelu");
    expect_grad([&] { return relu(v); }, {v}, "relu");
    expect_grad([&] { return elu(v, 1.0f); }, {v}, "elu");
    expect_grad([&] { return ab::exp(v); }, {v}, "exp");
    expect_grad([&] { return sigmoid(v); }, {v}, "sigmoid");
    expect_grad([&] { return silu(v); }, {v}, "silu");
  }
  Var p(Tensor::from({3}, {-1.f, 0.5f, 2.f}));
  const auto g = gelu(p).value(), e = elu(p).value(), s = sigmoid(p).value(), si = silu(p).value();
  for (int i = 0; i < 3; ++i) {
    const double v = p.value()[i];
    EXPECT_NEAR(g[i], 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))), 1e-5);
    EXPECT_NEAR(e[i], v > 0 ? v : std::exp(v) - 1, 1e-6);
    EXPECT_NEAR(s[i], 1 / (1 + std::exp(-v)), 1e-6);
    EXPECT_NEAR(si[i], v / (1 + std::exp(-v)), 1e-6);
  }
}

TEST(Ops, EmbeddingDropoutReductionsGradients) {
  Var table = leaf({7, 5}, 21);
  const std::vector<int32_t> ids = {1, 3, 3, 6, 0, 1};  // repeats accumulate
  expect_grad([&] { return embedding(ids, {2, 3}, table); }, {table}, "embedding");
  EXPECT_THROW(embedding({9}, {1}, table), std::invalid_argument);

  Var x = leaf({4, 8}, 22);
  const RngStream stream(3, Purpose::dropout, 1, 2, 3);
  expect_grad([&] { return dropout(x, 0.3f, stream, true); }, {x}, "dropout");
  const Tensor d1 = dropout(Var(x.value()), 0.5f, stream, true).value(), d2 = dropout(Var(x.value()), 0.5f, stream, true).value();
  EXPECT_EQ(d1.to_vector(), d2.to_vector()) << "dropout mask must be a function of the stream";
  int zeros = 0;
  for (int64_t i = 0; i < d1.numel(); ++i) zeros += d1[i] == 0.f;
  EXPECT_GT(zeros, 4);
  EXPECT_LT(zeros, 28);
  EXPECT_EQ(dropout(Var(x.value()), 0.5f, stream, false).value().to_vector(), x.value().to_vector());

  Var y = leaf({2, 3, 4}, 23);
  expect_grad([&] { return ab::sum(y); }, {y}, "sum");
  expect_grad([&] { return mean(y); }, {y}, "mean");
  for (int d : {0, 1, 2}) {
    expect_grad([&] { return sum_dim(y, d); }, {y}, "sum_dim");
    expect_grad([&] { return mean_dim(y, d); }, {y}, "mean_dim");
  }
  // Column sums over many rows take the chunked path.
  Var tall = leaf({1, 1000, 3}, 24);
  expect_grad([&] { return sum_dim(tall, 1); }, {tall}, "sum_dim chunked");
  const Tensor cs = sum_dim(Var(tall.value()), 1).value();
  for (int c = 0; c < 3; ++c) {
    double s = 0;
    for (int r = 0; r < 1000; ++r) s += tall.value()[r * 3 + c];
    EXPECT_NEAR(cs[c], s, 1e-3);
  }
}

TEST(Ops, CrossEntropyWithIgnoredRows) {
  Var logits = leaf({5, 4}, 25, -2.f, 2.f);
  const std::vector<int32_t> labels = {0, kIgnoreLabel, 3, 2, kIgnoreLabel};
  expect_grad([&] { return cross_entropy(logits, labels); }, {logits}, "cross_entropy");
  double ref = 0;
  for (int r : {0, 2, 3}) {
    double s = 0;
    for (int c = 0; c < 4; ++c) s += std::exp(logits.value()[r * 4 + c]);
    ref += std::log(s) - logits.value()[r * 4 + labels[r]];
  }
  EXPECT_NEAR(cross_entropy(Var(logits.value()), labels).value()[0], ref / 3, 1e-5);
  EXPECT_THROW(cross_entropy(Var(logits.value()), {0, 1, 2, 4, 0}), std::invalid_argument);
}

TEST(Ops, GradCheckCatchesAWrongBackward) {
  // A deliberately wrong backward (factor 2) must fail the checker: the checker itself can fail.
  Var x = leaf({3, 3}, 26);
  auto wrong = [&] {
    Tensor y = x.value().clone();
    return make_op_result(std::move(y), {x}, [x](const Tensor& g) {
      Tensor d = g.clone();
      for (int64_t i = 0; i < d.numel(); ++i) d[i] *= 2.f;
      x.accumulate_grad(d);
    });
  };
  EXPECT_FALSE(grad_check(wrong, {x}).passed);
}

// ---- the ops of issue 19: each forward against a naive loop, each backward by finite differences ----

namespace {
// Row-major offset of `idx` in `shape`.
int64_t offset_of(const Shape& shape, const std::vector<int64_t>& idx) {
  int64_t off = 0;
  for (size_t d = 0; d < shape.size(); ++d) off = off * shape[d] + idx[d];
  return off;
}
// Every multi-index of `shape`, row-major.
std::vector<std::vector<int64_t>> indices_of(const Shape& shape) {
  std::vector<std::vector<int64_t>> out;
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t i = 0; i < numel(shape); ++i) {
    out.push_back(idx);
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}
void expect_values(const Tensor& got, const std::vector<float>& want, double tol, const char* what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  for (int64_t i = 0; i < got.numel(); ++i) EXPECT_NEAR(got[i], want[i], tol * (1 + std::fabs(want[i]))) << what << " at " << i;
}
}  // namespace

TEST(Ops, DivMaximumMinimumBroadcastLikeMul) {
  const std::vector<std::pair<Shape, Shape>> cases = {{{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4}, {4}}, {{2, 3, 4}, {2, 3, 1}}, {{3, 1}, {1, 4}}};
  for (const auto& [sa, sb] : cases) {
    // b kept away from 0 (div) and from a (max / min: no tie inside the difference step).
    Var a = leaf(sa, 30, -1.f, 1.f), b = leaf(sb, 31, 1.2f, 2.f);
    expect_grad([&] { return div(a, b); }, {a, b}, "div");
    Var bm = leaf(sb, 32, -1.f, 1.f);
    expect_grad([&] { return maximum(a, bm); }, {a, bm}, "maximum");
    expect_grad([&] { return minimum(a, bm); }, {a, bm}, "minimum");
    // Forward: the broadcast result equals the naive loop on the broadcast operands.
    const Tensor d = div(Var(a.value()), Var(b.value())).value(), mx = maximum(Var(a.value()), Var(bm.value())).value(),
                 mn = minimum(Var(a.value()), Var(bm.value())).value();
    const Tensor one = Tensor::full(d.shape(), 1.f);
    const Tensor ab_ = mul(Var(a.value()), Var(one)).value();  // a, broadcast
    const Tensor bb = mul(Var(b.value()), Var(one)).value(), bmb = mul(Var(bm.value()), Var(one)).value();
    std::vector<float> wd, wx, wn;
    for (int64_t i = 0; i < d.numel(); ++i) {
      wd.push_back(ab_[i] / bb[i]);
      wx.push_back(std::max(ab_[i], bmb[i]));
      wn.push_back(std::min(ab_[i], bmb[i]));
    }
    expect_values(d, wd, 1e-6, "div");
    expect_values(mx, wx, 0, "maximum");
    expect_values(mn, wn, 0, "minimum");
  }
  // A tie sends the whole gradient to a.
  Var a(Tensor::from({2}, {1.f, 2.f}), true), b(Tensor::from({2}, {1.f, 3.f}), true);
  ab::sum(maximum(a, b)).backward();
  EXPECT_EQ(a.grad().to_vector(), (std::vector<float>{1.f, 0.f}));
  EXPECT_EQ(b.grad().to_vector(), (std::vector<float>{0.f, 1.f}));
}

TEST(Ops, UnaryOpsMatchTheirFormulasAndGradients) {
  Var pos = leaf({3, 5}, 33, 0.3f, 2.f), any = leaf({3, 5}, 34, -2.f, 2.f);
  const struct {
    const char* name;
    std::function<Var(const Var&)> op;
    double (*ref)(double);
    bool positive_only;
  } cases[] = {
      {"reciprocal", [](const Var& v) { return reciprocal(v); }, [](double v) { return 1 / v; }, true},
      {"sqrt", [](const Var& v) { return ab::sqrt(v); }, [](double v) { return std::sqrt(v); }, true},
      {"rsqrt", [](const Var& v) { return rsqrt(v); }, [](double v) { return 1 / std::sqrt(v); }, true},
      {"pow 2.5", [](const Var& v) { return ab::pow(v, 2.5f); }, [](double v) { return std::pow(v, 2.5); }, true},
      {"pow -1.5", [](const Var& v) { return ab::pow(v, -1.5f); }, [](double v) { return std::pow(v, -1.5); }, true},
      {"pow 3 (negative x)", [](const Var& v) { return ab::pow(v, 3.f); }, [](double v) { return v * v * v; }, false},
      {"abs", [](const Var& v) { return ab::abs(v); }, [](double v) { return std::fabs(v); }, false},
      {"clamp", [](const Var& v) { return clamp(v, -0.5f, 0.7f); }, [](double v) { return std::clamp(v, -0.5, 0.7); }, false},
  };
  for (const auto& c : cases) {
    const Var& x = c.positive_only ? pos : any;
    expect_grad([&] { return c.op(x); }, {x}, c.name);
    std::vector<float> want;
    for (int64_t i = 0; i < x.value().numel(); ++i) want.push_back(static_cast<float>(c.ref(x.value()[i])));
    expect_values(c.op(Var(x.value())).value(), want, 1e-6, c.name);
  }
  // Exact gradients at the kinks: abs'(0) = 0, clamp passes nothing outside (lo, hi).
  Var k(Tensor::from({4}, {0.f, -3.f, 3.f, 0.1f}), true);
  ab::sum(add(ab::abs(k), clamp(k, -1.f, 1.f))).backward();
  EXPECT_EQ(k.grad().to_vector(), (std::vector<float>{1.f, -1.f, 1.f, 2.f}));
  EXPECT_THROW(clamp(k, 1.f, -1.f), std::invalid_argument);
}

TEST(Ops, LogSoftmaxAndL2NormalizeMatchNaiveLoops) {
  Var x = leaf({2, 3, 5}, 35, -3.f, 3.f);
  expect_grad([&] { return log_softmax(x); }, {x}, "log_softmax");
  std::vector<float> want;
  for (int64_t r = 0; r < 6; ++r) {
    double s = 0;
    for (int c = 0; c < 5; ++c) s += std::exp(double(x.value()[r * 5 + c]));
    for (int c = 0; c < 5; ++c) want.push_back(static_cast<float>(x.value()[r * 5 + c] - std::log(s)));
  }
  expect_values(log_softmax(Var(x.value())).value(), want, 1e-5, "log_softmax");
  // Large logits stay finite.
  const Tensor big = log_softmax(Var(Tensor::from({2}, {1000.f, 0.f}))).value();
  EXPECT_NEAR(big[0], 0.f, 1e-6);
  EXPECT_NEAR(big[1], -1000.f, 1e-3);

  for (int dim : {0, 1, 2, -1}) {
    expect_grad([&] { return l2_normalize(x, dim); }, {x}, "l2_normalize");
    const Shape& s = x.shape();
    const int d = dim < 0 ? dim + 3 : dim;
    std::vector<float> w(static_cast<size_t>(x.value().numel()));
    for (const auto& idx : indices_of(s)) {
      double ss = 0;
      auto j = idx;
      for (j[d] = 0; j[d] < s[d]; ++j[d]) ss += double(x.value()[offset_of(s, j)]) * x.value()[offset_of(s, j)];
      w[offset_of(s, idx)] = static_cast<float>(x.value()[offset_of(s, idx)] / std::max(std::sqrt(ss), 1e-12));
    }
    expect_values(l2_normalize(Var(x.value()), dim).value(), w, 1e-5, "l2_normalize");
  }
  // Below eps the divisor is eps: a zero vector stays zero, with gradient g / eps.
  Var z(Tensor::zeros({1, 3}), true);
  const Var nz = l2_normalize(z, -1, 0.5f);
  EXPECT_EQ(nz.value().to_vector(), (std::vector<float>{0.f, 0.f, 0.f}));
  ab::sum(nz).backward();
  EXPECT_EQ(z.grad().to_vector(), (std::vector<float>{2.f, 2.f, 2.f}));
}

TEST(Ops, CumsumAndDimReductionsWithKeepdim) {
  Var x = leaf({2, 3, 4}, 36, -2.f, 2.f);
  const Shape s = x.shape();
  for (int d : {0, 1, 2}) {
    expect_grad([&] { return cumsum(x, d); }, {x}, "cumsum");
    std::vector<float> want(static_cast<size_t>(x.value().numel()));
    for (const auto& idx : indices_of(s)) {
      double acc = 0;
      auto j = idx;
      for (j[d] = 0; j[d] <= idx[d]; ++j[d]) acc += x.value()[offset_of(s, j)];
      want[offset_of(s, idx)] = static_cast<float>(acc);
    }
    expect_values(cumsum(Var(x.value()), d).value(), want, 1e-5, "cumsum");

    for (bool keep : {false, true}) {
      expect_grad([&] { return sum_dim(x, d, keep); }, {x}, "sum_dim keepdim");
      expect_grad([&] { return mean_dim(x, d, keep); }, {x}, "mean_dim keepdim");
      expect_grad([&] { return max_dim(x, d, keep); }, {x}, "max_dim");
      Shape rs = s;
      rs[d] = 1;
      std::vector<float> ws, wm, wx;
      for (const auto& idx : indices_of(rs)) {
        double acc = 0;
        float mx = -INFINITY;
        auto j = idx;
        for (j[d] = 0; j[d] < s[d]; ++j[d]) acc += x.value()[offset_of(s, j)], mx = std::max(mx, x.value()[offset_of(s, j)]);
        ws.push_back(static_cast<float>(acc));
        wm.push_back(static_cast<float>(acc / s[d]));
        wx.push_back(mx);
      }
      Shape want_shape = rs;
      if (!keep) want_shape.erase(want_shape.begin() + d);
      const Tensor ys = sum_dim(Var(x.value()), d, keep).value(), ym = mean_dim(Var(x.value()), d, keep).value(),
                   yx = max_dim(Var(x.value()), d, keep).value();
      EXPECT_EQ(ys.shape(), want_shape);
      EXPECT_EQ(ym.shape(), want_shape);
      EXPECT_EQ(yx.shape(), want_shape);
      expect_values(ys, ws, 1e-5, "sum_dim");
      expect_values(ym, wm, 1e-5, "mean_dim");
      expect_values(yx, wx, 0, "max_dim");
    }
  }
  // max_dim: a tie sends the gradient to the first maximum only.
  Var t(Tensor::from({1, 3}, {2.f, 5.f, 5.f}), true);
  ab::sum(max_dim(t, 1)).backward();
  EXPECT_EQ(t.grad().to_vector(), (std::vector<float>{0.f, 1.f, 0.f}));
}

TEST(Ops, GatherAndTopkMatchNaiveLoops) {
  Var x = leaf({2, 5, 3}, 37, -2.f, 2.f);
  // Index along dim 1 with repeats (their gradients add up), m = 4 != n = 5.
  const Shape is{2, 4, 3};
  std::vector<int32_t> index;
  for (int64_t i = 0; i < numel(is); ++i) index.push_back(static_cast<int32_t>((i * 7 + 3) % 5));
  expect_grad([&] { return gather(x, 1, index, is); }, {x}, "gather");
  std::vector<float> want;
  for (const auto& idx : indices_of(is)) {
    auto j = idx;
    j[1] = index[offset_of(is, idx)];
    want.push_back(x.value()[offset_of(x.shape(), j)]);
  }
  expect_values(gather(Var(x.value()), 1, index, is).value(), want, 0, "gather");
  EXPECT_THROW(gather(x, 1, std::vector<int32_t>(numel(is), 5), is), std::invalid_argument);
  EXPECT_THROW(gather(x, 1, index, {2, 4, 2}), std::invalid_argument);

  for (int64_t k : {1, 3, 5}) {
    Var r = leaf({4, 5}, 38, -2.f, 2.f);
    expect_grad([&] { return topk(r, k).values; }, {r}, "topk");
    const TopK t = topk(Var(r.value()), k);
    ASSERT_EQ(t.values.shape(), (Shape{4, k}));
    ASSERT_EQ(t.indices.size(), static_cast<size_t>(4 * k));
    for (int64_t row = 0; row < 4; ++row) {
      std::vector<std::pair<float, int32_t>> all;
      for (int32_t c = 0; c < 5; ++c) all.emplace_back(r.value()[row * 5 + c], c);
      std::sort(all.begin(), all.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
      for (int64_t i = 0; i < k; ++i) {
        EXPECT_EQ(t.indices[row * k + i], all[i].second);
        EXPECT_EQ(t.values.value()[row * k + i], all[i].first);
      }
    }
  }
  // Ties: the lower index first.
  const TopK tie = topk(Var(Tensor::from({4}, {1.f, 3.f, 3.f, 0.f})), 2);
  EXPECT_EQ(tie.indices, (std::vector<int32_t>{1, 2}));
  EXPECT_THROW(topk(x, 4), std::invalid_argument);
}
