#pragma once
// Small models for the model tests: parameters by name, a run configuration on a tiny MQAR, the usage error (if any)
// that resolving it and building its model gives, and its parameter count.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "model/model.hpp"
#include "train/train.hpp"

namespace ab::test {

// A module's parameters by name.
inline std::map<std::string, Var> params_of(const Module& m) {
  std::map<std::string, Var> out;
  for (auto& [n, v] : m.parameters()) out[n] = v;
  return out;
}

// A small MQAR (per position, a linear head), causal unless the sets say otherwise (its targets
// follow their keys).
inline RunConfig small_mqar_config(const std::string& variant, std::vector<std::string> sets) {
  if (std::none_of(sets.begin(), sets.end(), [](const std::string& s) { return s.rfind("model.causal=", 0) == 0; }))
    sets.push_back("model.causal=true");
  for (const char* s : {"task.seq_len=16", "task.num_kv_pairs=2", "task.vocab_size=32", "task.train_size=16",
                        "task.valid_size=8", "task.test_size=8"})
    sets.push_back(s);
  return resolve_run_config(variant, "mqar", sets, 1, 1);
}

// fn(model) on the model of small_mqar_config(variant, sets) (the task lives as long as the call).
template <class Fn>
auto with_small_mqar_model(const std::string& variant, const std::vector<std::string>& sets, Fn&& fn) {
  const RunConfig c = small_mqar_config(variant, sets);
  auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
  Model model(c.model_params, VariantRegistry::instance().get(variant), c.variant_params, *task, 1);
  return fn(model);
}

// The message of the usage error that resolving the configuration or building its model raises;
// "no error" when there is none.
inline std::string usage_message(const std::string& variant, const std::vector<std::string>& sets) {
  try {
    with_small_mqar_model(variant, sets, [](Model&) { return 0; });
  } catch (const UsageError& e) {
    return e.what();
  }
  return "no error";
}

inline int64_t parameter_count(const std::string& variant, const std::vector<std::string>& sets) {
  return with_small_mqar_model(variant, sets, [](Model& model) {
    int64_t n = 0;
    for (auto& [name, v] : model.parameters()) n += v.value().numel();
    return n;
  });
}

}  // namespace ab::test
