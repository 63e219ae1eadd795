#include "sweep/results_dir.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include <fmt/ranges.h>

#include "attnbench/params.hpp"
#include "attnbench/plugin.hpp"

namespace ab {
namespace {

namespace fs = std::filesystem;

bool alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH); }

// Takes the lock (exclusive or shared) on `path` and keeps its descriptor open until the process
// ends; O_CLOEXEC keeps the cells from inheriting it.
void take(const fs::path& path, bool exclusive, const fs::path& dir) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot create the lock file '{}': {}", path.string(), std::strerror(errno)));
  if (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
    const int err = errno;
    pid_t holder = 0;
    std::ifstream(path) >> holder;
    close(fd);
    if (err != EWOULDBLOCK) throw std::runtime_error(fmt::format("cannot lock '{}': {}", path.string(), std::strerror(err)));
    throw UsageError(fmt::format("results directory '{}' is in use by another sweep ({}); wait for it to end or "
                                 "choose another --out",
                                 dir.string(),
                                 alive(holder) ? fmt::format("pid {}", holder) : "its shards or MPI ranks"));
  }
  if (exclusive) {
    const std::string pid = fmt::format("{}\n", getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
      throw std::runtime_error(fmt::format("cannot write the lock file '{}': {}", path.string(), std::strerror(errno)));
  }
  // The descriptor stays open on purpose: closing it would release the lock.
}

}  // namespace

void lock_results_dir(const fs::path& dir, const std::string& shard, bool shared) {
  take(dir / ".lock", !shared && shard.empty(), dir);
  if (!shard.empty()) take(dir / (".lock." + shard), true, dir);
}

void remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const auto at = name.rfind(".tmp.");
    if (at == std::string::npos) continue;
    char* end = nullptr;
    const long writer = std::strtol(name.c_str() + at + 5, &end, 10);
    if (*end == '\0' && writer > 0 && !alive(static_cast<pid_t>(writer))) fs::remove(e.path(), ec);
  }
}

Json plugins_record() {
  Json out = Json::array();
  for (const auto& p : loaded_plugins()) out.push_back({{"path", p.path}, {"hash", p.hash}});
  return out;
}

void require_same_plugins(const fs::path& manifest) {
  std::ifstream f(manifest);
  if (!f) return;
  const Json m = Json::parse(f, nullptr, false);
  if (m.is_discarded() || !m.is_object() || !m.contains("plugins") || !m["plugins"].is_array()) return;
  std::vector<std::string> changed;
  for (const auto& p : m["plugins"]) {
    if (!p.is_object() || !p.contains("path") || !p["path"].is_string()) continue;
    const std::string path = p["path"].get<std::string>(), then = p.value("hash", ""),
                      now = plugin_file_hash(path);
    if (now != then)
      changed.push_back(now.empty() ? fmt::format("'{}' is gone (was {})", path, then)
                                    : fmt::format("'{}' changed ({} then, {} now)", path, then, now));
  }
  if (!changed.empty())
    throw UsageError(fmt::format("sweep --resume: plugin {} since {} was written, so its cells would mix two builds; "
                                 "restore the plugin, or run the sweep into a new --out directory",
                                 fmt::join(changed, ", plugin "), manifest.string()));
}

}  // namespace ab
