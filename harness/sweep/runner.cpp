// Sweep cells as child processes: each runs `attnbench` on one cell with a time and a memory
// limit; a child that dies without its run file gets a failure record with its status.
#include "sweep/runner.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include <fmt/format.h>

#include "bench/bench.hpp"
#include "core/json_input.hpp"
#include "core/utf8.hpp"
#include "train/train.hpp"

namespace ab {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string tail_of(const fs::path& log, size_t lines) {
  std::ifstream f(log);
  std::vector<std::string> all;
  for (std::string l; std::getline(f, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += all[i] + "\n";
  return valid_utf8(out);  // a child may print any bytes; the tail goes into a JSON document
}

// A record for a cell whose child died without writing its run file: the identity fields the
// run would have written, so that reports place the failed cell where its result would be. When
// the child left a partial record (status "running": its resolved task parameters, the curves so
// far), the failure record keeps those instead of the unresolved spec.
Json failure_record(const SweepCell& c, const std::string& status, const std::string& error,
                    const std::vector<std::string>& argv, const Json& partial) {
  Json doc;
  if (c.kind == "train" && partial.is_object() && partial.value("status", "") == "running") {
    doc = partial;
    Json context = run_context(argv);
    context["threads"] = c.threads > 0 ? c.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    Json metrics = doc.value("metrics", Json::object());
    mark_failed(doc, status, error, std::move(context));
    doc["metrics"] = std::move(metrics);
    return doc;
  }
  if (c.kind == "train") {
    std::vector<std::string> sets;
    for (const auto& [k, v] : c.set.items()) sets.push_back(k + "=" + (v.is_string() ? v.get<std::string>() : v.dump()));
    RunConfig cfg = resolve_run_config(c.variant, c.task, sets, c.seed, c.threads);
    cfg.task_params = resolved_task_params(cfg);
    doc = run_header(cfg);
  } else {
    BenchShape shape;
    shape.batch = c.bench.value("batch", shape.batch);
    shape.d_model = c.bench.value("d_model", shape.d_model);
    shape.heads = c.bench.value("heads", shape.heads);
    shape.causal = c.bench.value("causal", shape.causal);
    shape.attend_only = c.bench.value("attend_only", shape.attend_only);
    doc = bench_run_header(Json::array({{{"name", c.variant}, {"params", Json::object()}}}),
                           bench_model_json(shape, c.bench.value("matmul_precision", "fp32")), c.seed);
  }
  Json context = run_context(argv);
  context["threads"] = c.threads > 0 ? c.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  mark_failed(doc, status, error, std::move(context));
  return doc;
}

std::string signal_text(int sig) { return fmt::format("signal {} ({})", sig, strsignal(sig)); }

Json read_partial(const fs::path& p) {
  std::ifstream f(p);
  try {
    return parse_json_input(std::string(std::istreambuf_iterator<char>(f), {}), p.string());
  } catch (const std::exception&) {
    return Json();
  }
}

}  // namespace

std::string run_status(const fs::path& p) {
  std::ifstream f(p);
  if (!f) return "";
  return run_file_status(std::string(std::istreambuf_iterator<char>(f), {}), fmt::format("run file '{}'", p.string()));
}

fs::path CellRunner::run_file(size_t cell) const { return dir_ / "runs" / (spec_.cells[cell].id + ".json"); }

CellRunner::FileVersion CellRunner::version_of(const fs::path& p) {
  struct stat st {};
  if (stat(p.c_str(), &st) != 0) return {};
  return {st.st_dev, st.st_ino, static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

void CellRunner::start(size_t cell) {
  const SweepCell& c = spec_.cells[cell];
  const fs::path out = run_file(cell), log = dir_ / "logs" / (c.id + ".log");
  // A previous result stays in place until its replacement exists: the child's atomic rename
  // replaces it, and poll() tells the child's file from the old one by its version.
  const FileVersion before = version_of(out);
  std::vector<std::string> args = c.command(out.string());
  args.insert(args.begin(), "attnbench");
  // Everything that allocates or may fail is done before fork(): between fork and exec the child
  // of a threaded process may only make async-signal-safe calls.
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0)
    throw std::runtime_error(fmt::format("cannot write the log '{}': {}", log.string(), std::strerror(errno)));
  const rlimit memory{static_cast<rlim_t>(memory_limit_), static_cast<rlim_t>(memory_limit_)};
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    throw std::runtime_error(fmt::format("fork failed: {}", std::strerror(errno)));
  }
  if (pid == 0) {
    dup2(log_fd, 1), dup2(log_fd, 2);  // the duplicates survive exec; log_fd itself closes there
    setpgid(0, 0);  // the cell and anything it starts can be killed together
    // If the sweep itself dies (killed, crashed), its cells die too: a resumed sweep re-runs them
    // instead of racing orphans for the same run file.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // RLIMIT_DATA covers heap and anonymous mappings: an allocation beyond it fails cleanly.
    if (memory_limit_ > 0) setrlimit(RLIMIT_DATA, &memory);
    execv("/proc/self/exe", cargv.data());
    _exit(127);
  }
  close(log_fd);
  running_.push_back({pid, cell, Clock::now(), before});
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
    // The child's run file, or a newer one another writer put there meanwhile; only when there is
    // neither does a failure record replace the previous result.
    std::string st = version_of(out) != it->before ? run_status(out) : "";
    const fs::path partial_path = out.string() + ".partial";  // what the child had when it died
    const Json partial = st.empty() && fs::exists(partial_path) ? read_partial(partial_path) : Json();
    std::error_code ignored;
    fs::remove(partial_path, ignored);
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
      write_json_atomic(out.string(), failure_record(c, st, why, cmd, partial));
    }
    ended.emplace_back(it->cell, st);
    running_.erase(it);
  } while (Clock::now() < until);
  return ended;
}

}  // namespace ab
