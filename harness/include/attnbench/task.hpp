#pragma once
// The task contract. A task is a deterministic function of its parameters and seed: example(split, i)
// always returns the same tokens, so data can be generated lazily, streamed or cached.
// Register with ATTNBENCH_REGISTER_TASK(Class); Class provides
//   static TaskSpec spec();
//   Class(const Json& resolved_params, uint64_t seed);
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attnbench/params.hpp"
#include "attnbench/plugin.hpp"

namespace ab {

enum class Split { train, valid, test };
const char* split_name(Split s);

enum class TaskKind {
  classify,       // one label per sequence
  pair_classify,  // one label per pair of sequences (dual encoder)
  per_position,   // one label per position, kIgnoreLabel where nothing is scored
};

struct Example {
  std::vector<int32_t> input;   // token ids, length <= seq_len (the batcher pads with pad_id)
  std::vector<int32_t> input2;  // pair tasks only
  std::vector<int32_t> target;  // one class id, or one id per position
  std::string text;             // readable form, where the task has one
};

class Task {
 public:
  virtual ~Task() = default;
  virtual TaskKind kind() const = 0;
  virtual int64_t vocab_size() const = 0;   // ids are in [0, vocab_size)
  virtual int64_t num_classes() const = 0;
  virtual int64_t seq_len() const = 0;      // padded model length
  virtual int32_t pad_id() const { return 0; }
  virtual int64_t split_size(Split s) const = 0;
  virtual Example example(Split s, int64_t index) const = 0;
  // The parameters as used, where the task derives some from others (null = as resolved).
  virtual Json effective_params() const { return Json(); }
  // Generation statistics worth recording in the run file (e.g. acceptance rates). Probe tasks add
  // their accuracy floors here: "chance_accuracy" (a uniform guess over the classes a target can
  // take) and where it applies "context_floor_accuracy" (see the task's comment).
  virtual Json stats() const { return Json::object(); }
  // True when some scored target is also an input token at a later position (language-model
  // targets: input = seq[:-1], target = seq[1:]): a non-causal model would read its own targets,
  // so training refuses model.causal=false unless train.allow_target_leak=true.
  virtual bool targets_in_input() const { return false; }
};

struct TaskSpec {
  std::string name;
  std::string summary;
  std::string reference;
  std::vector<ParamSpec> params;
  // Settings the task recommends, {"model": {...}, "train": {...}} (e.g. no dropout on the recall
  // probes, not LRA's 0.1): applied unless the user sets the key; the run file lists them.
  Json defaults = Json::object();
  std::function<std::unique_ptr<Task>(const Json& params, uint64_t seed)> make;
  std::string origin = "built-in";
};

// A spec with its name, summary, reference and parameters filled in (the task may then set defaults).
TaskSpec task_spec(std::string name, std::string summary, std::string reference, std::vector<ParamSpec> params);

class TaskRegistry {
 public:
  static TaskRegistry& instance();
  void add(TaskSpec spec);
  const TaskSpec& get(const std::string& name) const;
  const TaskSpec* find(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  std::vector<TaskSpec> specs_;
};

namespace detail {
template <class T>
void register_task(const std::string& origin) {
  TaskSpec s = T::spec();
  s.make = [](const Json& p, uint64_t seed) -> std::unique_ptr<Task> { return std::make_unique<T>(p, seed); };
  if (!origin.empty()) s.origin = origin;
  TaskRegistry::instance().add(std::move(s));
}
}  // namespace detail

#define ATTNBENCH_REGISTER_TASK(Class)                                      \
  static const ::ab::detail::Registrar<&::ab::detail::register_task<Class>> \
      ATTNBENCH_CONCAT(ab_task_registrar_, __LINE__) {}

}  // namespace ab
