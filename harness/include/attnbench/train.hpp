#pragma once
// Training and evaluation of one (variant, task) cell, producing the run file of DESIGN §7.
#include <functional>
#include <string>
#include <vector>

#include "attnbench/params.hpp"

namespace ab {
class Model;
class Task;
}  // namespace ab

namespace ab {

std::vector<ParamSpec> train_param_specs();

// Everything a run needs, resolved with every default filled in.
struct RunConfig {
  std::string variant, task;
  Json variant_params, task_params, model_params, train_params;
  uint64_t seed = 0;
  int threads = 0;
};

// `sets` are dotted "group.key=value" assignments (variant., task., model., train.).
// Throws UsageError naming the problem and the nearest valid choice.
RunConfig resolve_run_config(const std::string& variant, const std::string& task,
                             const std::vector<std::string>& sets, uint64_t seed, int threads);

// The run document's identity fields (schema, kind, status ok, variant, task, model, train, seed).
Json run_header(const RunConfig& cfg);

// Trains and evaluates; never throws for a failure of the run itself: the returned run document
// carries status "error"/"diverged" and the message. `progress` prints a line per evaluation.
// `on_trained`, when given, sees the model with its selected (best-validation) weights.
Json train_run(const RunConfig& cfg, bool progress,
               const std::function<void(Model&, const Task&)>& on_trained = nullptr);

// Run-file helpers.
Json run_context(const std::vector<std::string>& command_line);
void write_json_atomic(const std::string& path, const Json& doc);  // temp file + rename
// Throws (naming the path and the reason) unless a file can be created at `path`; run before the
// work whose result would go there, so that no hour of training ends in an unwritable path.
void check_writable(const std::string& path);
// The status of a run file's text ("ok", "error", ...), or "" when it is not a readable run file
// (truncated, not JSON, not an object, no string status). A resumed sweep re-runs those cells.
std::string run_file_status(const std::string& text);
int64_t peak_rss_bytes();

}  // namespace ab
