// attnbench: one binary, one subcommand per job. Exit codes: 0 success, 1 failure, 2 usage error.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/params.hpp"
#include "attnbench/plugin.hpp"
#include "commands.hpp"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**, int);
  const char* summary;
};

const Command kCommands[] = {
    {"list", ab::cli::cmd_list, "list registered variants or tasks"},
    {"describe", ab::cli::cmd_describe, "parameters, defaults, capabilities and cost of one variant or task"},
    {"check", ab::cli::cmd_check, "conformance and gradient checks of variants"},
    {"train", ab::cli::cmd_train, "train one variant on one task and write a run file"},
    {"data", ab::cli::cmd_data, "dump generated task examples as JSON lines"},
    {"sweep", ab::cli::cmd_sweep, "run a grid of train and bench cells, each in a child process"},
    {"report", ab::cli::cmd_report, "HTML and Markdown report (tables and plots) of result directories"},
    {"compare", ab::cli::cmd_compare, "ratios between two result sets; flags regressions beyond the noise"},
    {"bench", ab::cli::cmd_bench, "time and memory per variant, length and direction (Google Benchmark)"},
};

void print_usage(std::FILE* to) {
  fmt::print(to, "usage: attnbench COMMAND [flags]   (attnbench COMMAND --help for details)\n\ncommands:\n");
  for (const auto& c : kCommands) fmt::print(to, "  {:<10} {}\n", c.name, c.summary);
  fmt::print(to,
             "\nwith every command:\n"
             "  --plugin PATH  load variants and tasks from a plugin module (repeatable); the\n"
             "                 environment variable ATTNBENCH_PLUGINS holds more, ':'-separated\n");
}

// Takes every `--plugin PATH` / `--plugin=PATH` out of argv and loads the plugins, those of
// ATTNBENCH_PLUGINS too. The paths are added to ATTNBENCH_PLUGINS so that the child processes
// of a sweep load the same plugins.
int load_plugins(int argc, char** argv) {
  std::vector<std::string> paths;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--plugin") {
      if (i + 1 >= argc) throw ab::UsageError("--plugin needs a path to a plugin module (.so)");
      paths.push_back(argv[++i]);
    } else if (a.rfind("--plugin=", 0) == 0) {
      paths.push_back(a.substr(9));
    } else {
      argv[out++] = argv[i];
    }
  }
  argv[out] = nullptr;
  std::string env = std::getenv("ATTNBENCH_PLUGINS") ? std::getenv("ATTNBENCH_PLUGINS") : "";
  for (const auto& p : paths) {
    const ab::PluginInfo& info = ab::load_plugin(p);
    env += (env.empty() ? "" : ":") + info.path;
  }
  if (!env.empty()) setenv("ATTNBENCH_PLUGINS", env.c_str(), 1);
  ab::load_plugins_from_env();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // oneDNN's OpenMP workers spin after each primitive and would steal the cores from our TBB
  // loops (measured: half the training throughput). libgomp reads its wait policy when it loads,
  // so it is set here once and the process restarts itself; a user's own setting is kept.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then run with the default policy
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::vector<std::string> names;
  for (const auto& c : kCommands) names.push_back(c.name);
  try {
    argc = load_plugins(argc, argv);
    if (argc < 2) {
      print_usage(stderr);
      return 2;
    }
    for (const auto& c : kCommands)
      if (argv[1] == std::string(c.name)) return c.run(argc, argv, 2);
    throw ab::UsageError(ab::unknown_name_message("command", argv[1], names));
  } catch (const ab::UsageError& e) {
    fmt::print(stderr, "attnbench: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "attnbench: failed: {}\n", e.what());
    return 1;
  }
}
