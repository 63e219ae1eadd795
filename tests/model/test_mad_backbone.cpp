// MAD's backbone: the SwiGLU channel mixer (model.mlp_type=swiglu) against a hand-written block,
// and rotary positions (model.positions=rotary) in the attention-style layers against the rotation
// written out, the relative-position property and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include <fmt/format.h>

#include "attnbench/check.hpp"
#include "mixer/attention_probe.hpp"
#include "model/model.hpp"
#include "support/model_configs.hpp"
#include "support/model_grad.hpp"
#include "support/random_tensors.hpp"
#include "train/train.hpp"

using namespace ab;

namespace {

using test::params_of;

using test::parameter_count;
using test::usage_message;

RunConfig config(const std::string& variant, const std::vector<std::string>& sets) {
  return test::small_mqar_config(variant, sets);
}

std::vector<double> layer_norm_ref(const std::vector<double>& x, const float* g, const float* b) {
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= static_cast<double>(x.size());
  for (double v : x) var += (v - mean) * (v - mean);
  var /= static_cast<double>(x.size());
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) / std::sqrt(var + 1e-5) * g[i] + b[i];
  return y;
}

void expect_has(const std::string& msg, const std::string& part) {
  EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
}

}  // namespace

// ---- model.mlp_type=swiglu ----

TEST(SwiGlu, MatchesAHandWrittenBlock) {
  // One block whose mixer adds nothing (Wo = 0), no positions: the logits of position n are
  // head(LN_f(e + W2 (SiLU(u W1) * u W3))), e = tok_emb[token n], u = LN_2(e). Every other
  // parameter is random so that no term can hide; in double here.
  const RunConfig c = config("softmax", {"model.layers=1", "model.positions=none", "model.mlp_type=swiglu",
                                         "model.d_model=8", "model.heads=2", "model.mlp_dim=12", "model.dropout=0"});
  auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
  Model model(c.model_params, VariantRegistry::instance().get("softmax"), c.variant_params, *task, 1);
  auto P = params_of(model);
  ASSERT_EQ(P.count("blocks.0.mlp.w3"), 1u);
  ASSERT_EQ(P.count("blocks.0.mlp.b1") + P.count("blocks.0.mlp.b2"), 0u) << "MAD's SwiGLU has no biases";
  uint64_t key = 1;
  for (auto& [name, v] : P) v.value_mut().copy_from(test::symmetric_tensor(v.value().shape(), 23, key++, 0.8f));
  P["blocks.0.mixer.wo"].value_mut().copy_from(Tensor::zeros({8, 8}));
  const Batch batch = make_batch(*task, Split::train, {0, 1});
  const Tensor logits = model.forward(batch, false, 0).value();
  const int64_t D = 8, M = 12, C = task->num_classes();
  auto at = [&](const std::string& n, int64_t i) { return static_cast<double>(P[n].value()[i]); };
  for (int64_t r = 0; r < batch.size * batch.length; ++r) {
    std::vector<double> e(D);
    for (int64_t i = 0; i < D; ++i) e[i] = at("tok_emb", batch.tokens[static_cast<size_t>(r)] * D + i);
    const auto u = layer_norm_ref(e, P["blocks.0.ln2.gamma"].value().data(), P["blocks.0.ln2.beta"].value().data());
    std::vector<double> h(M);
    for (int64_t j = 0; j < M; ++j) {
      double a = 0, b = 0;
      for (int64_t i = 0; i < D; ++i) {
        a += u[i] * at("blocks.0.mlp.w1", i * M + j);
        b += u[i] * at("blocks.0.mlp.w3", i * M + j);
      }
      h[j] = a / (1.0 + std::exp(-a)) * b;  // SiLU(a) * b
    }
    for (int64_t i = 0; i < D; ++i)
      for (int64_t j = 0; j < M; ++j) e[i] += h[j] * at("blocks.0.mlp.w2", j * D + i);
    const auto y = layer_norm_ref(e, P["final_ln.gamma"].value().data(), P["final_ln.beta"].value().data());
    for (int64_t k = 0; k < C; ++k) {
      double s = at("head.b", k);
      for (int64_t i = 0; i < D; ++i) s += y[i] * at("head.w", i * C + k);
      ASSERT_NEAR(logits[r * C + k], s, 1e-4 + 1e-4 * std::fabs(s)) << "row " << r << " class " << k;
    }
  }
}

TEST(SwiGlu, ThreeBiasFreeMatricesPerBlock) {
  // d_model 64, mlp_dim 128, 2 layers: GELU has W1, b1, W2, b2; SwiGLU W1, W2, W3.
  const int64_t gelu = parameter_count("softmax", {}), swiglu = parameter_count("softmax", {"model.mlp_type=swiglu"});
  EXPECT_EQ(swiglu - gelu, 2 * (3 * 64 * 128 - (64 * 128 + 128 + 128 * 64 + 64)));
  EXPECT_EQ(parameter_count("softmax", {"model.mlp_type=gelu"}), gelu) << "gelu is the default";
  // MAD's width at d_model 128: 8 * 128 / 3 = 341 -> 352, a multiple of 16; 3 x 128 x 352 per block.
  EXPECT_EQ(parameter_count("softmax", {"model.mlp_type=swiglu", "model.d_model=128", "model.mlp_dim=352"}) -
                parameter_count("softmax", {"model.mlp=false", "model.d_model=128", "model.mlp_dim=352"}),
            2 * (2 * 128 + 3 * 128 * 352));
}

TEST(SwiGlu, GradientsMatchFiniteDifferences) {
  for (const char* mixers : {"model.mixers=", "model.mixers=softmax,mamba"}) {
    const RunConfig c = config("softmax", {"model.layers=2", "model.d_model=8", "model.heads=2", "model.mlp_dim=12",
                                           "model.mlp_type=swiglu", "model.dropout=0", mixers, "variant.dropout=0"});
    const auto rep = test::model_grad_check(c);
    EXPECT_TRUE(rep.passed) << mixers << ": " << rep.detail;
  }
}

TEST(SwiGlu, BadValuesNameTheChoices) {
  expect_has(usage_message("softmax", {"model.mlp_type=swiglo"}), "valid: gelu, swiglu");
  expect_has(usage_message("softmax", {"model.mlp_type=swiglu", "model.mlp=false"}),
             "model.mlp=false leaves them none");
}

// ---- rotary positions ----

namespace {

// q and k [B, H, N, d] of every layer as attend() receives them.
struct Probe {
  std::vector<Tensor> q, k;
  Probe() {
    attention_probe() = [this](int, const Tensor& qq, const Tensor& kk, const Tensor&) {
      q.push_back(qq.clone());
      k.push_back(kk.clone());
    };
  }
  ~Probe() { attention_probe() = nullptr; }
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;
};

std::unique_ptr<Mixer> rotary_mixer(const std::string& variant, int64_t D, int64_t H, int64_t N, int64_t kv_heads = 0,
                                    double base = 10000.0) {
  const VariantSpec& spec = VariantRegistry::instance().get(variant);
  MixerConfig cfg{D, H, N, 0, 3, resolve_params(spec.params, Json::object(), variant), kv_heads};
  cfg.rotary_base = base;
  return spec.make(cfg);
}

// score(b, h, i, j) = q_i . k_j of one head
double score(const Tensor& q, const Tensor& k, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t H = q.dim(1), N = q.dim(2), d = q.dim(3);
  double s = 0;
  for (int64_t c = 0; c < d; ++c) s += q[((b * H + h) * N + i) * d + c] * k[((b * H + h) * N + j) * d + c];
  return s;
}

}  // namespace

TEST(Rotary, RotatesEachPairOfQAndKByItsPosition) {
  // q_n = x_n Wq per head, then pair (m, m + d/2) turned by the angle n * 10000^(-2m/d), written out
  // as a complex product; k the same from Wk (one k/v head shared by both query heads: rotated
  // before it is repeated, which is the same).
  const int64_t B = 2, N = 7, D = 16, H = 2, d = 8, h = 4;
  for (const int64_t kv : {0, 1}) {
    SCOPED_TRACE(fmt::format("kv_heads {}", kv));
    auto mixer = rotary_mixer("softmax", D, H, N, kv);
    auto P = params_of(*mixer);
    const Tensor x = test::symmetric_tensor({B, N, D}, 5, 1);
    Probe probe;
    mixer->forward(Var(x), MixerContext{});
    ASSERT_EQ(probe.q.size(), 1u);
    for (const char* which : {"q", "k"}) {
      const Tensor& got = which[0] == 'q' ? probe.q[0] : probe.k[0];
      const Tensor& w = P[which[0] == 'q' ? "wq" : "wk"].value();
      const int64_t cols = w.dim(1);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t head = 0; head < H; ++head)
          for (int64_t n = 0; n < N; ++n) {
            const int64_t src = which[0] == 'q' || kv == 0 ? head : 0;  // the shared k head
            std::vector<double> p(d);
            for (int64_t c = 0; c < d; ++c)
              for (int64_t i = 0; i < D; ++i) p[c] += x[(b * N + n) * D + i] * w[i * cols + src * d + c];
            for (int64_t m = 0; m < h; ++m) {
              const double a = static_cast<double>(n) * std::pow(10000.0, -2.0 * m / d);
              const double re = p[m] * std::cos(a) - p[m + h] * std::sin(a), im = p[m] * std::sin(a) + p[m + h] * std::cos(a);
              const int64_t o = ((b * H + head) * N + n) * d;
              ASSERT_NEAR(got[o + m], re, 1e-5) << which << " b " << b << " head " << head << " n " << n << " m " << m;
              ASSERT_NEAR(got[o + m + h], im, 1e-5) << which << " b " << b << " head " << head << " n " << n << " m " << m;
            }
          }
    }
  }
}

TEST(Rotary, ScoresDependOnPositionsOnlyThroughTheirDifference) {
  const int64_t N = 9, D = 16, H = 2, s = 4;
  auto mixer = rotary_mixer("softmax", D, H, N + s);
  // (1) The same content at every position: scores are a function of i - j alone, and not a
  //     constant one (without rotary they would all be equal).
  {
    Tensor x = Tensor::empty({1, N, D});
    const Tensor row = test::symmetric_tensor({D}, 6, 1);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < D; ++i) x[n * D + i] = row[i];
    Probe probe;
    mixer->forward(Var(x), MixerContext{});
    double spread = 0;
    for (int64_t head = 0; head < H; ++head)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) {
          const double sij = score(probe.q[0], probe.k[0], 0, head, i, j);
          if (i + 1 < N && j + 1 < N) {
            ASSERT_NEAR(score(probe.q[0], probe.k[0], 0, head, i + 1, j + 1), sij, 1e-4 * (1 + std::fabs(sij)))
                << "head " << head << " i " << i << " j " << j;
          }
          spread = std::max(spread, std::fabs(sij - score(probe.q[0], probe.k[0], 0, head, 0, 0)));
        }
    EXPECT_GT(spread, 1e-2) << "the scores do not depend on position at all";
  }
  // (2) Shift a random sequence right by s positions (s random tokens before it): every score
  //     between two of its tokens is unchanged.
  {
    const Tensor x = test::symmetric_tensor({1, N, D}, 6, 2), pre = test::symmetric_tensor({1, s, D}, 6, 3);
    const Tensor shifted = concat({Var(pre), Var(x)}, 1).value();
    Probe probe;
    mixer->forward(Var(x), MixerContext{});
    mixer->forward(Var(shifted), MixerContext{});
    ASSERT_EQ(probe.q.size(), 2u);
    for (int64_t head = 0; head < H; ++head)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) {
          const double a = score(probe.q[0], probe.k[0], 0, head, i, j), b = score(probe.q[1], probe.k[1], 0, head, i + s, j + s);
          ASSERT_NEAR(b, a, 1e-4 * (1 + std::fabs(a))) << "head " << head << " i " << i << " j " << j;
        }
  }
}

TEST(Rotary, MixerGradientsMatchFiniteDifferences) {
  for (const bool causal : {false, true}) {
    auto mixer = rotary_mixer("softmax", 8, 2, 5, 1);
    Var x(test::symmetric_tensor({2, 5, 8}, 8, 1), true);
    const Var up(test::symmetric_tensor({2, 5, 8}, 8, 2));
    MixerContext ctx;
    ctx.causal = causal;
    std::vector<Var> leaves{x};
    for (auto& [n, v] : mixer->parameters()) leaves.push_back(v);
    const auto rep = grad_check([&] { return sum(mul(mixer->forward(x, ctx), up)); }, leaves, GradCheckOptions{});
    EXPECT_TRUE(rep.passed) << "causal " << causal << ": " << rep.detail;
  }
}

TEST(Rotary, ModelGradientsMatchFiniteDifferences) {
  const RunConfig c = config("softmax", {"model.layers=2", "model.d_model=8", "model.heads=2", "model.mlp_dim=12",
                                         "model.mlp_type=swiglu", "model.positions=rotary", "model.dropout=0",
                                         "model.mixers=softmax,linear_elu", "variant.dropout=0"});
  const auto rep = test::model_grad_check(c);
  EXPECT_TRUE(rep.passed) << rep.detail;
}

TEST(Rotary, ReachesTheAttentionStyleLayersOnly) {
  // No table at the embedding; the attention-style layer rotates its q and k (the mamba layer of
  // the hybrid has none and gets no positions).
  auto build = [](const std::string& variant, std::vector<std::string> sets) {
    const RunConfig c = config(variant, sets);
    auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
    auto model = std::make_unique<Model>(c.model_params, VariantRegistry::instance().get(variant), c.variant_params,
                                         *task, 1);
    const Batch batch = make_batch(*task, Split::train, {0});
    Probe probe;
    model->forward(batch, false, 0);
    return std::make_pair(params_of(*model).count("pos_emb"), probe.q);
  };
  const auto rot = build("softmax", {"model.positions=rotary", "model.mixers=softmax,mamba"});
  const auto none = build("softmax", {"model.positions=none", "model.mixers=softmax,mamba"});
  EXPECT_EQ(rot.first, 0u);
  ASSERT_EQ(rot.second.size(), 1u);  // the mamba layer has no q and k
  ASSERT_EQ(none.second.size(), 1u);
  // Layer 0 sees the same input either way (the embedding alone): its q must differ by the rotation
  // only, position 0 unrotated.
  const Tensor &qr = rot.second[0], &qn = none.second[0];
  const int64_t d = qr.dim(3);
  bool later_rotated = false;
  for (int64_t c = 0; c < d; ++c) EXPECT_NEAR(qr[c], qn[c], 1e-6) << "position 0 turns by angle 0";
  for (int64_t i = d; i < qr.numel() / qr.dim(1); ++i) later_rotated |= std::fabs(qr[i] - qn[i]) > 1e-4f;
  EXPECT_TRUE(later_rotated);
  // A mixer-only model with positions_for=attention has no positions; with positions_for=all it is refused.
  EXPECT_EQ(parameter_count("mamba", {"model.positions=rotary", "model.positions_for=attention"}),
            parameter_count("mamba", {"model.positions=none"}));
}

TEST(Rotary, RefusedWhereItCannotApply) {
  const std::string m = usage_message("mamba", {"model.positions=rotary"});
  expect_has(m, "no layer is one ('mamba' is not)");
  expect_has(m, "model.positions_for=attention");
  expect_has(m, "softmax");
  expect_has(usage_message("softmax", {"model.positions=rotary", "model.d_model=6", "model.heads=2"}),
             "head width d_model / heads = 6 / 2 = 3 is odd; nearest valid d_model: 8");
  expect_has(usage_message("softmax", {"model.positions=rotery"}), "rotary");
  // Decoding would need the state's position: refused, not silently unrotated.
  auto mixer = rotary_mixer("softmax", 8, 2, 4);
  MixerContext ctx;
  ctx.causal = true;
  auto state = mixer->begin_decode(1, ctx);
  try {
    mixer->decode_step(Tensor::zeros({1, 1, 8}), *state, ctx);
    ADD_FAILURE() << "decode with rotary positions was accepted";
  } catch (const UsageError& e) {
    expect_has(e.what(), "rotary");
  }
}
