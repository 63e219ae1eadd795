// One training run: resolve the configuration, train with AdamW, select the best validation
// checkpoint, evaluate it on the test split, and return the run document (DESIGN §7).
#include "train/train.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "model/model.hpp"
#include "train/optimizer.hpp"
#include "attnbench/build_info.hpp"
#include "attnbench/plugin.hpp"
#include "core/backend/onednn.hpp"
#include "core/utf8.hpp"

namespace ab {

std::vector<ParamSpec> train_param_specs() {
  return {
      int_param("steps", 1000, "optimiser steps", 1, 1e9),
      int_param("batch_size", 32, "examples per step (and per evaluation batch)", 1, 1 << 20),
      num_param("lr", 1e-3, "peak learning rate", 0.0, 10.0),
      num_param("weight_decay", 0.01, "AdamW decoupled weight decay (matrices and embeddings only; not SSM dynamics such as A_log)", 0.0, 10.0),
      num_param("beta1", 0.9, "AdamW first-moment decay", 0.0, 0.999999),
      num_param("beta2", 0.98, "AdamW second-moment decay (LRA: 0.98)", 0.0, 0.999999),
      num_param("eps", 1e-9, "AdamW epsilon (LRA: 1e-9); at 0 a weight whose gradients are all 0 divides 0 by 0",
                1e-12, 1.0),
      int_param("warmup", 100, "linear warm-up steps", 0, 1e9),
      enum_param("schedule", "cosine", {"cosine", "rsqrt", "linear", "constant"},
                 "decay after warm-up: cosine to 0, rsqrt (LRA text tasks), linear to 0, or constant"),
      int_param("schedule_steps", 0,
                "the step at which cosine and linear reach 0 (0 = train.steps): fix it to train longer, or stop "
                "earlier, on the same learning-rate curve",
                0, 1e9),
      num_param("clip_norm", 1.0, "clip the global gradient norm to this (0 = off)", 0.0, 1e9),
      enum_param("matmul_precision", "fp32", {"fp32", "bf16"},
                 "inputs of the oneDNN GEMMs (projections, MLPs, dense attention): bf16 rounds them to bfloat16 "
                 "with fp32 accumulation (AVX512_BF16 / AMX); hand-written kernels stay fp32"),
      int_param("eval_every", 100, "steps between validations (the last step is always validated)", 1, 1e9),
      int_param("valid_examples", 1000, "validation examples per evaluation (0 = the whole split)", 0, 1e9),
      int_param("test_examples", 0, "test examples for the final evaluation (0 = the whole split)", 0, 1e9),
      bool_param("allow_target_leak", false,
                 "run a task whose targets are later input tokens (induction_heads, associative_recall) with "
                 "model.causal=false, which lets the model read its targets"),
      num_param("target_accuracy", 0.0, "stop early once validation accuracy reaches this (0 = off)", 0.0, 1.0),
      ParamSpec{"test_at", ParamType::string, "",
                "further test splits at other task settings, e.g. 'seq_len=512,num_kv_pairs=64;seq_len=1024' "
                "(';' between splits, ',' between task.KEY=VALUE): the selected model is also tested on each "
                "(length extrapolation); empty = none"},
  };
}

std::vector<Json> test_at_overrides(const std::string& text, const TaskSpec& task) {
  std::vector<Json> out;
  std::vector<std::string> names;
  for (const auto& p : task.params) names.push_back(p.name);
  size_t start = 0;
  while (start < text.size()) {
    const size_t semi = std::min(text.find(';', start), text.size());
    const std::string split = text.substr(start, semi - start);
    Json given = Json::object();
    for (size_t a = 0; a < split.size();) {
      const size_t comma = std::min(split.find(',', a), split.size());
      const std::string item = split.substr(a, comma - a);
      const size_t eq = item.find('=');
      if (eq == std::string::npos || eq == 0)
        throw UsageError(fmt::format("train.test_at: '{}' is not KEY=VALUE (a task parameter of '{}', e.g. "
                                     "seq_len=512)", item, task.name));
      given[item.substr(0, eq)] = item.substr(eq + 1);
      a = comma + 1;
    }
    if (given.empty()) throw UsageError(fmt::format("train.test_at: an empty split in '{}'", text));
    // Typed and checked as task parameters; only the keys given are kept.
    const Json typed = resolve_params(task.params, given, fmt::format("task '{}' (train.test_at)", task.name));
    Json o = Json::object();
    for (const auto& [k, v] : given.items()) o[k] = typed[k];
    out.push_back(std::move(o));
    start = semi + 1;
  }
  return out;
}

RunConfig resolve_run_config(const std::string& variant, const std::string& task, const std::vector<std::string>& sets,
                             uint64_t seed, int threads) {
  const VariantSpec& vs = VariantRegistry::instance().get(variant);
  const TaskSpec& ts = TaskRegistry::instance().get(task);
  Json given = {{"variant", Json::object()}, {"task", Json::object()}, {"model", Json::object()}, {"train", Json::object()}};
  const std::vector<std::string> groups = {"variant", "task", "model", "train"};
  for (const auto& s : sets) {
    const auto eq = s.find('='), dot = s.find('.');
    if (eq == std::string::npos || dot == std::string::npos || dot > eq || dot == 0 || dot + 1 == eq)
      throw UsageError(fmt::format("malformed --set '{}': expected group.key=value, e.g. model.layers=2 "
                                   "(groups: variant, task, model, train)", s));
    const std::string group = s.substr(0, dot), key = s.substr(dot + 1, eq - dot - 1), value = s.substr(eq + 1);
    if (std::find(groups.begin(), groups.end(), group) == groups.end())
      throw UsageError(unknown_name_message(fmt::format("--set group in '{}'", s), group, groups));
    given[group][key] = value;
  }
  RunConfig c;
  // The task's recommended settings (TaskSpec::defaults) where the user gave none.
  for (const char* group : {"model", "train"})
    if (ts.defaults.contains(group))
      for (const auto& [k, v] : ts.defaults[group].items())
        if (!given[group].contains(k)) {
          given[group][k] = v;
          c.task_defaults[std::string(group) + "." + k] = v;
        }
  c.variant = variant;
  c.task = task;
  c.variant_params = resolve_params(vs.params, given["variant"], fmt::format("variant '{}'", variant));
  c.task_params = resolve_params(ts.params, given["task"], fmt::format("task '{}'", task));
  c.model_params = resolve_params(model_param_specs(), given["model"], "model");
  c.train_params = resolve_params(train_param_specs(), given["train"], "train");
  test_at_overrides(c.train_params["test_at"].get<std::string>(), ts);  // refused here, before any work
  const auto d = c.model_params["d_model"].get<int64_t>(), h = c.model_params["heads"].get<int64_t>();
  if (d % h != 0)
    throw UsageError(fmt::format("model.d_model = {} is not a multiple of model.heads = {}; nearest valid d_model: {}", d,
                                 h, d < h ? h : d / h * h));
  // The per-layer schedule, checked (names, counts, every layer's form, kv_heads) before any work.
  c.layers = mixer_schedule(c.model_params, vs);
  c.seed = seed;
  c.threads = threads;
  return c;
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Accuracy of argmax(logits) over the scored labels of `count` examples (0 = the whole split).
// `step` is the training step whose parameters are evaluated (stochastic mixers key draws by it).
// `macro`, if given, receives the accuracy macro-averaged over classes (ClassCounts) over the
// whole split at once. (MAD logs the batch-size-weighted mean of per-batch values instead.)
double evaluate(Model& model, const Task& task, Split split, int64_t count, int64_t batch_size, int64_t step,
                double* macro = nullptr) {
  NoGrad ng;
  const int64_t n = count > 0 ? std::min(count, task.split_size(split)) : task.split_size(split);
  int64_t correct = 0, scored = 0;
  ClassCounts counts;
  for (int64_t start = 0; start < n; start += batch_size) {
    std::vector<int64_t> idx;
    for (int64_t i = start; i < std::min(n, start + batch_size); ++i) idx.push_back(i);
    const Batch b = make_batch(task, split, idx);
    const Var logits = model.forward(b, false, step);
    const int64_t C = logits.dim(1);
    const float* lp = logits.value().data();
    for (size_t r = 0; r < b.labels.size(); ++r) {
      if (b.labels[r] == kIgnoreLabel) continue;
      const float* row = lp + static_cast<int64_t>(r) * C;
      const int64_t pred = std::max_element(row, row + C) - row;
      correct += pred == b.labels[r];
      ++scored;
      if (macro) counts.add(b.labels[r], pred);
    }
  }
  if (macro) *macro = counts.macro();
  return scored ? static_cast<double>(correct) / static_cast<double>(scored) : 0.0;
}

}  // namespace

void ClassCounts::add(int64_t label, int64_t pred) {
  if (label < 0 || pred < 0) return;  // an ignored position
  const auto need = static_cast<size_t>(std::max(label, pred) + 1);
  if (tp.size() < need) tp.resize(need, 0), fp.resize(need, 0), fn.resize(need, 0);
  if (pred == label) {
    ++tp[pred];
  } else {
    ++fp[pred];
    ++fn[label];
  }
}

double ClassCounts::macro() const {
  double sum = 0;
  int64_t classes = 0;
  for (size_t c = 0; c < tp.size(); ++c)
    if (tp[c] + fp[c] + fn[c] > 0) {
      sum += tp[c] + fn[c] > 0 ? static_cast<double>(tp[c]) / static_cast<double>(tp[c] + fn[c]) : 0.0;
      ++classes;
    }
  return classes ? sum / static_cast<double>(classes) : 0.0;
}

namespace {
// A task whose targets are later input tokens needs a causal model, or the user's explicit word.
void check_target_leak(const RunConfig& cfg, const Task& task) {
  if (!task.targets_in_input() || cfg.model_params.value("causal", false) ||
      cfg.train_params.value("allow_target_leak", false))
    return;
  throw UsageError(fmt::format(
      "task '{}' with these parameters scores later input tokens (next-token targets), so model.causal=false "
      "lets the model read its own targets; use model.causal=true (the task's default), or set "
      "train.allow_target_leak=true to run it anyway",
      cfg.task));
}
}  // namespace

namespace {
bool is_split_size(const ParamSpec& p) {
  return (p.name == "train_size" || p.name == "valid_size" || p.name == "test_size") && p.type == ParamType::integer;
}
// Split sizes only scale the data some tasks generate up front (ListOps: seconds): checks build the
// task at their minimum.
std::unique_ptr<Task> make_small_task(const RunConfig& cfg) {
  const TaskSpec& ts = TaskRegistry::instance().get(cfg.task);
  Json task_params = cfg.task_params;
  for (const ParamSpec& p : ts.params)
    if (is_split_size(p)) task_params[p.name] = static_cast<int64_t>(std::max(1.0, p.min));
  return ts.make(task_params, cfg.seed);
}
}  // namespace

Json resolved_task_params(const RunConfig& cfg) {
  Json out = cfg.task_params;
  try {
    const Json used = make_small_task(cfg)->effective_params();
    if (!used.is_object()) return out;
    for (const ParamSpec& p : TaskRegistry::instance().get(cfg.task).params)
      if (!is_split_size(p) && used.contains(p.name)) out[p.name] = used[p.name];
  } catch (const std::exception&) {  // the run's own record says why it failed
  }
  return out;
}

void check_run_config(const RunConfig& cfg) {
  try {
    const auto task = make_small_task(cfg);
    check_target_leak(cfg, *task);
    // A model too big to build in passing (its blocks' weights, roughly) is left to the run and its
    // memory limit: a dry run must not be the process the OOM killer picks.
    const auto& mp = cfg.model_params;
    const double d = static_cast<double>(mp.at("d_model").get<int64_t>()),
                 weights = static_cast<double>(mp.at("layers").get<int64_t>()) *
                               (4 * d * d + 2 * d * static_cast<double>(mp.at("mlp_dim").get<int64_t>())) +
                           d * static_cast<double>(task->vocab_size() + task->seq_len());
    if (weights * sizeof(float) > 256e6) return;
    Model model(cfg.model_params, VariantRegistry::instance().get(cfg.variant), cfg.variant_params, *task, cfg.seed);
  } catch (const UsageError&) {
    throw;
  } catch (const std::bad_alloc&) {
    return;  // too big to build here: the run itself, under its memory limit, decides
  } catch (const std::exception& e) {  // a constructor's refusal that is not typed as ours
    throw UsageError(e.what());
  }
}

Json train_run(const RunConfig& cfg, bool progress, const std::function<void(Model&, const Task&)>& on_trained,
               const std::function<void(const Json&)>& on_partial) {
  Json doc = run_header(cfg);
  Json metrics = Json::object();
  Json curves = {{"step", Json::array()}, {"train_loss", Json::array()}, {"lr", Json::array()},
                 {"valid_step", Json::array()}, {"valid_accuracy", Json::array()}};
  const Json& tp = cfg.train_params;
  struct PrecisionScope {  // the setting is process-wide: restore it after the run
    kernels::MatmulPrecision saved = kernels::matmul_precision();
    ~PrecisionScope() { kernels::set_matmul_precision(saved); }
  } precision_scope;
  try {
    set_matmul_precision(tp.value("matmul_precision", "fp32"));  // the name -> kernels mapping of ops.cpp
    const VariantSpec& vs = VariantRegistry::instance().get(cfg.variant);
    const auto t_gen = Clock::now();
    auto task = TaskRegistry::instance().get(cfg.task).make(cfg.task_params, cfg.seed);
    metrics["data_seconds"] = seconds_since(t_gen);
    metrics["data"] = task->stats();
    check_target_leak(cfg, *task);
    if (Json used = task->effective_params(); !used.is_null()) doc["task"]["params"] = used;
    auto partial = [&] {
      if (!on_partial) return;
      Json p = doc;
      p["status"] = "running";
      p["error"] = "the run had not finished when this record was written";
      p["metrics"] = metrics;
      p["metrics"]["curves"] = curves;
      on_partial(p);
    };
    partial();
    // Further test splits (train.test_at): the same task at other settings, same seed; the model
    // is built for the longest of them.
    std::vector<std::pair<Json, std::unique_ptr<Task>>> extra_tests;
    int64_t max_length = task->seq_len();
    for (Json& o : test_at_overrides(tp["test_at"].get<std::string>(), TaskRegistry::instance().get(cfg.task))) {
      Json p = cfg.task_params;
      for (const auto& [k, v] : o.items()) p[k] = v;
      auto t = TaskRegistry::instance().get(cfg.task).make(p, cfg.seed);
      max_length = std::max(max_length, t->seq_len());
      extra_tests.emplace_back(std::move(o), std::move(t));
    }
    PeakScope peak;
    Model model(cfg.model_params, vs, cfg.variant_params, *task, cfg.seed, max_length);
    AdamW opt(model.parameters(), tp, model.no_decay_names());
    int64_t n_params = 0;
    for (auto& [n, v] : opt.params) n_params += v.value().numel();
    metrics["parameters"] = n_params;
    // The state a decoder carries per sequence at the task's length, summed over the layers (the
    // KV cache or the recurrent state, from the cost model): the x-axis of Zoology's recall
    // frontier. Recorded when every layer decodes.
    const auto& layers = model.layers();
    if (std::all_of(layers.begin(), layers.end(), [](const LayerMixer& m) { return m.spec->caps.decode && m.spec->cost; })) {
      const Json& mp = cfg.model_params;
      double state = 0;
      for (const auto& m : layers)
        state += m.spec->cost(CostArgs{1, model.model_length(), mp["d_model"].get<int64_t>(), mp["heads"].get<int64_t>(),
                                       &m.params, true})
                     .state_bytes;
      metrics["state_bytes"] = state;
    }

    const int64_t steps = tp["steps"], bs = tp["batch_size"], eval_every = tp["eval_every"];
    const int64_t train_n = task->split_size(Split::train);
    const double target = tp["target_accuracy"];
    std::vector<int64_t> order;
    int64_t epoch = -1, cursor = 0;
    double train_seconds = 0, best_valid = -1, loss_sum = 0, last_loss = NAN;
    int64_t loss_count = 0, best_step = 0, step = 0;
    int64_t tokens = 0;
    std::vector<Tensor> best;
    std::vector<double> step_times;
    for (step = 1; step <= steps; ++step) {
      // Batches walk a fresh permutation of the training split each epoch.
      std::vector<int64_t> idx;
      while (static_cast<int64_t>(idx.size()) < bs) {
        if (cursor == static_cast<int64_t>(order.size())) {
          order.resize(static_cast<size_t>(train_n));
          for (int64_t i = 0; i < train_n; ++i) order[i] = i;
          RngStream r(cfg.seed, Purpose::batch, static_cast<uint64_t>(++epoch));
          for (int64_t i = train_n - 1; i > 0; --i) std::swap(order[i], order[r.below(static_cast<uint64_t>(i + 1))]);
          cursor = 0;
        }
        idx.push_back(order[cursor++]);
      }
      const Batch batch = make_batch(*task, Split::train, idx);
      const auto t0 = Clock::now();
      const auto [loss, grad_norm, lr] = train_step(model, opt, batch, tp, step);
      step_times.push_back(seconds_since(t0));
      train_seconds += step_times.back();
      tokens += batch.size * batch.length * (batch.tokens2.empty() ? 1 : 2);
      last_loss = loss;
      // Activation functions may squash a NaN into a finite loss; the gradients still carry it.
      if (!std::isfinite(last_loss) || !std::isfinite(grad_norm)) {
        doc["status"] = "diverged";
        doc["error"] = !std::isfinite(last_loss)
                           ? fmt::format("training loss became {} at step {}", last_loss, step)
                           : fmt::format("gradient norm became {} at step {} (loss {:.4g})", grad_norm, step, last_loss);
        break;
      }
      loss_sum += last_loss;
      ++loss_count;
      if (step % eval_every == 0 || step == steps) {
        const double acc = evaluate(model, *task, Split::valid, tp["valid_examples"], bs, step);
        curves["step"].push_back(step);
        curves["train_loss"].push_back(loss_sum / static_cast<double>(loss_count));
        curves["lr"].push_back(lr);
        curves["valid_step"].push_back(step);
        curves["valid_accuracy"].push_back(acc);
        if (progress)
          fmt::print(stderr, "step {:>6}/{}  loss {:.4f}  valid acc {:.4f}  lr {:.2e}  {:.0f} tok/s\n", step, steps,
                     loss_sum / static_cast<double>(loss_count), acc, lr, tokens / std::max(train_seconds, 1e-9));
        loss_sum = 0;
        loss_count = 0;
        if (acc > best_valid) {
          best_valid = acc;
          best_step = step;
          best.clear();
          for (auto& [n, v] : opt.params) best.push_back(v.value().clone());
        }
        if (target > 0 && acc >= target) {
          ++step;
          break;
        }
        if (step != steps) partial();
      }
    }
    const int64_t done = std::min(step - 1, steps);
    metrics["steps"] = done;
    metrics["train_seconds"] = train_seconds;
    metrics["tokens_per_second"] = train_seconds > 0 ? tokens / train_seconds : 0.0;
    if (!step_times.empty()) {
      // The median step is the throughput figure to compare: the first steps pay page faults
      // and primitive creation.
      std::nth_element(step_times.begin(), step_times.begin() + step_times.size() / 2, step_times.end());
      const double median = step_times[step_times.size() / 2];
      metrics["step_seconds_median"] = median;
      metrics["tokens_per_second_median_step"] = static_cast<double>(tokens) / static_cast<double>(step_times.size()) / median;
    }
    metrics["peak_bytes"] = peak.peak_bytes();
    if (std::isfinite(last_loss)) metrics["final_train_loss"] = last_loss;
    if (doc["status"] == "ok") {
      for (size_t k = 0; k < best.size(); ++k) opt.params[k].second.value_mut().copy_from(best[k]);
      metrics["best_valid_accuracy"] = best_valid;
      metrics["best_step"] = best_step;
      double macro = 0;
      metrics["test_accuracy"] = evaluate(model, *task, Split::test, tp["test_examples"], bs, best_step, &macro);
      metrics["test_accuracy_macro"] = macro;
      if (!extra_tests.empty()) {
        Json splits = Json::array();
        for (const auto& [o, t] : extra_tests) {
          Json e = {{"set", o}, {"seq_len", t->seq_len()}};
          try {
            e["test_accuracy"] = evaluate(model, *t, Split::test, tp["test_examples"], bs, best_step);
          } catch (const std::exception& ex) {  // e.g. a mixer whose parameters fix the length
            e["error"] = ex.what();
          }
          splits.push_back(std::move(e));
        }
        metrics["test_splits"] = std::move(splits);
      }
      if (on_trained) on_trained(model, *task);
    }
  } catch (const std::bad_alloc& e) {
    doc["status"] = "oom";
    doc["error"] = "out of memory (an allocation failed; a memory limit may be in force)";
  } catch (const std::exception& e) {
    doc["status"] = "error";
    doc["error"] = valid_utf8(e.what());  // may quote a path or a file's bytes
    if (dynamic_cast<const UsageError*>(&e)) doc["error_kind"] = "usage";
  }
  metrics["peak_rss_bytes"] = peak_rss_bytes();
  metrics["curves"] = curves;
  doc["metrics"] = metrics;
  return doc;
}

}  // namespace ab
