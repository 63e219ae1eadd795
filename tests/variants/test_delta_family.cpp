// The delta-rule relatives built on the shared kernels: kda (delta_rule with a per-key-dimension
// decay; the kernel's recurrence and equivalence tests are in tests/kernels/test_delta_rule.cpp),
// hgrn2 and gsa (gated_linear_attention). Here: every form of hgrn2 and gsa gives the same output
// and gradients at a length that is not a multiple of the chunk; gsa equals its two-memory
// recurrence written here in double straight from the paper's equations (which checks the
// key memory scan, ab::gated_slot_memory); the conformance suite with non-default settings.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/variant.hpp"
#include "support/mixer_build.hpp"
#include "support/mixer_runs.hpp"
#include "support/random_tensors.hpp"

using namespace ab;
using namespace ab::test;

namespace {

struct FamilyRun {
  Tensor y, dx;
  std::vector<Tensor> dparams;
};

FamilyRun forward_backward(const std::string& name, const Json& params, const Tensor& x0, bool causal) {
  auto m = build_mixer(name, params, x0.dim(2), 2, 64);
  Var x(x0, true);
  MixerContext ctx;
  ctx.causal = causal;
  Var y = m->forward(x, ctx);
  y.backward(normal_tensor(y.value().shape(), 77, 4242));
  FamilyRun r{y.value(), x.grad(), {}};
  for (const auto& [n, v] : m->parameters()) r.dparams.push_back(v.grad());
  return r;
}

// N = 37 with chunks of 16: the chunked, recurrent and parallel forms agree, forward and gradients
// (of the input and of every parameter), causal and bidirectional.
TEST(DeltaFamily, EveryFormOfHgrn2AndGsaAgreesWithGradients) {
  const Tensor x = normal_tensor({2, 37, 16}, 5, 4242);
  const std::vector<std::pair<std::string, Json>> cases = {
      {"hgrn2", Json{{"expand_ratio", 8}, {"lower_bound", 0.0}}},
      {"hgrn2", Json{{"expand_ratio", 8}, {"lower_bound", 0.4}}},
      {"gsa", Json{{"num_slots", 6}}},
  };
  for (const auto& [name, base] : cases)
    for (bool causal : {true, false}) {
      Json chunked = base, rec = base, par = base;
      chunked["form"] = "chunked";
      chunked["chunk"] = 16;
      rec["form"] = "recurrent";
      par["form"] = "parallel";
      const FamilyRun a = forward_backward(name, chunked, x, causal);
      for (const Json& other : {rec, par}) {
        const FamilyRun b = forward_backward(name, other, x, causal);
        const std::string what = name + " " + other.dump() + (causal ? " causal" : " bidirectional");
        EXPECT_LT(test::deviation(a.y, b.y).worst, 2e-5) << what;
        EXPECT_LT(test::deviation(a.dx, b.dx).worst, 2e-4) << what;
        ASSERT_EQ(a.dparams.size(), b.dparams.size());
        for (size_t i = 0; i < a.dparams.size(); ++i)
          EXPECT_LT(test::deviation(a.dparams[i], b.dparams[i]).worst, 5e-4) << what << " param " << i;
      }
    }
}

// GSA from the paper's equations (eq. 8-10) in double, on the mixer's own weights:
//   K~_t = diag(a_t) K~_{t-1} + (1 - a_t) k_t^T,  V~_t = diag(a_t) V~_{t-1} + (1 - a_t) v_t^T,
//   o_t = V~_t^T softmax(K~_t q_t / sqrt(dk)),  y = LayerNorm_head(o) Wo.
TEST(DeltaFamily, GsaEqualsItsTwoMemoryRecurrence) {
  const int64_t B = 2, N = 23, D = 12, H = 2, m = 5, dk = D / H, dv = D / H;
  const double tau = 8;
  const Tensor x = normal_tensor({B, N, D}, 6, 4242);
  auto mixer = build_mixer("gsa", Json{{"num_slots", m}, {"chunk", 8}}, D, H, 64);
  NoGrad ng;
  MixerContext ctx;
  ctx.causal = true;
  const Tensor y = mixer->forward(Var(x), ctx).value();
  const Tensor wq = mixer_param(*mixer, "wq").value(), wk = mixer_param(*mixer, "wk").value(),
               wv = mixer_param(*mixer, "wv").value(), wf = mixer_param(*mixer, "wf").value(),
               wo = mixer_param(*mixer, "wo").value(), nw = mixer_param(*mixer, "norm_weight").value(),
               nb = mixer_param(*mixer, "norm_bias").value();
  auto proj = [&](const Tensor& w, int64_t b, int64_t t, int64_t c) {  // (x_t W)[c], W [D, out]
    double s = 0;
    for (int64_t i = 0; i < D; ++i) s += double(x[(b * N + t) * D + i]) * w[i * w.dim(1) + c];
    return s;
  };
  auto silu = [](double z) { return z / (1 + std::exp(-z)); };
  double worst = 0, scale = 1e-12;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> Kt(H * m * dk, 0.0), Vt(H * m * dv, 0.0);
    for (int64_t t = 0; t < N; ++t) {
      std::vector<double> o(H * dv);
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> sc(m, 0.0);
        for (int64_t j = 0; j < m; ++j) {
          const double f = proj(wf, b, t, h * m + j);
          const double a = std::pow(1 / (1 + std::exp(-f)), 1 / tau);  // exp(logsigmoid(f) / tau)
          for (int64_t i = 0; i < dk; ++i) {
            double& K = Kt[(h * m + j) * dk + i];
            K = a * K + (1 - a) * silu(proj(wk, b, t, h * dk + i));
            sc[j] += K * silu(proj(wq, b, t, h * dk + i)) / std::sqrt(double(dk));
          }
          for (int64_t c = 0; c < dv; ++c) {
            double& V = Vt[(h * m + j) * dv + c];
            V = a * V + (1 - a) * proj(wv, b, t, h * dv + c);
          }
        }
        double mx = sc[0], z = 0;
        for (double s : sc) mx = std::max(mx, s);
        for (double& s : sc) z += (s = std::exp(s - mx));
        double mean = 0, var = 0;
        for (int64_t c = 0; c < dv; ++c) {
          double oc = 0;
          for (int64_t j = 0; j < m; ++j) oc += sc[j] / z * Vt[(h * m + j) * dv + c];
          o[h * dv + c] = oc;
          mean += oc / dv;
        }
        for (int64_t c = 0; c < dv; ++c) var += (o[h * dv + c] - mean) * (o[h * dv + c] - mean) / dv;
        for (int64_t c = 0; c < dv; ++c) o[h * dv + c] = (o[h * dv + c] - mean) / std::sqrt(var + 1e-5) * nw[c] + nb[c];
      }
      for (int64_t c = 0; c < D; ++c) {
        double r = 0;
        for (int64_t i = 0; i < H * dv; ++i) r += o[i] * wo[i * D + c];
        worst = std::max(worst, std::fabs(r - y[(b * N + t) * D + c]));
        scale = std::max(scale, std::fabs(r));
      }
    }
  }
  EXPECT_LT(worst / scale, 1e-4);
}

TEST(DeltaFamily, ConformanceWithOtherSettings) {
  const std::vector<std::pair<std::string, Json>> cases = {
      {"kda", Json::object()},
      {"kda", Json{{"chunk", 64}, {"expand_v", 0.5}, {"conv_size", 1}}},
      {"hgrn2", Json{{"form", "recurrent"}, {"expand_ratio", 3}}},
      {"gsa", Json{{"form", "recurrent"}, {"num_slots", 3}}},
  };
  for (const auto& [name, params] : cases) {
    const VariantSpec* spec = VariantRegistry::instance().find(name);
    ASSERT_NE(spec, nullptr) << name;
    for (const CheckResult& r : check_variant(*spec, params))
      EXPECT_TRUE(r.passed) << name << " " << params.dump() << " " << r.check << ": " << r.detail;
  }
}

}  // namespace
