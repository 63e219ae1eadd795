// The model and the training loop: gradients of the whole model, learning a trivial task, and
// bitwise determinism of a run for a seed.
#include <gtest/gtest.h>

#include <cmath>

#include <fmt/format.h>

#include "attnbench/check.hpp"
#include "model/model.hpp"
#include "train/train.hpp"

using namespace ab;

namespace {

// Label = (first token) mod 4; tokens 1..7, variable length with padding. Learnable in a few
// hundred steps by any mixer that moves information across positions.
class FirstTokenTask : public Task {
 public:
  static TaskSpec spec() {
    TaskSpec s;
    s.name = "test_first_token";
    s.summary = "test fixture: label = first token mod 4";
    s.reference = "attnbench tests";
    s.params = {int_param("length", 12, "padded length", 4, 4096), bool_param("per_position", false, "LM form")};
    return s;
  }
  FirstTokenTask(const Json& p, uint64_t seed)
      : length_(p["length"].get<int64_t>()), per_position_(p["per_position"].get<bool>()), seed_(seed) {}
  TaskKind kind() const override { return per_position_ ? TaskKind::per_position : TaskKind::classify; }
  int64_t vocab_size() const override { return 8; }
  int64_t num_classes() const override { return per_position_ ? 8 : 4; }
  int64_t seq_len() const override { return length_; }
  int64_t split_size(Split s) const override { return s == Split::train ? 4096 : 256; }
  Example example(Split s, int64_t i) const override {
    RngStream r = RngStream(seed_, Purpose::data, static_cast<uint64_t>(s)).child(static_cast<uint64_t>(i));
    Example ex;
    const int64_t n = r.range(length_ / 2, length_);
    for (int64_t k = 0; k < n; ++k) ex.input.push_back(static_cast<int32_t>(r.range(1, 7)));
    if (per_position_) {  // predict the previous token (needs causal mixing across positions)
      ex.target.assign(static_cast<size_t>(n), kIgnoreLabel);
      for (int64_t k = 1; k < n; ++k) ex.target[k] = ex.input[k - 1];
    } else {
      ex.target = {ex.input[0] % 4};
    }
    return ex;
  }

 private:
  int64_t length_;
  bool per_position_;
  uint64_t seed_;
};
ATTNBENCH_REGISTER_TASK(FirstTokenTask);

RunConfig config(std::vector<std::string> sets, const std::string& task = "test_first_token") {
  return resolve_run_config("softmax", task, sets, 3, 2);
}

}  // namespace

TEST(Model, WholeModelGradientsMatchFiniteDifferences) {
  for (const char* pooling : {"mean", "cls"}) {
    for (const char* positions : {"sinusoidal", "learned"}) {
      const RunConfig c = config({"model.layers=2", "model.d_model=8", "model.heads=2", "model.mlp_dim=12",
                                  std::string("model.pooling=") + pooling, std::string("model.positions=") + positions,
                                  "model.dropout=0"});
      auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
      Model model(c.model_params, VariantRegistry::instance().get("softmax"), c.variant_params, *task, 1);
      const Batch batch = make_batch(*task, Split::train, {0, 1, 2});
      std::vector<Var> leaves;
      RngStream r(9, Purpose::check);
      for (auto& [n, v] : model.parameters()) {
        // CLS (zeros) and learned positions (N(0, 0.02)) start near zero, where the layer norm
        // after them is so curved that a finite difference measures curvature, not slope.
        if (n == "cls" || n == "pos_emb")
          for (int64_t i = 0; i < v.value().numel(); ++i) v.value_mut()[i] = r.normal();
        leaves.push_back(v);
      }
      GradCheckOptions opt;
      opt.max_elements = 6;
      opt.step = 3e-3f;
      const auto rep = grad_check([&] { return cross_entropy(model.forward(batch, false, 0), batch.labels); }, leaves, opt);
      EXPECT_TRUE(rep.passed) << pooling << "/" << positions << ": " << rep.detail;
    }
  }
}

TEST(Model, PerPositionHeadGradients) {
  const RunConfig c = config({"task.per_position=true", "model.layers=1", "model.d_model=8", "model.heads=2",
                              "model.causal=true", "model.dropout=0"});
  auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
  Model model(c.model_params, VariantRegistry::instance().get("softmax"), c.variant_params, *task, 1);
  const Batch batch = make_batch(*task, Split::train, {0, 1});
  std::vector<Var> leaves;
  for (auto& [n, v] : model.parameters()) leaves.push_back(v);
  GradCheckOptions opt;
  opt.max_elements = 6;
  const auto rep = grad_check([&] { return cross_entropy(model.forward(batch, false, 0), batch.labels); }, leaves, opt);
  EXPECT_TRUE(rep.passed) << rep.detail;
}

TEST(Model, TwoDimensionalPositionsNeedASquareLength) {
  auto build = [](int64_t length, int64_t d) {
    const RunConfig c = config({fmt::format("task.length={}", length), "model.positions=sinusoidal2d",
                                fmt::format("model.d_model={}", d), "model.heads=2", "model.layers=1"});
    auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
    Model model(c.model_params, VariantRegistry::instance().get("softmax"), c.variant_params, *task, 1);
    return model.forward(make_batch(*task, Split::train, {0, 1}), false, 0).value();
  };
  const Tensor logits = build(16, 8);  // a 4 x 4 raster
  for (int64_t i = 0; i < logits.numel(); ++i) EXPECT_TRUE(std::isfinite(logits[i]));
  EXPECT_THROW(build(12, 8), UsageError);  // not a square
  EXPECT_THROW(build(16, 6), UsageError);  // d_model not a multiple of 4
}

TEST(Training, LearnsATrivialTask) {
  const Json doc = train_run(config({"train.steps=150", "train.eval_every=50", "train.lr=3e-3", "train.warmup=10",
                                     "model.layers=1", "model.d_model=32", "model.heads=2"}),
                             false);
  ASSERT_EQ(doc["status"], "ok") << doc.dump(2);
  EXPECT_GT(doc["metrics"]["test_accuracy"].get<double>(), 0.9) << doc["metrics"].dump(2);
  EXPECT_EQ(doc["metrics"]["curves"]["valid_accuracy"].size(), 3u);
}

TEST(Training, MacroAccuracyAsTorchmetricsDefines) {
  ClassCounts doc_example;  // torchmetrics' MulticlassAccuracy doc: target 2 1 0 0, preds 2 1 0 1 -> 0.8333
  for (auto [label, pred] : std::vector<std::pair<int64_t, int64_t>>{{2, 2}, {1, 1}, {0, 0}, {0, 1}})
    doc_example.add(label, pred);
  EXPECT_NEAR(doc_example.macro(), 2.5 / 3.0, 1e-12);
  ClassCounts spurious;  // class 1 is only ever predicted (wrongly): it counts, with 0
  spurious.add(0, 0);
  spurious.add(0, 1);
  spurious.add(5, 5);  // classes 2..4 never appear: left out
  EXPECT_NEAR(spurious.macro(), (0.5 + 0.0 + 1.0) / 3.0, 1e-12);
  EXPECT_EQ(ClassCounts().macro(), 0.0);
  // A run records it beside the micro accuracy.
  const Json doc = train_run(config({"train.steps=20", "train.eval_every=20", "model.layers=1", "model.d_model=16",
                                     "model.heads=2"}),
                             false);
  ASSERT_EQ(doc["status"], "ok") << doc.dump(2);
  const double macro = doc["metrics"]["test_accuracy_macro"].get<double>();
  EXPECT_GE(macro, 0.0);
  EXPECT_LE(macro, 1.0);
}

TEST(Training, SameSeedGivesBitwiseIdenticalRuns) {
  const RunConfig c = config({"train.steps=30", "train.eval_every=10", "model.layers=1", "model.d_model=16",
                              "model.heads=2", "model.dropout=0.1"});
  Json a = train_run(c, false), b = train_run(c, false);
  ASSERT_EQ(a["status"], "ok");
  EXPECT_EQ(a["metrics"]["curves"].dump(), b["metrics"]["curves"].dump());
  EXPECT_EQ(a["metrics"]["test_accuracy"], b["metrics"]["test_accuracy"]);
  const RunConfig other = resolve_run_config("softmax", "test_first_token",
                                             {"train.steps=30", "train.eval_every=10", "model.layers=1",
                                              "model.d_model=16", "model.heads=2", "model.dropout=0.1"},
                                             4, 2);
  EXPECT_NE(train_run(other, false)["metrics"]["curves"]["train_loss"].dump(), a["metrics"]["curves"]["train_loss"].dump());
}

TEST(Training, ConfigErrorsNameTheProblem) {
  auto message = [](std::vector<std::string> sets) {
    try {
      config(sets);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({"modle.layers=2"}).find("did you mean 'model'"), std::string::npos);
  EXPECT_NE(message({"model.layer=2"}).find("did you mean 'layers'"), std::string::npos);
  EXPECT_NE(message({"model.layers"}).find("malformed --set"), std::string::npos);
  EXPECT_NE(message({"model.d_model=30", "model.heads=4"}).find("multiple of model.heads"), std::string::npos);
  EXPECT_NE(message({"train.steps=0"}).find("nearest valid value: 1"), std::string::npos);
}

TEST(Training, LrScheduleWarmsUpAndDecays) {
  const Json doc = train_run(config({"train.steps=40", "train.eval_every=10", "train.warmup=20", "model.layers=1",
                                     "model.d_model=16", "model.heads=2"}),
                             false);
  const auto& lr = doc["metrics"]["curves"]["lr"];
  ASSERT_EQ(lr.size(), 4u);
  EXPECT_NEAR(lr[0].get<double>(), 0.5e-3, 1e-9);  // step 10 of 20 warm-up steps
  EXPECT_NEAR(lr[1].get<double>(), 1e-3, 1e-9);    // peak
  EXPECT_LT(lr[2].get<double>(), 1e-3);            // cosine decay
  EXPECT_NEAR(lr[3].get<double>(), 0.0, 1e-9);
}
