#pragma once
// What task generators (built-in or plugins) have in common beyond the contract of task.hpp: the
// three splits with their sizes and the bounds check of example(), preset defaults for null
// parameters, one random stream per split, and split-wise deduplication. Optional: a task may
// derive from Task directly.
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attnbench/rng.hpp"
#include "attnbench/task.hpp"

namespace ab {

// Index of a split in per-split arrays: train 0, valid 1, test 2.
int split_index(Split s);

// Parameters whose default is null: the task resolves them (from its preset or from other
// parameters; the doc says how).
ParamSpec null_int_param(std::string name, std::string doc, double lo, double hi);
ParamSpec null_bool_param(std::string name, std::string doc);

// A task with three splits of known sizes that keeps its resolved parameters (the ones it fills
// in included) as effective_params().
class SplitTask : public Task {
 public:
  int64_t split_size(Split s) const override { return sizes_[split_index(s)]; }
  Json effective_params() const override { return params_; }

 protected:
  // `name` is the task's registered name (for messages). `large_preset`: the value of the
  // `preset` parameter under which preset_default() takes its `large` value; null = no preset.
  SplitTask(std::string name, const Json& params, uint64_t seed, const char* large_preset = nullptr);

  // The value of a parameter; a null one becomes `small`, or `large` under the large preset, and
  // the value used is recorded in params_.
  Json preset_default(const char* key, Json small, Json large);
  // The split's index; std::out_of_range naming the task when index is outside the split.
  int checked_split(Split s, int64_t index) const;
  // Position of example `index` of split k in one array of all examples, train then valid then test.
  int64_t flat_index(int k, int64_t index) const;
  // The task's random stream of split k, (seed, data, stream, k, sub); examples take .child(i).
  RngStream split_stream(uint64_t stream, int k, uint64_t sub = 0) const;
  // The first sizes_[k] distinct examples of each split k, as stream indices: walks streams 0, 1,
  // ... of each split and keeps the first occurrence of every `input(k, stream)` (64-bit hashes).
  // draws[k] gets how many streams were walked. A UsageError when a split runs short after
  // 20 * size + 100,000 draws.
  void dedupe_splits(const std::function<std::vector<int32_t>(int k, uint64_t stream)>& input,
                     std::array<std::vector<uint64_t>, 3>& kept, std::array<int64_t, 3>& draws) const;

  std::string name_;
  Json params_;
  uint64_t seed_;
  std::array<int64_t, 3> sizes_{};

 private:
  bool large_ = false;
};

}  // namespace ab
