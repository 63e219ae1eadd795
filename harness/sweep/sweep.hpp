#pragma once
// Sweep specs (DESIGN §8): a JSON grid of train and bench cells, each with a content-hash id.
#include <string>
#include <vector>

#include "attnbench/params.hpp"

namespace ab {

struct SweepCell {
  std::string id;       // "<variant>.<task>.s<seed>.<hash>" or "bench.<variant>.<hash>"
  std::string kind;     // "train" | "bench"
  std::string variant, task;
  uint64_t seed = 0;
  Json set = Json::object();  // dotted key -> value (train: all groups; bench: variant.*)
  Json bench;                 // bench cells: seq_len, direction, batch, d_model, heads, repetitions, ...
  int threads = 0;
  std::vector<std::string> plugins;  // absolute paths of every plugin loaded: --plugin flags
  // The attnbench command line (after the program name) that runs this cell into `out`.
  std::vector<std::string> command(const std::string& out) const;
};

struct SweepSpec {
  std::string name;
  Json raw;  // the spec as given
  std::vector<SweepCell> cells;
  double time_limit_seconds = 0;  // per cell; 0 = none
  int64_t memory_limit_bytes = 0; // per cell; 0 = none
};

// Parses and expands a spec; every cell's configuration is validated (UsageError naming the
// cell and the problem). Malformed JSON reports its line and column. load_sweep_spec loads the
// spec's `plugins` (paths relative to the spec file) before the cells are validated;
// parse_sweep_spec checks that they are a list of paths but loads nothing.
SweepSpec load_sweep_spec(const std::string& path);
SweepSpec parse_sweep_spec(const std::string& text, const std::string& origin);

// "i/n" -> (i, n), 0 <= i < n.
std::pair<int, int> parse_shard(const std::string& text);

}  // namespace ab
