// Approximation fidelity against exact attention, on random or trained-model inputs (fidelity.hpp).
#include "eval/fidelity.hpp"

#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "mixer/attention_probe.hpp"
#include "model/model.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task.hpp"
#include "train/train.hpp"

namespace ab {

AttentionProbe& attention_probe() {
  thread_local AttentionProbe probe;
  return probe;
}

AttentionInputs random_attention_inputs(int64_t batch, int64_t heads, int64_t length, int64_t head_dim,
                                        uint64_t seed) {
  AttentionInputs in;
  Tensor* parts[3] = {&in.q, &in.k, &in.v};
  for (uint64_t i = 0; i < 3; ++i) {
    RngStream r(seed, Purpose::check, 78, i);
    *parts[i] = Tensor::empty({batch, heads, length, head_dim});
    for (int64_t j = 0; j < parts[i]->numel(); ++j) (*parts[i])[j] = r.normal();
  }
  return in;
}

namespace {
std::vector<std::string> model_sets() {
  return {"model.layers=2", "model.d_model=64", "model.heads=2", "model.mlp_dim=128", "model.positions=sinusoidal"};
}
}  // namespace

Json TrainedAttentionSource::task_params(int64_t length) const {
  return {{"min_length", length}, {"max_length", length}};
}

TrainedAttentionSource::TrainedAttentionSource(std::string task, int64_t train_length, int64_t steps, uint64_t seed)
    : task_(std::move(task)), seed_(seed) {
  std::vector<std::string> sets = model_sets();
  const Json tp = task_params(train_length);
  for (auto& [k, v] : tp.items()) sets.push_back(fmt::format("task.{}={}", k, v.dump()));
  for (const char* s : {"task.train_size=4096", "task.valid_size=128", "task.test_size=128"}) sets.push_back(s);
  sets.push_back(fmt::format("train.steps={}", steps));
  sets.push_back("train.batch_size=16");
  sets.push_back(fmt::format("train.eval_every={}", std::max<int64_t>(steps / 4, 1)));
  const RunConfig cfg = resolve_run_config("softmax", task_, sets, seed, 0);
  model_params_ = cfg.model_params;
  const Json run = train_run(cfg, false, [&](Model& model, const Task&) {
    for (auto& [name, var] : model.parameters()) weights_[name] = var.value().clone();
  });
  if (run["status"] != "ok")
    throw std::runtime_error(fmt::format("training the softmax model for trained-input fidelity failed ({}): {}",
                                         run["status"].get<std::string>(), run.value("error", "")));
  description_ = {{"task", task_},
                  {"train_length", train_length},
                  {"steps", steps},
                  {"model", model_params_},
                  {"test_accuracy", run["metrics"]["test_accuracy"]}};
}

AttentionInputs TrainedAttentionSource::capture(int64_t length, int64_t batch, int layer) const {
  Json tp = task_params(length);
  tp["train_size"] = 1;
  tp["valid_size"] = 1;
  tp["test_size"] = batch;
  const TaskSpec& ts = TaskRegistry::instance().get(task_);
  auto task = ts.make(resolve_params(ts.params, tp, fmt::format("task '{}'", task_)), seed_);
  const VariantSpec& softmax = VariantRegistry::instance().get("softmax");
  Model model(model_params_, softmax, resolve_params(softmax.params, Json::object(), "softmax"), *task, seed_);
  for (auto& [name, var] : model.parameters()) {
    auto it = weights_.find(name);
    if (it == weights_.end() || it->second.shape() != var.shape())
      throw std::runtime_error(fmt::format("trained weights have no '{}' of shape {}", name, shape_str(var.shape())));
    var.value_mut().copy_from(it->second);
  }
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < batch; ++i) idx.push_back(i);
  const Batch b = make_batch(*task, Split::test, idx);
  AttentionInputs in;
  attention_probe() = [&](int l, const Tensor& q, const Tensor& k, const Tensor& v) {
    if (l == layer) in = {q.clone(), k.clone(), v.clone()};
  };
  {
    NoGrad ng;
    model.forward(b, false, 0);
  }
  attention_probe() = nullptr;
  if (!in.q.defined()) throw UsageError(fmt::format("the trained model has no attention layer {}", layer));
  return in;
}

double attention_fidelity(const VariantSpec& spec, const Json& params, const AttentionInputs& in, bool causal,
                          uint64_t seed) {
  const int64_t H = in.q.dim(1), N = in.q.dim(2), d = in.q.dim(3);
  auto variant = spec.make(MixerConfig{H * d, H, N, 0, seed, params});
  auto* attn = dynamic_cast<AttentionMixer*>(variant.get());
  if (!attn) return std::numeric_limits<double>::quiet_NaN();
  const VariantSpec& exact_spec = VariantRegistry::instance().get("softmax_tiled");
  auto exact = exact_spec.make(
      MixerConfig{H * d, H, N, 0, seed, resolve_params(exact_spec.params, Json::object(), "softmax_tiled")});
  MixerContext ctx;
  ctx.causal = causal;
  ctx.seed = seed;
  NoGrad ng;
  const Var q(in.q), k(in.k), v(in.v);
  const Tensor o = attn->attend(q, k, v, ctx).value();
  const Tensor ref = dynamic_cast<AttentionMixer&>(*exact).attend(q, k, v, ctx).value();
  double err = 0, norm = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    err += (double(o[i]) - ref[i]) * (double(o[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(err / std::max(norm, 1e-300));
}

}  // namespace ab
