#pragma once
// Run documents (DESIGN §7, schema attnbench.run/1): the one place that writes their identity
// fields and their context, and that puts a file in place atomically.
#include <cstdint>
#include <string>
#include <vector>

#include "attnbench/params.hpp"

namespace ab {

// Everything a run needs, resolved with every default filled in.
struct RunConfig {
  std::string variant, task;
  Json variant_params, task_params, model_params, train_params;
  std::vector<std::string> layers;  // the variant of each layer (model.mixers resolved)
  Json task_defaults = Json::object();  // {"model.dropout": 0, ...}: the task's defaults the run took
  uint64_t seed = 0;
  int threads = 0;
};

// The identity fields of a run document: schema, kind, status ok, and for a train run variant
// (with its per-layer schedule, variant.layers, when known), task, model, train and seed (as resolved); for a bench run the variants with their parameters,
// the shapes measured (`model`) and the seed, with task and train null.
Json run_header(const RunConfig& cfg);
Json bench_run_header(const Json& variants, const Json& model, uint64_t seed);
// Marks a document failed: its status and message, no metrics, and the context.
void mark_failed(Json& doc, const std::string& status, const std::string& error, Json context);

Json run_context(const std::vector<std::string>& command_line);
// Temp file, fsync, rename, fsync of the directory. Invalid UTF-8 that reached `doc` is written
// as U+FFFD rather than failing.
void write_json_atomic(const std::string& path, const Json& doc);
// Throws (naming the path and the reason) unless a file can be created at `path`; run before the
// work whose result would go there, so that no hour of training ends in an unwritable path.
// "" and "-" are UsageErrors: a run file is a named file.
void check_writable(const std::string& path);
// The status of a run file's text ("ok", "error", ...), or "" when it is not a readable run file
// (truncated, not JSON, not an object, no string status). A resumed sweep re-runs those cells.
// Nesting deeper than kMaxJsonDepth or a key given twice is a UsageError naming `origin`.
std::string run_file_status(const std::string& text, const std::string& origin = "run file");
int64_t peak_rss_bytes();

}  // namespace ab
