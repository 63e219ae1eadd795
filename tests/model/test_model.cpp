// Model-level options: the per-layer mixer schedule (model.mixers), grouped-query attention
// (model.kv_heads) against its definition, the short convolution before the mixer, mixer-only
// blocks and positions for attention-style layers only.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "attnbench/check.hpp"
#include "model/model.hpp"
#include "support/model_configs.hpp"
#include "support/model_grad.hpp"
#include "support/random_tensors.hpp"
#include "train/train.hpp"

using namespace ab;

namespace {

using test::params_of;

// One attention-style mixer with kv_heads k/v heads, and the same layer written as standard MHA:
// its Wk, Wv hold the shared head's columns once per query head of the group (head h reads k/v
// head h / (heads / kv_heads)). Forward and every gradient must agree.
void expect_gqa_matches_repeated_mha(const std::string& variant, int64_t heads, int64_t kv_heads, bool causal) {
  SCOPED_TRACE(fmt::format("{} heads={} kv_heads={} causal={}", variant, heads, kv_heads, causal));
  const VariantSpec& spec = VariantRegistry::instance().get(variant);
  const Json p = resolve_params(spec.params, Json::object(), variant);
  const int64_t D = 16, N = 7, B = 2, d = D / heads, group = heads / kv_heads;
  auto gqa = spec.make(MixerConfig{D, heads, N, 0, 5, p, kv_heads});
  auto mha = spec.make(MixerConfig{D, heads, N, 0, 5, p, 0});
  auto g = params_of(*gqa), m = params_of(*mha);
  ASSERT_EQ(g["wk"].value().shape(), (Shape{D, kv_heads * d}));
  ASSERT_EQ(g["wv"].value().shape(), (Shape{D, kv_heads * d}));
  m["wq"].value_mut().copy_from(g["wq"].value());
  m["wo"].value_mut().copy_from(g["wo"].value());
  for (const char* w : {"wk", "wv"})
    for (int64_t i = 0; i < D; ++i)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t j = 0; j < d; ++j)
          m[w].value_mut()[i * D + h * d + j] = g[w].value()[i * kv_heads * d + (h / group) * d + j];

  const Tensor x = test::symmetric_tensor({B, N, D}, 3, 1), up = test::symmetric_tensor({B, N, D}, 3, 2);
  MixerContext ctx;
  ctx.causal = causal;
  auto run = [&](Mixer& mixer, Var& xv) {
    xv = Var(x.clone(), true);
    const Var y = mixer.forward(xv, ctx);
    sum(mul(y, Var(up))).backward();
    return y.value();
  };
  Var xg, xm;
  const Tensor yg = run(*gqa, xg), ym = run(*mha, xm);
  auto near = [](const Tensor& a, const Tensor& b, const std::string& what) {
    ASSERT_EQ(a.numel(), b.numel()) << what;
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5f + 1e-4f * std::fabs(b[i])) << what << " [" << i << "]";
  };
  near(yg, ym, "output");
  near(xg.grad(), xm.grad(), "dx");
  near(g["wq"].grad(), m["wq"].grad(), "dWq");
  near(g["wo"].grad(), m["wo"].grad(), "dWo");
  for (const char* w : {"wk", "wv"}) {  // the shared head's gradient: the sum over its group
    Tensor expect = Tensor::zeros({D, kv_heads * d});
    for (int64_t i = 0; i < D; ++i)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t j = 0; j < d; ++j) expect[i * kv_heads * d + (h / group) * d + j] += m[w].grad()[i * D + h * d + j];
    near(g[w].grad(), expect, std::string("d") + w);
  }
}

using test::parameter_count;
using test::usage_message;

RunConfig config(const std::string& variant, const std::vector<std::string>& sets) {
  return test::small_mqar_config(variant, sets);
}

// The logits [N, C] of training example 0 under a softmax model of `c`, and of the same example
// with its last token changed: what a causality probe compares.
struct LastTokenProbe {
  Tensor before, after;
  int64_t length;
};

LastTokenProbe change_last_token(const RunConfig& c) {
  auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
  Model model(c.model_params, VariantRegistry::instance().get("softmax"), c.variant_params, *task, 1);
  Batch a = make_batch(*task, Split::train, {0});
  Batch b = a;
  b.tokens.back() = b.tokens.back() == 1 ? 2 : 1;
  return {model.forward(a, false, 0).value(), model.forward(b, false, 0).value(), a.length};
}

}  // namespace

TEST(GroupedQueryAttention, KvHeadsEqualToHeadsIsStandardMha) {
  const VariantSpec& spec = VariantRegistry::instance().get("softmax");
  const Json p = resolve_params(spec.params, Json::object(), "softmax");
  auto a = spec.make(MixerConfig{16, 4, 6, 1, 9, p, 0}), b = spec.make(MixerConfig{16, 4, 6, 1, 9, p, 4});
  auto pa = params_of(*a), pb = params_of(*b);
  ASSERT_EQ(pa.size(), pb.size());
  for (auto& [n, v] : pa)
    for (int64_t i = 0; i < v.value().numel(); ++i) ASSERT_EQ(v.value()[i], pb[n].value()[i]) << n;
  const Var x(test::symmetric_tensor({2, 6, 16}, 1, 1));
  const Tensor ya = a->forward(x, MixerContext{}).value(), yb = b->forward(x, MixerContext{}).value();
  for (int64_t i = 0; i < ya.numel(); ++i) ASSERT_EQ(ya[i], yb[i]);
}

TEST(GroupedQueryAttention, MultiQueryMatchesOneKvHeadRepeatedToEveryQueryHead) {
  for (const bool causal : {false, true}) expect_gqa_matches_repeated_mha("softmax", 4, 1, causal);
  expect_gqa_matches_repeated_mha("linear_elu", 4, 1, true);
}

TEST(GroupedQueryAttention, GroupsAreConsecutiveQueryHeads) {
  for (const bool causal : {false, true}) expect_gqa_matches_repeated_mha("softmax", 4, 2, causal);
  expect_gqa_matches_repeated_mha("sigmoid", 8, 2, false);
}

TEST(GroupedQueryAttention, DecodeMatchesTheCausalForward) {
  const VariantSpec& spec = VariantRegistry::instance().get("softmax");
  auto mixer = spec.make(MixerConfig{16, 4, 5, 0, 2, resolve_params(spec.params, Json::object(), "softmax"), 2});
  const Tensor x = test::symmetric_tensor({2, 5, 16}, 4, 1);
  MixerContext ctx;
  ctx.causal = true;
  const Tensor y = mixer->forward(Var(x), ctx).value();
  auto state = mixer->begin_decode(2, ctx);
  for (int64_t t = 0; t < 5; ++t) {
    const Tensor yt = mixer->decode_step(slice(Var(x), 1, t, 1).value(), *state, ctx);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t c = 0; c < 16; ++c) ASSERT_NEAR(yt[b * 16 + c], y[(b * 5 + t) * 16 + c], 1e-5f) << t;
  }
}

TEST(GroupedQueryAttention, ShrinksTheKvProjectionsAndRefusesBadValues) {
  // d_model 64, 4 heads of 16, 2 layers: Wk and Wv lose 64 x 48 each per layer at kv_heads = 1.
  const int64_t mha = parameter_count("softmax", {}), mqa = parameter_count("softmax", {"model.kv_heads=1"});
  EXPECT_EQ(mha - mqa, 2 * 2 * 64 * 48);
  EXPECT_EQ(parameter_count("softmax", {"model.kv_heads=4"}), mha);
  EXPECT_NE(usage_message("softmax", {"model.kv_heads=3"}).find("must divide model.heads = 4; nearest valid kv_heads: 2"),
            std::string::npos);
  EXPECT_NE(usage_message("softmax", {"model.kv_heads=8"}).find("nearest valid kv_heads: 4"), std::string::npos);
  const std::string m = usage_message("mamba", {"model.kv_heads=1", "model.causal=true"});
  EXPECT_NE(m.find("no layer is one ('mamba' is not)"), std::string::npos) << m;
  EXPECT_NE(m.find("softmax"), std::string::npos) << m;
  // In a hybrid it applies to the attention layers.
  EXPECT_LT(parameter_count("mamba", {"model.causal=true", "model.mixers=mamba,softmax", "model.kv_heads=2"}),
            parameter_count("mamba", {"model.causal=true", "model.mixers=mamba,softmax"}));
}

TEST(MixerSchedule, RepeatsCyclicallyOrFillsWithTheStarredEntry) {
  auto schedule = [](const std::string& variant, std::vector<std::string> sets) { return config(variant, sets).layers; };
  using V = std::vector<std::string>;
  EXPECT_EQ(schedule("softmax", {"model.layers=3"}), (V{"softmax", "softmax", "softmax"}));
  EXPECT_EQ(schedule("mamba", {"model.causal=true", "model.layers=8", "model.mixers=mamba,mamba,mamba,softmax"}),
            (V{"mamba", "mamba", "mamba", "softmax", "mamba", "mamba", "mamba", "softmax"}));
  EXPECT_EQ(schedule("mamba", {"model.causal=true", "model.layers=4", "model.mixers=softmax, mamba*"}),
            (V{"softmax", "mamba", "mamba", "mamba"}));
  EXPECT_EQ(schedule("softmax", {"model.layers=3", "model.mixers=softmax*,linear_elu"}),
            (V{"softmax", "softmax", "linear_elu"}));
}

TEST(MixerSchedule, BadSchedulesNameTheProblem) {
  auto has = [](const std::string& msg, const std::string& part) {
    EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  };
  has(usage_message("softmax", {"model.mixers=softmax,mamab", "model.causal=true"}), "did you mean 'mamba'");
  has(usage_message("softmax", {"model.mixers=softmax,mamba,mamba", "model.layers=4", "model.causal=true"}),
      "nearest valid model.layers: 3");
  has(usage_message("softmax", {"model.mixers=softmax*,mamba*", "model.causal=true"}), "more than one entry");
  has(usage_message("softmax", {"model.mixers=softmax,,mamba", "model.causal=true"}), "empty entry");
  has(usage_message("softmax", {"model.mixers=mamba,mamba", "model.causal=true"}), "does not name --variant 'softmax'");
  has(usage_message("softmax", {"model.mixers=softmax,mamba*,linear_elu,sigmoid", "model.layers=2"}), "nearest valid model.layers: 3");
  // Every layer's form is checked, not only --variant's.
  has(usage_message("softmax", {"model.mixers=softmax,linformer", "model.causal=true"}),
      "variant 'linformer' (layer 1 of model.mixers) has no causal form");
  Json mp = resolve_params(model_param_specs(), {{"mixers", "softmax,aaren"}, {"causal", false}}, "model");
  try {
    mixer_schedule(mp, VariantRegistry::instance().get("softmax"));
    ADD_FAILURE() << "a causal-only layer in a bidirectional model was accepted";
  } catch (const UsageError& e) {
    has(e.what(), "variant 'aaren' (layer 1 of model.mixers) is causal only");
  }
}

TEST(MixerSchedule, VariantSettingsApplyToTheLayersOfTheVariant) {
  const RunConfig c = config("mamba", {"model.causal=true", "model.mixers=mamba,softmax", "variant.d_state=4"});
  auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
  Model model(c.model_params, VariantRegistry::instance().get("mamba"), c.variant_params, *task, 1);
  ASSERT_EQ(model.layers().size(), 2u);
  EXPECT_EQ(model.layers()[0].spec->name, "mamba");
  EXPECT_EQ(model.layers()[0].params["d_state"], 4);
  EXPECT_EQ(model.layers()[1].spec->name, "softmax");
  const Json defaults = resolve_params(VariantRegistry::instance().get("softmax").params, Json::object(), "softmax");
  EXPECT_EQ(model.layers()[1].params, defaults);
  bool attention_in_layer1 = false, attention_in_layer0 = false;
  for (auto& [n, v] : model.parameters()) {
    attention_in_layer1 |= n == "blocks.1.mixer.wq";
    attention_in_layer0 |= n == "blocks.0.mixer.wq";
  }
  EXPECT_TRUE(attention_in_layer1);
  EXPECT_FALSE(attention_in_layer0);
}

TEST(ModelBlock, ShortConvAndMlpChangeTheParameterCountAsExpected) {
  // d_model 64, mlp_dim 128, 2 layers.
  const int64_t base = parameter_count("softmax", {});
  EXPECT_EQ(parameter_count("softmax", {"model.short_conv=4"}) - base, 2 * (64 * 4 + 64));  // taps + bias per channel
  EXPECT_EQ(base - parameter_count("softmax", {"model.mlp=false"}),
            2 * (2 * 64 + 64 * 128 + 128 + 128 * 64 + 64));  // ln2, W1, b1, W2, b2 per layer; the head stays
  EXPECT_NE(usage_message("softmax", {"model.short_conv=-1"}).find("nearest valid value: 0"), std::string::npos);
  EXPECT_NE(usage_message("softmax", {"model.mlp=maybe"}).find("'mlp' must be true or false"), std::string::npos);
}

TEST(ModelBlock, PositionsForAttentionOnlyWhenALayerIsAttentionStyle) {
  const std::vector<std::string> learned = {"model.positions=learned", "model.causal=true"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.end(), learned.begin(), learned.end());
    return more;
  };
  const int64_t table = 16 * 64;  // seq_len x d_model
  EXPECT_EQ(parameter_count("mamba", with({})) - parameter_count("mamba", with({"model.positions_for=attention"})), table);
  EXPECT_EQ(parameter_count("softmax", with({"model.positions_for=attention"})), parameter_count("softmax", with({})));
  EXPECT_EQ(parameter_count("mamba", with({"model.positions_for=attention", "model.mixers=mamba,softmax"})),
            parameter_count("mamba", with({"model.mixers=mamba,softmax"})));
  EXPECT_NE(usage_message("softmax", {"model.positions_for=attn"}).find("valid: all, attention"), std::string::npos);
}

TEST(ModelBlock, HybridWithShortConvNoMlpAndMqaGradientsMatchFiniteDifferences) {
  for (const char* conv : {"model.short_conv=0", "model.short_conv=3"}) {
    const RunConfig c = config("softmax", {"model.layers=2", "model.d_model=8", "model.heads=2", "model.mlp_dim=12",
                                           "model.mixers=softmax,linear_elu", "model.kv_heads=1", "model.mlp=false",
                                           "model.dropout=0", "model.causal=true", conv});
    const auto rep = test::model_grad_check(c);
    EXPECT_TRUE(rep.passed) << conv << ": " << rep.detail;
  }
}

TEST(ModelBlock, ShortConvNeverReadsLaterTokens) {
  // A causal model with the convolution: changing the last token changes no earlier position's logits.
  const RunConfig c = config("softmax", {"model.short_conv=4", "model.dropout=0", "model.d_model=16", "model.heads=2"});
  const LastTokenProbe p = change_last_token(c);
  const Tensor &la = p.before, &lb = p.after;
  const int64_t C = la.dim(1), N = p.length;
  for (int64_t i = 0; i < (N - 1) * C; ++i) ASSERT_EQ(la[i], lb[i]) << "position " << i / C;
  bool last_changed = false;
  for (int64_t i = (N - 1) * C; i < N * C; ++i) last_changed |= la[i] != lb[i];
  EXPECT_TRUE(last_changed);
}

// ---- model.pooling=last: MAD's autoencoder (mad_compression) ----

namespace {

RunConfig compression_config(std::vector<std::string> sets) {
  for (const char* s : {"task.seq_len=6", "task.vocab_size=8", "task.train_size=8", "task.valid_size=4",
                        "task.test_size=4", "model.dropout=0", "model.causal=true", "model.d_model=8",
                        "model.heads=2", "model.mlp_dim=12"})
    sets.push_back(s);
  return resolve_run_config("softmax", "mad_compression", sets, 1, 1);
}

double ln_ref(const std::vector<double>& x, const float* g, const float* b, std::vector<double>& y) {
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= static_cast<double>(x.size());
  for (double v : x) var += (v - mean) * (v - mean);
  var /= static_cast<double>(x.size());
  y.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - mean) / std::sqrt(var + 1e-5) * g[i] + b[i];
  return mean;
}

}  // namespace

TEST(MadAutoencoder, MatchesAHandWrittenEncoderPoolAndDecoder) {
  // No blocks and no positions: the encoder state of position n is LN(tok_emb[token n]); the decoder
  // sees only the last one. Every parameter is randomised so that no term can hide.
  const RunConfig c = compression_config({"model.layers=0", "model.positions=none"});
  EXPECT_EQ(c.model_params.at("pooling"), "last") << "the task's default";
  auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
  Model model(c.model_params, VariantRegistry::instance().get("softmax"), c.variant_params, *task, 1);
  auto P = params_of(model);
  uint64_t key = 1;
  for (auto& [name, v] : P) v.value_mut().copy_from(test::symmetric_tensor(v.value().shape(), 17, key++, 0.7f));
  const Batch batch = make_batch(*task, Split::train, {0, 1});
  const Tensor logits = model.forward(batch, false, 0).value();
  const int64_t B = batch.size, N = batch.length, D = 8, C = task->num_classes();
  ASSERT_EQ(logits.shape(), (Shape{B * N, C}));
  auto row = [](const Var& v, int64_t r, int64_t w) { return v.value().data() + r * w; };
  const int64_t h = D / 2;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> e(D), pooled;
    const int32_t last = batch.tokens[static_cast<size_t>(b * N + N - 1)];
    for (int64_t d = 0; d < D; ++d) e[d] = row(P["tok_emb"], last, D)[d];
    ln_ref(e, P["final_ln.gamma"].value().data(), P["final_ln.beta"].value().data(), pooled);
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> x(D), y;
      for (int64_t i = 0; i < h; ++i) {  // posemb_sincos_1d: sin half, then cos half
        const double a = static_cast<double>(n) * std::pow(10000.0, -static_cast<double>(i) / (h - 1));
        x[i] = pooled[i] + std::sin(a);
        x[h + i] = pooled[h + i] + std::cos(a);
      }
      for (int k = 1; k <= 2; ++k) {
        ln_ref(x, P[fmt::format("decoder.ln{}.gamma", k)].value().data(),
               P[fmt::format("decoder.ln{}.beta", k)].value().data(), y);
        const Var& w = P[fmt::format("decoder.w{}", k)];
        const Var& bias = P[fmt::format("decoder.b{}", k)];
        for (int64_t j = 0; j < D; ++j) {
          double s = bias.value()[j];
          for (int64_t i = 0; i < D; ++i) s += y[i] * w.value()[i * D + j];
          x[j] = 0.5 * s * (1.0 + std::erf(s / std::sqrt(2.0)));
        }
      }
      ln_ref(x, P["decoder.ln3.gamma"].value().data(), P["decoder.ln3.beta"].value().data(), y);
      for (int64_t k = 0; k < C; ++k) {
        double s = P["head.b"].value()[k];
        for (int64_t i = 0; i < D; ++i) s += y[i] * P["head.w"].value()[i * C + k];
        ASSERT_NEAR(logits[(b * N + n) * C + k], s, 1e-4 + 1e-4 * std::fabs(s)) << "b " << b << " n " << n << " k " << k;
      }
    }
  }
}

TEST(MadAutoencoder, EveryPositionReadsTheLastStateAndOnlyIt) {
  // Causal, one attention block: with the decoder, changing the last token changes the logits of
  // every position, and changing the first token changes them too (through the last state);
  // without it (pooling=mean) the first position never sees the last token.
  for (const char* pooling : {"model.pooling=last", "model.pooling=mean"}) {
    const RunConfig c = compression_config({"model.layers=1", pooling});
    const LastTokenProbe p = change_last_token(c);
    const Tensor &la = p.before, &lb = p.after;
    const int64_t C = la.dim(1);
    bool first_changed = false;
    for (int64_t k = 0; k < C; ++k) first_changed |= la[k] != lb[k];
    EXPECT_EQ(first_changed, std::string(pooling) == "model.pooling=last") << pooling;
  }
}

TEST(MadAutoencoder, GradientsMatchFiniteDifferences) {
  const auto rep = test::model_grad_check(compression_config({"model.layers=1", "model.positions=learned"}));
  EXPECT_TRUE(rep.passed) << rep.detail;
}

TEST(MadAutoencoder, RefusedOnAClassificationTask) {
  try {
    const RunConfig c = resolve_run_config("softmax", "listops", {"model.pooling=last", "task.max_length=32"}, 1, 1);
    auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
    Model model(c.model_params, VariantRegistry::instance().get("softmax"), c.variant_params, *task, 1);
    ADD_FAILURE() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("per-position task"), std::string::npos) << e.what();
  }
}
