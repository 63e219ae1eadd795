// `sweep`: runs the cells of a spec, each in a child process with a time and a memory limit, so
// that a crash, hang or OOM of one cell is recorded with its status and the sweep goes on.
// Layout of DIR: runs/<cell>.json (one run file per cell, written atomically), logs/<cell>.log,
// manifest.json (the spec and every cell with its status; manifest.shard-i-of-n.json per shard).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "args.hpp"
#include "sweep/sweep.hpp"
#include "train/train.hpp"
#include "attnbench/variant.hpp"
#include "commands.hpp"
#include "sweep/results_dir.hpp"
#include "sweep/runner.hpp"

namespace ab::cli {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int cmd_sweep(int argc, char** argv, int first) {
  const auto flags = with_common({
      {"out", "DIR", "results directory (runs/, logs/, manifest.json)"},
      {"resume", "", "skip cells that already have a run file in DIR/runs"},
      {"jobs", "J", "cells run at once (default 1: timings stay undisturbed)"},
      {"shard", "i/n", "run only every n-th cell starting at i (cells sorted by id): for job arrays"},
      {"dry-run", "", "list the cells and their commands, run nothing"},
      {"time-limit", "SECONDS", "per-cell time limit (overrides the spec's limits.seconds)"},
      {"memory-limit", "BYTES", "per-cell memory limit (overrides the spec's limits.memory_bytes)"},
      {"mpi", "", "under mpirun: rank 0 hands cells out as ranks free up (build with ATTNBENCH_WITH_MPI)"},
  });
  Args args(argc, argv, first, "sweep", flags, 1);
  if (args.has("help") || args.positional().empty()) {
    fmt::print("{}", usage_text("sweep SPEC.json --out DIR [--resume] [--jobs J] [--shard i/n] [--dry-run]",
                                "Run a grid of train and bench cells, each in its own process.", flags));
    return args.has("help") ? 0 : 2;
  }
  apply_common(args);
  SweepSpec spec = load_sweep_spec(args.positional()[0]);
  std::vector<size_t> order(spec.cells.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::string manifest_name = "manifest.json", shard_tag;
  if (args.has("shard")) {
    const auto [i, n] = parse_shard(args.get("shard"));
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spec.cells[a].id < spec.cells[b].id; });
    std::vector<size_t> mine;
    for (size_t k = 0; k < order.size(); ++k)
      if (static_cast<int>(k % n) == i) mine.push_back(order[k]);
    order = mine;
    shard_tag = fmt::format("shard-{}-of-{}", i, n);
    manifest_name = fmt::format("manifest.{}.json", shard_tag);
  }
  if (args.has("dry-run")) {
    for (size_t k : order) {
      const auto& c = spec.cells[k];
      std::string cmd = "attnbench";
      for (const auto& a : c.command("DIR/runs/" + c.id + ".json")) cmd += " " + a;
      fmt::print("{}\n  {}\n", c.id, cmd);
    }
    fmt::print("{} cells\n", order.size());
    return 0;
  }
  const fs::path dir = args.require("out");
  const int jobs = static_cast<int>(args.get_int("jobs", 1, 1, 256));
  const double time_limit = args.has("time-limit") ? static_cast<double>(args.get_int("time-limit", 0, 0, INT64_MAX))
                                                   : spec.time_limit_seconds;
  const int64_t memory_limit = args.get_int("memory-limit", spec.memory_limit_bytes, 0, INT64_MAX);
  std::error_code ec;
  fs::create_directories(dir / "runs", ec);
  fs::create_directories(dir / "logs", ec);
  if (ec || access((dir / "runs").c_str(), W_OK) != 0)
    throw std::runtime_error(fmt::format("cannot write to '{}'", (dir / "runs").string()));

  // Two sweeps on one directory would both run every cell; shards and MPI ranks share it by design.
  lock_results_dir(dir, shard_tag, args.has("mpi"));
  remove_stale_temporaries(dir / "runs");
  remove_stale_temporaries(dir);  // manifest.json.tmp.<pid> of a killed sweep

  if (args.has("resume")) require_same_plugins(dir / manifest_name);
  const Json plugins = plugins_record();
  std::map<std::string, std::string> status;  // cell id -> final status
  auto write_manifest = [&] {
    Json cells = Json::array();
    for (size_t k : order) {
      const auto& c = spec.cells[k];
      cells.push_back({{"id", c.id}, {"kind", c.kind}, {"variant", c.variant}, {"task", c.task}, {"seed", c.seed},
                       {"set", c.set}, {"status", status.count(c.id) ? Json(status[c.id]) : Json("pending")}});
    }
    write_json_atomic((dir / manifest_name).string(), {{"schema", "attnbench.sweep/1"}, {"name", spec.name},
                                                       {"spec", spec.raw}, {"plugins", plugins}, {"cells", cells}});
  };

  std::vector<size_t> todo;
  for (size_t k : order) {
    const auto& c = spec.cells[k];
    // A cell that runs again keeps its previous status in the manifest until it finishes.
    const std::string st = run_status(dir / "runs" / (c.id + ".json"));
    if (!st.empty()) status[c.id] = st;
    // "running": a partial record left by a cell the sweep did not see finish (killed with it).
    if (st.empty() || st == "running" || !args.has("resume")) todo.push_back(k);
  }
  write_manifest();
  const size_t total = order.size(), skipped = total - todo.size();
  const bool tty = isatty(2);
  fmt::print(stderr, "sweep '{}': {} cells{}, {} to run, {} at a time\n", spec.name, total,
             skipped ? fmt::format(" ({} already done)", skipped) : "", todo.size(), jobs);

  CellRunner runner(spec, dir, time_limit, memory_limit);
  size_t next = 0, done = 0, failed = 0;
  const auto t0 = Clock::now();
  auto progress = [&](const std::string& line) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    const double eta = done ? elapsed / static_cast<double>(done) * static_cast<double>(todo.size() - done) : 0;
    const std::string summary = fmt::format("[{}/{}] running {}, failed {}, elapsed {:.0f} s, eta {:.0f} s", done,
                                            todo.size(), runner.running(), failed, elapsed, eta);
    if (tty) fmt::print(stderr, "\r\33[2K{}{}", line.empty() ? "" : line + "\n", summary);
    else if (!line.empty()) fmt::print(stderr, "{}  {}\n", summary, line);
  };
  auto finished = [&](size_t cell, const std::string& st) {
    status[spec.cells[cell].id] = st;
    ++done;
    failed += st != "ok";
    write_manifest();
    progress(fmt::format("{} {}", st == "ok" ? "ok  " : st, spec.cells[cell].id));
  };
  if (args.has("mpi")) {
#ifdef ATTNBENCH_WITH_MPI
    if (!run_sweep_mpi(todo, runner, finished)) return 0;  // workers: rank 0 reports
#else
    throw UsageError("sweep: this attnbench was built without MPI (configure with -DATTNBENCH_WITH_MPI=ON and "
                     "apt-get install libopenmpi-dev)");
#endif
  } else {
    while (next < todo.size() || runner.running() > 0) {
      while (next < todo.size() && static_cast<int>(runner.running()) < jobs) runner.start(todo[next++]);
      progress("");
      for (const auto& [cell, st] : runner.poll()) finished(cell, st);
    }
  }
  if (tty) fmt::print(stderr, "\n");
  fmt::print("{} cells done ({} failed){}; results in {}\n", done, failed,
             skipped ? fmt::format(", {} skipped as already done", skipped) : "", dir.string());
  return 0;
}

}  // namespace ab::cli
