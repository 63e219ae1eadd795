// The run documents of DESIGN §7: their identity fields, the context every run records, and
// the atomic write that keeps a half-written file from ever being read as a result.
#include "results/run_file.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "attnbench/build_info.hpp"
#include "attnbench/plugin.hpp"
#include "core/backend/onednn.hpp"
#include "core/json_input.hpp"
#include "core/utf8.hpp"

namespace ab {

Json run_header(const RunConfig& cfg) {
  Json doc;
  doc["schema"] = "attnbench.run/1";
  doc["kind"] = "train";
  doc["status"] = "ok";
  // String parameters come from the user (task.path), so they may hold any bytes.
  doc["variant"] = {{"name", cfg.variant}, {"params", valid_utf8_json(cfg.variant_params)}};
  if (!cfg.layers.empty()) doc["variant"]["layers"] = cfg.layers;
  doc["task"] = {{"name", cfg.task}, {"params", valid_utf8_json(cfg.task_params)}};
  if (!cfg.task_defaults.empty()) doc["task"]["defaults_applied"] = cfg.task_defaults;
  doc["model"] = valid_utf8_json(cfg.model_params);
  doc["train"] = valid_utf8_json(cfg.train_params);
  doc["seed"] = cfg.seed;
  return doc;
}

Json bench_run_header(const Json& variants, const Json& model, uint64_t seed) {
  return {{"schema", "attnbench.run/1"}, {"kind", "bench"}, {"status", "ok"}, {"variants", variants},
          {"task", nullptr}, {"model", model}, {"train", nullptr}, {"seed", seed}};
}

void mark_failed(Json& doc, const std::string& status, const std::string& error, Json context) {
  doc["status"] = status;
  doc["error"] = valid_utf8(error);  // a log tail, an exception's message: outside text
  doc["metrics"] = Json::object();
  doc["context"] = std::move(context);
}

int64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

Json run_context(const std::vector<std::string>& command_line) {
  Json plugins = Json::array();
  for (const auto& p : loaded_plugins())
    plugins.push_back({{"path", valid_utf8(p.path)}, {"abi_version", p.abi_version}, {"variants", p.variants},
                       {"tasks", p.tasks}, {"hash", p.hash}});
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::string cpu = "unknown", flags;
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    auto value = [&] { return line.substr(line.find(':') + 2); };
    if (cpu == "unknown" && line.rfind("model name", 0) == 0) cpu = value();
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = value();
  }
  Json cpu_flags = Json::array();
  for (const char* f : {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile"})
    if ((" " + flags + " ").find(std::string(" ") + f + " ") != std::string::npos) cpu_flags.push_back(f);
  // The machine's load when the run starts: timings taken beside other work are slower and
  // noisier. /proc/loadavg: three load averages (which include this machine's earlier work, e.g.
  // the previous cell of a sweep), then "runnable/total" threads right now (this one included).
  Json load_avg = Json::array();
  int64_t runnable_others = -1;
  std::ifstream loadavg("/proc/loadavg");
  for (double x; load_avg.size() < 3 && loadavg >> x;) load_avg.push_back(x);
  if (int64_t running = 0; load_avg.size() == 3 && loadavg >> running) runnable_others = std::max<int64_t>(running - 1, 0);
  const std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  Json context = {{"date", date},
          {"host", host},
          {"cpu_model", cpu},
          {"cpu_flags", cpu_flags},
          {"logical_cpus", sysconf(_SC_NPROCESSORS_ONLN)},
          {"load_avg", load_avg},
          {"threads", kernels::threads()},
          {"compiler", build::compiler},
          {"cxx_flags", build::cxx_flags},
          {"build_type", build::build_type},
          {"git_revision", build::git_revision()},
          {"versions",
           {{"attnbench", build::version},
            {"onednn", kernels::onednn_version()},
            {"tbb", kernels::tbb_version()},
            {"benchmark", build::benchmark_version},
            {"fmt", std::to_string(FMT_VERSION)},
            {"nlohmann_json", fmt::format("{}.{}.{}", NLOHMANN_JSON_VERSION_MAJOR, NLOHMANN_JSON_VERSION_MINOR,
                                          NLOHMANN_JSON_VERSION_PATCH)}}},
          {"command_line", valid_utf8_json(Json(command_line))},
          {"plugins", plugins}};
  if (runnable_others >= 0) context["runnable_at_start"] = runnable_others;
  return context;
}

std::string run_file_status(const std::string& text, const std::string& origin) {
  // Truncated or malformed: not a result (re-run); absurdly deep or with a key twice: not ours.
  const Json j = Json::parse(text, json_input_guard(origin), /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("schema", Json()) != "attnbench.run/1") return "";
  const auto it = j.find("status");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

void check_writable(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) throw UsageError("the output path is empty; name a file, e.g. --out results/out/run.json");
  // A run file is written atomically (temporary file + rename): standard output cannot be.
  if (path == "-") throw UsageError("'-' (standard output) cannot take a run file; name a file, e.g. --out run.json");
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  if (fs::is_directory(target, ec)) throw std::runtime_error(fmt::format("cannot write '{}': it is a directory", path));
  const std::string probe = path + fmt::format(".probe.{}", getpid());
  {
    std::ofstream out(probe);
    if (!out) throw std::runtime_error(fmt::format("cannot write '{}': {}", path, std::strerror(errno)));
  }
  fs::remove(probe, ec);
}

void write_json_atomic(const std::string& path, const Json& doc) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  const std::string tmp = path + fmt::format(".tmp.{}", getpid());
  // Outside text is made valid UTF-8 where it enters a document; replacing here too means a
  // missed one costs a U+FFFD, not the run file.
  const std::string text = doc.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot write '{}': {}", tmp, std::strerror(errno)));
  // The bytes reach the disk before the rename publishes them, and the rename itself is made
  // durable: after a power cut the name holds the old document or the new one, never a hole.
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  const int err = done < text.size() || fsync(fd) != 0 ? errno : 0;
  if (close(fd) != 0 || err != 0) {
    fs::remove(tmp, ec);
    throw std::runtime_error(fmt::format("writing '{}' failed: {}", tmp, std::strerror(err ? err : errno)));
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw std::runtime_error(fmt::format("cannot move the run file into place at '{}'", path));
  }
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (const int dfd = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) fsync(dfd), close(dfd);
}

}  // namespace ab
