#pragma once
// Training and evaluation of one (variant, task) cell, producing the run file of DESIGN §7.
#include <functional>
#include <string>
#include <vector>

#include "attnbench/params.hpp"
#include "results/run_file.hpp"

namespace ab {
class Model;
class Task;
struct TaskSpec;
}  // namespace ab

namespace ab {

std::vector<ParamSpec> train_param_specs();

inline constexpr int kMaxThreads = 4096;  // the most --threads (and a sweep's `threads`) accepts

// `sets` are dotted "group.key=value" assignments (variant., task., model., train.).
// Throws UsageError naming the problem and the nearest valid choice.
RunConfig resolve_run_config(const std::string& variant, const std::string& task,
                             const std::vector<std::string>& sets, uint64_t seed, int threads);

// train.test_at as task-parameter overrides, one object per further test split (typed; UsageError
// naming the problem).
std::vector<Json> test_at_overrides(const std::string& text, const TaskSpec& task);

// Builds the run's task and model without training: the constraints between parameters that only
// their constructors check (mqar: vocab_size > seq_len) fail here, as UsageError, before a sweep
// runs. Costs the task's set-up at its smallest split sizes and one model's weights (skipped
// above ~256 MB of them).
void check_run_config(const RunConfig& cfg);

// The task parameters as the run would use them (Task::effective_params of a task built at its
// smallest split sizes; the split sizes as given), for a record of a run that did not get as far.
Json resolved_task_params(const RunConfig& cfg);

// Per-class counts of predictions, for the accuracy macro-averaged over classes as MAD reports it
// (torchmetrics' MulticlassAccuracy default): the mean of tp / (tp + fn) over the classes that
// are a label or a prediction somewhere (a class only ever predicted wrongly scores 0).
struct ClassCounts {
  std::vector<int64_t> tp, fp, fn;
  void add(int64_t label, int64_t pred);
  double macro() const;
};

// Trains and evaluates; never throws for a failure of the run itself: the returned run document
// carries status "error"/"diverged" and the message. `progress` prints a line per evaluation.
// `on_trained`, when given, sees the model with its selected (best-validation) weights.
// `on_partial`, when given, receives the run document so far (status "running": resolved task
// parameters, the curves up to now) once the task is built and after every evaluation, so that a
// run killed by its time limit leaves them behind.
Json train_run(const RunConfig& cfg, bool progress,
               const std::function<void(Model&, const Task&)>& on_trained = nullptr,
               const std::function<void(const Json&)>& on_partial = nullptr);


}  // namespace ab
