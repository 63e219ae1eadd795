// `report` and `compare`: thin front ends to the Python scripts (Debian's /usr/bin/python3 with
// matplotlib), so a user has one binary to remember.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "attnbench/params.hpp"
#include "commands.hpp"

namespace ab::cli {
namespace {

// $ATTNBENCH_SCRIPTS, else share/attnbench/scripts of an installed tree (next to bin/), else the
// scripts/ folder of the source tree this binary was built from.
std::filesystem::path scripts_dir() {
  if (const char* env = std::getenv("ATTNBENCH_SCRIPTS")) return env;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  const auto installed = exe.parent_path().parent_path() / "share" / "attnbench" / "scripts";
  if (!ec && std::filesystem::is_directory(installed, ec)) return installed;
  return std::filesystem::path(ATTNBENCH_SOURCE_DIR) / "scripts";
}

int run_script(const char* script, int argc, char** argv, int first) {
  const auto path = scripts_dir() / script;
  if (!std::filesystem::exists(path))
    throw std::runtime_error(fmt::format("cannot find {} (set ATTNBENCH_SCRIPTS to the scripts/ folder)", path.string()));
  const char* python = "/usr/bin/python3";  // Debian's interpreter sees the apt-installed matplotlib
  std::vector<std::string> args = {python, path.string()};
  for (int i = first; i < argc; ++i) args.push_back(argv[i]);
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  execv(python, cargv.data());
  throw std::runtime_error(fmt::format("cannot run {}: {}", python, std::strerror(errno)));
}

}  // namespace

int cmd_report(int argc, char** argv, int first) { return run_script("report.py", argc, argv, first); }
int cmd_compare(int argc, char** argv, int first) { return run_script("compare.py", argc, argv, first); }

}  // namespace ab::cli
