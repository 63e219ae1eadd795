// write_json_atomic makes a run file durable (issue 20, point 9): the temporary file's bytes are
// fsynced before the rename publishes them, and the directory after it, so a power cut leaves the
// old document or the new one. fsync is interposed here: this executable's definition comes
// before libc's for the engine library too, and it notes what each call synced before passing it on.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "results/run_file.hpp"

namespace {

namespace fs = std::filesystem;

struct Sync {
  std::string what;     // the path behind the descriptor
  bool target_exists;   // whether the final name existed at that moment
};
std::vector<Sync>* g_syncs = nullptr;  // recording only while a test looks
std::string g_target;

}  // namespace

extern "C" int fsync(int fd) {
  using Fn = int (*)(int);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "fsync"));
  if (g_syncs) {
    char buf[4096];
    const ssize_t n = readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
    g_syncs->push_back({n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?", fs::exists(g_target)});
  }
  return real(fd);
}

namespace {

TEST(DurableWrite, FileSyncedBeforeTheRenameAndDirectoryAfter) {
  const fs::path dir = fs::canonical(fs::temp_directory_path()) / ("ab_durable_" + std::to_string(getpid()));
  fs::create_directories(dir);
  g_target = (dir / "run.json").string();
  std::vector<Sync> syncs;
  g_syncs = &syncs;
  ab::write_json_atomic(g_target, ab::Json{{"status", "ok"}});
  g_syncs = nullptr;
  ASSERT_EQ(syncs.size(), 2u);
  EXPECT_EQ(syncs[0].what, g_target + ".tmp." + std::to_string(getpid()));  // the bytes, under the temporary name
  EXPECT_FALSE(syncs[0].target_exists);                                     // before the rename
  EXPECT_EQ(syncs[1].what, dir.string());                                   // then the directory entry
  EXPECT_TRUE(syncs[1].target_exists);                                      // after it
  fs::remove_all(dir);
}

}  // namespace
