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
#include "attnbench/sweep.hpp"
#include "attnbench/train.hpp"
#include "attnbench/variant.hpp"
#include "commands.hpp"
#include "sweep_runner.hpp"

namespace ab::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string tail_of(const fs::path& log, size_t lines) {
  std::ifstream f(log);
  std::vector<std::string> all;
  for (std::string l; std::getline(f, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += all[i] + "\n";
  return out;
}

// A record for a cell whose child died without writing its run file.
Json failure_record(const SweepCell& c, const std::string& status, const std::string& error,
                    const std::vector<std::string>& argv) {
  Json doc;
  if (c.kind == "train") {
    std::vector<std::string> sets;
    for (const auto& [k, v] : c.set.items()) sets.push_back(k + "=" + (v.is_string() ? v.get<std::string>() : v.dump()));
    doc = run_header(resolve_run_config(c.variant, c.task, sets, c.seed, c.threads));
  } else {
    doc = {{"schema", "attnbench.run/1"}, {"kind", "bench"},
           {"variants", Json::array({{{"name", c.variant}, {"params", Json::object()}}})},
           {"task", nullptr}, {"train", nullptr}, {"seed", c.seed}};
    // The same shape fields an ok bench run records, so reports can place the failed cells.
    doc["model"] = {{"batch", c.bench.value("batch", 1)}, {"d_model", c.bench.value("d_model", 512)},
                    {"heads", c.bench.value("heads", 8)}, {"causal", c.bench.value("causal", false)},
                    {"train_step_model", {{"layers", 2}, {"d_model", 64}, {"heads", 2}, {"mlp_dim", 128}}}};
  }
  doc["status"] = status;
  doc["error"] = error;
  doc["metrics"] = Json::object();
  doc["context"] = run_context(argv);
  doc["context"]["threads"] = c.threads > 0 ? c.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  return doc;
}

std::string signal_text(int sig) { return fmt::format("signal {} ({})", sig, strsignal(sig)); }

}  // namespace

std::string run_status(const fs::path& p) {
  std::ifstream f(p);
  if (!f) return "";
  return run_file_status(std::string(std::istreambuf_iterator<char>(f), {}));
}

fs::path CellRunner::run_file(size_t cell) const { return dir_ / "runs" / (spec_.cells[cell].id + ".json"); }

void CellRunner::start(size_t cell) {
  const SweepCell& c = spec_.cells[cell];
  const fs::path out = run_file(cell), log = dir_ / "logs" / (c.id + ".log");
  std::error_code ec;
  fs::remove(out, ec);
  std::vector<std::string> args = c.command(out.string());
  args.insert(args.begin(), "attnbench");
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(fmt::format("fork failed: {}", std::strerror(errno)));
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) dup2(fd, 1), dup2(fd, 2), close(fd);
    setpgid(0, 0);  // the cell and anything it starts can be killed together
    // If the sweep itself dies (killed, crashed), its cells die too: a resumed sweep re-runs them
    // instead of racing orphans for the same run file.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (memory_limit_ > 0) {
      // RLIMIT_DATA covers heap and anonymous mappings: an allocation beyond it fails cleanly.
      rlimit rl{static_cast<rlim_t>(memory_limit_), static_cast<rlim_t>(memory_limit_)};
      setrlimit(RLIMIT_DATA, &rl);
    }
    std::vector<char*> cargv;
    for (auto& a : args) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    execv("/proc/self/exe", cargv.data());
    _exit(127);
  }
  running_.push_back({pid, cell, Clock::now()});
}

std::vector<std::pair<size_t, std::string>> CellRunner::poll(int wait_ms) {
  std::vector<std::pair<size_t, std::string>> ended;
  const auto until = Clock::now() + std::chrono::milliseconds(wait_ms);
  do {
    int wstatus = 0;
    const pid_t pid = waitpid(-1, &wstatus, WNOHANG);
    auto it = std::find_if(running_.begin(), running_.end(), [&](const Child& r) { return r.pid == pid; });
    if (pid <= 0 || it == running_.end()) {
      for (auto& r : running_)
        if (time_limit_ > 0 && !r.timed_out &&
            std::chrono::duration<double>(Clock::now() - r.start).count() > time_limit_) {
          kill(-r.pid, SIGKILL);
          r.timed_out = true;
        }
      if (!ended.empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    const SweepCell& c = spec_.cells[it->cell];
    const fs::path out = run_file(it->cell), log = dir_ / "logs" / (c.id + ".log");
    std::string st = run_status(out);
    if (st.empty()) {
      std::string why;
      // Under a sanitizer a crash or an allocator failure ends in a report and exit code 1, not a
      // signal: the child's log tells them apart.
      const std::string log_tail = tail_of(log, 200);
      const bool says_oom = log_tail.find("out of memory") != std::string::npos ||
                            log_tail.find("bad_alloc") != std::string::npos ||
                            log_tail.find("(errno: 12)") != std::string::npos;  // ENOMEM: the memory limit
      const bool says_crash = log_tail.find("Sanitizer: SEGV") != std::string::npos ||
                              log_tail.find("Sanitizer: BUS") != std::string::npos ||
                              log_tail.find("ERROR: AddressSanitizer") != std::string::npos;
      if (it->timed_out) st = "timeout", why = fmt::format("exceeded the time limit of {} s", time_limit_);
      else if (WIFSIGNALED(wstatus)) {
        const int sig = WTERMSIG(wstatus);
        st = sig == SIGKILL || says_oom ? "oom" : "crashed";
        why = fmt::format("crashed: {}{}", signal_text(sig), sig == SIGKILL ? " (the kernel's OOM killer?)" : "");
      } else if (says_oom || says_crash) {
        st = says_oom ? "oom" : "crashed";
        why = fmt::format("{} (exit code {}, sanitizer report in the log)", says_oom ? "out of memory" : "crashed",
                          WEXITSTATUS(wstatus));
      } else {
        st = "error";
        why = fmt::format("exited with code {} without a run file", WEXITSTATUS(wstatus));
      }
      const std::string tail = tail_of(log, 8);
      if (!tail.empty()) why += "; last output:\n" + tail;
      std::vector<std::string> cmd = c.command(out.string());
      cmd.insert(cmd.begin(), "attnbench");
      write_json_atomic(out.string(), failure_record(c, st, why, cmd));
    }
    ended.emplace_back(it->cell, st);
    running_.erase(it);
  } while (Clock::now() < until);
  return ended;
}

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
  std::string manifest_name = "manifest.json";
  if (args.has("shard")) {
    const auto [i, n] = parse_shard(args.get("shard"));
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spec.cells[a].id < spec.cells[b].id; });
    std::vector<size_t> mine;
    for (size_t k = 0; k < order.size(); ++k)
      if (static_cast<int>(k % n) == i) mine.push_back(order[k]);
    order = mine;
    manifest_name = fmt::format("manifest.shard-{}-of-{}.json", i, n);
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

  // Temporary files of writers that no longer exist (a killed sweep or cell) are litter; those of
  // live writers (another shard) are left alone.
  for (const auto& e : fs::directory_iterator(dir / "runs", ec)) {
    const std::string name = e.path().filename().string();
    const auto at = name.rfind(".tmp.");
    if (at == std::string::npos) continue;
    const pid_t writer = static_cast<pid_t>(std::atoi(name.c_str() + at + 5));
    if (writer > 0 && kill(writer, 0) != 0 && errno == ESRCH) fs::remove(e.path(), ec);
  }

  std::map<std::string, std::string> status;  // cell id -> final status
  auto write_manifest = [&] {
    Json cells = Json::array();
    for (size_t k : order) {
      const auto& c = spec.cells[k];
      cells.push_back({{"id", c.id}, {"kind", c.kind}, {"variant", c.variant}, {"task", c.task}, {"seed", c.seed},
                       {"set", c.set}, {"status", status.count(c.id) ? Json(status[c.id]) : Json("pending")}});
    }
    write_json_atomic((dir / manifest_name).string(),
                      {{"schema", "attnbench.sweep/1"}, {"name", spec.name}, {"spec", spec.raw}, {"cells", cells}});
  };

  std::vector<size_t> todo;
  for (size_t k : order) {
    const auto& c = spec.cells[k];
    const std::string st = args.has("resume") ? run_status(dir / "runs" / (c.id + ".json")) : "";
    if (!st.empty()) status[c.id] = st;
    else todo.push_back(k);
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
