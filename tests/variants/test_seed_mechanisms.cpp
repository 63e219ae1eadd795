// The seed mechanisms of issue 18: sla, long_conv, kernel_rpe_fft, lmu, ttt_linear. Each fast form is
// compared with a reference written here independently, in double, from the papers' formulas
// (explicit sums, no scans, no FFTs); the registry-wide conformance suite (tests/mixer/
// test_variants.cpp) covers gradients, causality, padding, decode = forward and the cost models.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/variant.hpp"
#include "support/mixer_build.hpp"
#include "support/random_tensors.hpp"

using namespace ab;
using namespace ab::test;

namespace {

using Vec = std::vector<double>;

// Overwrites a parameter with symmetric noise (initial values such as zeros would hide terms).
void randomise(const Mixer& m, const std::string& name, uint64_t key, float scale) {
  Var p = mixer_param(m, name);
  const Tensor r = test::symmetric_tensor(p.shape(), 11, key, scale);
  std::copy(r.data(), r.data() + r.numel(), p.value_mut().data());
}


double max_abs_diff(const Vec& ref, const Tensor& got) {
  EXPECT_EQ(static_cast<int64_t>(ref.size()), got.numel());
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(ref[i] - got[static_cast<int64_t>(i)]));
  return worst;
}

}  // namespace

// ---- sla ----
// out_i = relu(q_i) . sum_j relu(k_j + P_j) v_j / (relu(q_i) . sum_j relu(k_j + P_j) + 1e-6)
//         + b_c + sum_t w[c, t] v_{i + t - 2}   (centred)  or  sum_t w[c, t] v_{i - t}  (causal)
TEST(Sla, AttendEqualsTheNaiveFormulaWithGradients) {
  const int64_t B = 2, H = 2, N = 7, d = 3, D = H * d, M = 9;
  const Tensor mask = padding_mask(B, N, {7, 5});
  for (bool causal : {false, true})
    for (bool masked : {false, true}) {
      auto mixer = build_mixer("sla", Json::object(), D, H, M);
      auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
      ASSERT_NE(attn, nullptr);
      randomise(*mixer, "positional_encoding", 1, 1.f);
      const Tensor P = mixer_param(*mixer, "positional_encoding").value();
      const Tensor w = mixer_param(*mixer, "dwc_weight").value(), bias = mixer_param(*mixer, "dwc_bias").value();
      const int64_t K = w.dim(1);
      MixerContext ctx;
      ctx.causal = causal;
      ctx.key_mask = masked ? &mask : nullptr;
      const Tensor q = test::symmetric_tensor({B, H, N, d}, 5, 1), k = test::symmetric_tensor({B, H, N, d}, 5, 2),
                   v = test::symmetric_tensor({B, H, N, d}, 5, 3);
      auto kept = [&](int64_t b, int64_t j) { return !masked || std::isfinite(mask[b * N + j]); };
      auto at = [&](const Tensor& t, int64_t b, int64_t h, int64_t n, int64_t c) {
        return double(t[((b * H + h) * N + n) * d + c]);
      };
      Vec ref(static_cast<size_t>(B * H * N * d), 0.0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < N; ++i) {
            Vec num(static_cast<size_t>(d), 0.0);
            double den = 0;
            for (int64_t j = 0; j < N; ++j) {
              if ((causal && j > i) || !kept(b, j)) continue;
              double a = 0;
              for (int64_t c = 0; c < d; ++c)
                a += std::max(at(q, b, h, i, c), 0.0) * std::max(at(k, b, h, j, c) + P[j * D + h * d + c], 0.0);
              den += a;
              for (int64_t c = 0; c < d; ++c) num[c] += a * at(v, b, h, j, c);
            }
            for (int64_t c = 0; c < d; ++c) {
              double conv = bias[c];
              for (int64_t t = 0; t < K; ++t) {
                const int64_t j = causal ? i - t : i + t - (K - 1) / 2;
                if (j >= 0 && j < N && kept(b, j)) conv += w[c * K + t] * at(v, b, h, j, c);
              }
              ref[((b * H + h) * N + i) * d + c] = (den + 1e-6 != 0 ? num[c] / (den + 1e-6) : 0.0) + conv;
            }
          }
      const Var y = attn->attend(Var(q), Var(k), Var(v), ctx);
      EXPECT_LE(max_abs_diff(ref, y.value()), 1e-4) << "causal=" << causal << " masked=" << masked;

      // Gradients of the fused ops against finite differences, through the parameters as well.
      Var vq(q.clone(), true), vk(k.clone(), true), vv(v.clone(), true);
      const GradCheckReport r = grad_check([&] { return attn->attend(vq, vk, vv, ctx); },
                                           {vq, vk, vv, mixer_param(*mixer, "positional_encoding"),
                                            mixer_param(*mixer, "dwc_weight"), mixer_param(*mixer, "dwc_bias")});
      EXPECT_TRUE(r.passed) << r.detail;
    }
}

// ---- long_conv ----
// The whole mixer against direct sums: k = soft_threshold(moving_average(K)),
//   y_t = GLU(W_out GELU(sum_{l <= t} k_f[l] u_{t-l} + [bidirectional] sum_{l >= 1} k_b[l - 1] u_{t+l} + D u_t)).
TEST(LongConvVariant, EqualsDirectSumsOfTheSquashedSmoothedKernels) {
  const int64_t B = 2, N = 9, D = 4, M = 12;
  for (int64_t window : {0, 3})
    for (bool causal : {false, true}) {
      auto mixer = build_mixer("long_conv", Json{{"ma_window", window}, {"lam", 0.01}}, D, 1, M);
      randomise(*mixer, "kernel_fwd", 1, 0.3f);
      randomise(*mixer, "kernel_bwd", 2, 0.3f);
      const Tensor kf = mixer_param(*mixer, "kernel_fwd").value(), kb = mixer_param(*mixer, "kernel_bwd").value();
      const Tensor skip = mixer_param(*mixer, "skip").value(), w = mixer_param(*mixer, "w_out").value(),
                   bias = mixer_param(*mixer, "b_out").value();
      auto taps = [&](const Tensor& k, int64_t c, int64_t l) {
        double s = 0;
        if (window == 0) {
          s = k[c * M + l];
        } else {
          for (int64_t j = l - window / 2; j <= l + window / 2; ++j)
            if (j >= 0 && j < M) s += k[c * M + j] / double(window);
        }
        return s > 0.01 ? s - 0.01 : (s < -0.01 ? s + 0.01 : 0.0);
      };
      const Tensor x = test::symmetric_tensor({B, N, D}, 5, 4);
      Vec ref(static_cast<size_t>(B * N * D));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < N; ++t) {
          Vec h(static_cast<size_t>(D));
          for (int64_t c = 0; c < D; ++c) {
            double s = skip[c] * x[(b * N + t) * D + c];
            for (int64_t l = 0; l <= t; ++l) s += taps(kf, c, l) * x[(b * N + t - l) * D + c];
            if (!causal)
              for (int64_t l = 1; t + l < N; ++l) s += taps(kb, c, l - 1) * x[(b * N + t + l) * D + c];
            h[c] = 0.5 * s * (1 + std::erf(s / std::sqrt(2.0)));
          }
          for (int64_t o = 0; o < D; ++o) {
            double a = bias[o], g = bias[D + o];
            for (int64_t c = 0; c < D; ++c) {
              a += h[c] * w[c * 2 * D + o];
              g += h[c] * w[c * 2 * D + D + o];
            }
            ref[(b * N + t) * D + o] = a / (1 + std::exp(-g));
          }
        }
      MixerContext ctx;
      ctx.causal = causal;
      EXPECT_LE(max_abs_diff(ref, mixer->forward(Var(x), ctx).value()), 1e-5) << "window=" << window
                                                                                << " causal=" << causal;
      const GradCheckReport r = grad_check([&] { return mixer->forward(Var(x), ctx); },
                                           {mixer_param(*mixer, "kernel_fwd"), mixer_param(*mixer, "kernel_bwd")});
      EXPECT_TRUE(r.passed) << r.detail;
    }
}

// ---- kernel_rpe_fft ----
// The FFT Toeplitz product against the dense one: out_i = sum_j exp(b_{i-j}) kappa(q_i, k_j) v_j /
// sum_j exp(b_{i-j}) kappa(q_i, k_j), kappa(q, k) = sum_a exp(w_a.q^ - |q^|^2/2) exp(w_a.k^ - |k^|^2/2),
// x^ = x d^-1/4, with the mixer's W redrawn here from its stream (RngStream(seed, mixer, layer, 0)).
TEST(KernelRpeFft, FftToeplitzProductEqualsTheDenseOneWithGradients) {
  const int64_t B = 2, H = 2, N = 7, d = 3, D = H * d, M = 9, m = 5;
  const Tensor mask = padding_mask(B, N, {7, 4});
  const Tensor w = init_normal({m, d}, 1.0f, RngStream(3, Purpose::mixer, 0, 0));
  for (bool causal : {false, true})
    for (bool masked : {false, true}) {
      auto mixer = build_mixer("kernel_rpe_fft", Json{{"num_features", m}}, D, H, M);
      auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
      ASSERT_NE(attn, nullptr);
      randomise(*mixer, "rpe_fwd", 1, 1.f);
      randomise(*mixer, "rpe_bwd", 2, 1.f);
      const Tensor bf = mixer_param(*mixer, "rpe_fwd").value(), bb = mixer_param(*mixer, "rpe_bwd").value();
      MixerContext ctx;
      ctx.causal = causal;
      ctx.key_mask = masked ? &mask : nullptr;
      const Tensor q = test::symmetric_tensor({B, H, N, d}, 6, 1), k = test::symmetric_tensor({B, H, N, d}, 6, 2),
                   v = test::symmetric_tensor({B, H, N, d}, 6, 3);
      const double s4 = std::pow(double(d), -0.25);
      auto feature = [&](const Tensor& x, int64_t row, int64_t a) {
        double wx = 0, xx = 0;
        for (int64_t c = 0; c < d; ++c) {
          wx += w[a * d + c] * x[row * d + c] * s4;
          xx += x[row * d + c] * s4 * x[row * d + c] * s4;
        }
        return std::exp(wx - xx / 2);
      };
      Vec ref(static_cast<size_t>(B * H * N * d), 0.0);
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t i = 0; i < N; ++i) {
          Vec num(static_cast<size_t>(d), 0.0);
          double den = 0;
          for (int64_t j = 0; j < N; ++j) {
            if ((causal && j > i) || (masked && !std::isfinite(mask[(bh / H) * N + j]))) continue;
            double kappa = 0;
            for (int64_t a = 0; a < m; ++a) kappa += feature(q, bh * N + i, a) * feature(k, bh * N + j, a);
            const int64_t h = bh % H;
            const double c = std::exp(i >= j ? bf[h * M + (i - j)] : bb[h * M + (j - i - 1)]);
            den += c * kappa;
            for (int64_t e = 0; e < d; ++e) num[e] += c * kappa * v[(bh * N + j) * d + e];
          }
          for (int64_t e = 0; e < d; ++e) ref[(bh * N + i) * d + e] = num[e] / den;
        }
      const Var y = attn->attend(Var(q), Var(k), Var(v), ctx);
      EXPECT_LE(max_abs_diff(ref, y.value()), 1e-4) << "causal=" << causal << " masked=" << masked;
      Var vq(q.clone(), true), vk(k.clone(), true), vv(v.clone(), true);
      const GradCheckReport r =
          grad_check([&] { return attn->attend(vq, vk, vv, ctx); },
                     {vq, vk, vv, mixer_param(*mixer, "rpe_fwd"), mixer_param(*mixer, "rpe_bwd")});
      EXPECT_TRUE(r.passed) << r.detail;
    }
}

// ---- lmu ----
// The FFT convolution against the recurrence m_t = Abar m_{t-1} + Bbar u_t, with (Abar, Bbar) found
// independently of the variant's matrix exponential: RK4 integration over dt = 1 of Phi' = A Phi
// (Phi(0) = I) and of b' = A b + B (b(0) = 0, the input held constant: zero-order hold).
TEST(Lmu, FftConvolutionEqualsTheZohRecurrence) {
  const int64_t B = 2, N = 11, D = 4, q = 6;
  const double theta = 5.0;
  std::vector<double> A(q * q), Bv(q);
  for (int64_t i = 0; i < q; ++i) {
    for (int64_t j = 0; j < q; ++j) A[i * q + j] = (2.0 * i + 1) / theta * (i < j ? -1.0 : std::pow(-1.0, double(i - j + 1)));
    Bv[i] = (2.0 * i + 1) / theta * std::pow(-1.0, double(i));
  }
  // State [Phi (q x q) | b (q)] as q rows of q + 1; derivative [A Phi | A b + B].
  const int64_t w = q + 1, steps = 2000;
  std::vector<double> s(q * w, 0.0);
  for (int64_t i = 0; i < q; ++i) s[i * w + i] = 1.0;
  auto deriv = [&](const std::vector<double>& x) {
    std::vector<double> dx(q * w, 0.0);
    for (int64_t i = 0; i < q; ++i) {
      for (int64_t c = 0; c < w; ++c)
        for (int64_t k = 0; k < q; ++k) dx[i * w + c] += A[i * q + k] * x[k * w + c];
      dx[i * w + q] += Bv[i];
    }
    return dx;
  };
  const double h = 1.0 / steps;
  for (int64_t n = 0; n < steps; ++n) {
    auto axpy = [&](const std::vector<double>& x, const std::vector<double>& d, double a) {
      std::vector<double> y(x);
      for (size_t i = 0; i < y.size(); ++i) y[i] += a * d[i];
      return y;
    };
    const auto k1 = deriv(s), k2 = deriv(axpy(s, k1, h / 2)), k3 = deriv(axpy(s, k2, h / 2)), k4 = deriv(axpy(s, k3, h));
    for (size_t i = 0; i < s.size(); ++i) s[i] += h / 6 * (k1[i] + 2 * k2[i] + 2 * k3[i] + k4[i]);
  }
  for (bool masked : {false, true}) {
    auto mixer = build_mixer("lmu", Json{{"memory_size", q}, {"theta", theta}}, D, 1, 16);
    const Tensor wu = mixer_param(*mixer, "w_u").value(), bu = mixer_param(*mixer, "b_u").value();
    const Tensor wh = mixer_param(*mixer, "w_h").value(), bh = mixer_param(*mixer, "b_h").value();
    const Tensor wp = mixer_param(*mixer, "w_proj").value(), bp = mixer_param(*mixer, "b_proj").value();
    const Tensor x = test::symmetric_tensor({B, N, D}, 7, 1, 2.f);
    const Tensor mask = padding_mask(B, N, {11, 7});
    Vec ref(static_cast<size_t>(B * N * D));
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> m(q, 0.0);
      for (int64_t t = 0; t < N; ++t) {
        double u = bu[0];
        for (int64_t c = 0; c < D; ++c) u += wu[c] * x[(b * N + t) * D + c];
        u = std::max(u, 0.0);
        if (masked && !std::isfinite(mask[b * N + t])) u = 0;
        std::vector<double> next(q);
        for (int64_t i = 0; i < q; ++i) {
          next[i] = s[i * w + q] * u;
          for (int64_t j = 0; j < q; ++j) next[i] += s[i * w + j] * m[j];
        }
        m = next;
        std::vector<double> hid(D);
        for (int64_t o = 0; o < D; ++o) {
          double a = bh[o];
          for (int64_t i = 0; i < q; ++i) a += m[i] * wh[i * D + o];
          for (int64_t c = 0; c < D; ++c) a += x[(b * N + t) * D + c] * wh[(q + c) * D + o];
          hid[o] = std::max(a, 0.0);
        }
        for (int64_t o = 0; o < D; ++o) {
          double a = bp[o];
          for (int64_t c = 0; c < D; ++c) a += hid[c] * wp[c * D + o];
          ref[(b * N + t) * D + o] = a;
        }
      }
    }
    MixerContext ctx;
    ctx.causal = true;
    ctx.key_mask = masked ? &mask : nullptr;
    EXPECT_LE(max_abs_diff(ref, mixer->forward(Var(x), ctx).value()), 1e-5) << "masked=" << masked;
  }
}

// ---- ttt_linear ----
// The dual form against the primal (sequential) form: per token i of a mini-batch, one explicit
// gradient step W_i = W0 - tok_i sum_{j <= i} lr_j dl_j/dW(W0, b0), the gradients of the inner loss
// l_j = 1/2 |gamma LN(k_j W + b) + beta - (v_j - k_j)|^2 taken by the harness's autograd through
// ab::layer_norm (not the variant's closed form), then out_i = q_i + gamma LN(q_i W_i + b_i) + beta,
// the next mini-batch starting from the last W_i. N = 11 with mini-batches of 4: a remainder of 3.
TEST(TttLinear, DualFormEqualsOneExplicitGradientStepPerToken) {
  const int64_t B = 2, N = 11, H = 2, d = 4, D = H * d, K = 4;
  auto mixer = build_mixer("ttt_linear", Json{{"mini_batch_size", K}}, D, H, 16);
  uint64_t key = 20;
  for (const char* name : {"W1", "b1", "ttt_norm_weight", "ttt_norm_bias", "token_idx_bias", "lr_bias",
                           "post_norm_weight", "post_norm_bias"})
    randomise(*mixer, name, key++, 0.5f);
  randomise(*mixer, "lr_weight", key++, 1.f);
  auto P = [&](const char* name) { return mixer_param(*mixer, name).value(); };
  const Tensor wq = P("wq"), wk = P("wk"), wv = P("wv"), wo = P("wo"), lw = P("lr_weight"), lb = P("lr_bias");
  const Tensor W1 = P("W1"), b1 = P("b1"), tg = P("ttt_norm_weight"), tb = P("ttt_norm_bias"), tok_b = P("token_idx_bias");
  const Tensor pg = P("post_norm_weight"), pb = P("post_norm_bias");
  const Tensor x = test::symmetric_tensor({B, N, D}, 8, 1, 1.5f);
  auto proj = [&](const Tensor& w, int64_t b, int64_t t, int64_t col) {
    double s = 0;
    for (int64_t c = 0; c < D; ++c) s += x[(b * N + t) * D + c] * w[c * D + col];
    return s;
  };
  auto layer_norm_d = [](std::vector<double> z, const double* g, const double* be) {
    double mu = 0, var = 0;
    for (double e : z) mu += e / double(z.size());
    for (double e : z) var += (e - mu) * (e - mu) / double(z.size());
    for (size_t i = 0; i < z.size(); ++i) z[i] = (z[i] - mu) / std::sqrt(var + 1e-6) * g[i] + be[i];
    return z;
  };
  std::vector<double> merged(static_cast<size_t>(B * N * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> g(d), be(d);
      for (int64_t c = 0; c < d; ++c) {
        g[c] = tg[h * d + c];
        be[c] = tb[h * d + c];
      }
      std::vector<double> w0(W1.data() + h * d * d, W1.data() + (h + 1) * d * d), b0(b1.data() + h * d, b1.data() + (h + 1) * d);
      for (int64_t s = 0; s < N; s += K) {
        const int64_t n = std::min(K, N - s);
        std::vector<double> gw(d * d, 0.0), gb(d, 0.0), wi, bi;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = s + i;
          std::vector<float> kf(d), target(d);
          for (int64_t c = 0; c < d; ++c) {
            kf[c] = static_cast<float>(proj(wk, b, t, h * d + c));
            target[c] = static_cast<float>(proj(wv, b, t, h * d + c) - kf[c]);
          }
          // One gradient of the inner loss at (W0, b0), by autograd.
          Tensor wt = Tensor::empty({d, d}), bt = Tensor::empty({d}), kt = Tensor::empty({1, d}), gt = Tensor::empty({d}),
                 bet = Tensor::empty({d}), tt = Tensor::empty({1, d});
          for (int64_t c = 0; c < d * d; ++c) wt[c] = static_cast<float>(w0[c]);
          for (int64_t c = 0; c < d; ++c) {
            bt[c] = static_cast<float>(b0[c]);
            kt[c] = kf[c];
            gt[c] = static_cast<float>(g[c]);
            bet[c] = static_cast<float>(be[c]);
            tt[c] = target[c];
          }
          Var vw(wt, true), vb(bt, true);
          const Var r = sub(layer_norm(add(matmul(Var(kt), vw), vb), Var(gt), Var(bet), 1e-6f), Var(tt));
          scale(sum(mul(r, r)), 0.5f).backward();
          double lr = lb[h];
          for (int64_t c = 0; c < D; ++c) lr += x[(b * N + t) * D + c] * lw[c * H + h];
          lr = 1.0 / (1.0 + std::exp(-lr)) / double(d);
          for (int64_t c = 0; c < d * d; ++c) gw[c] += lr * vw.grad()[c];
          for (int64_t c = 0; c < d; ++c) gb[c] += lr * vb.grad()[c];
          const double tok = std::max(1.0 / double(i + 1) + tok_b[i], 0.0);
          wi = w0;
          bi = b0;
          for (int64_t c = 0; c < d * d; ++c) wi[c] -= tok * gw[c];
          for (int64_t c = 0; c < d; ++c) bi[c] -= tok * gb[c];
          std::vector<double> q(d), z(d);
          for (int64_t c = 0; c < d; ++c) q[c] = proj(wq, b, t, h * d + c);
          for (int64_t c = 0; c < d; ++c) {
            z[c] = bi[c];
            for (int64_t e = 0; e < d; ++e) z[c] += q[e] * wi[e * d + c];
          }
          const std::vector<double> lz = layer_norm_d(z, g.data(), be.data());
          for (int64_t c = 0; c < d; ++c) merged[(b * N + t) * D + h * d + c] = q[c] + lz[c];
        }
        w0 = wi;
        b0 = bi;
      }
    }
  Vec ref(static_cast<size_t>(B * N * D));
  std::vector<double> pgd(pg.data(), pg.data() + D), pbd(pb.data(), pb.data() + D);
  for (int64_t r = 0; r < B * N; ++r) {
    const std::vector<double> row(merged.begin() + r * D, merged.begin() + (r + 1) * D);
    const std::vector<double> y = layer_norm_d(row, pgd.data(), pbd.data());
    for (int64_t o = 0; o < D; ++o) {
      double s = 0;
      for (int64_t c = 0; c < D; ++c) s += y[c] * wo[c * D + o];
      ref[r * D + o] = s;
    }
  }
  MixerContext ctx;
  ctx.causal = true;
  EXPECT_LE(max_abs_diff(ref, mixer->forward(Var(x), ctx).value()), 2e-4);
}
