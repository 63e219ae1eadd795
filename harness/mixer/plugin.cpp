// The plugin loader: dlopen, ABI check, then the plugin's queued registrations.
#include "attnbench/plugin.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "attnbench/task.hpp"
#include "attnbench/variant.hpp"

namespace ab {

namespace {
std::vector<PluginInfo>& plugins() {
  static std::vector<PluginInfo> p;
  return p;
}

std::vector<std::string> added(const std::vector<std::string>& before, const std::vector<std::string>& after) {
  std::vector<std::string> out;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(out));
  return out;
}
}  // namespace

const std::vector<PluginInfo>& loaded_plugins() { return plugins(); }

const PluginInfo& load_plugin(const std::string& given) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (given.empty() || !fs::is_regular_file(given, ec)) {
    std::string hint;
    const fs::path dir = fs::path(given).has_parent_path() ? fs::path(given).parent_path() : fs::path(".");
    std::vector<std::string> near;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".so") near.push_back(e.path().string());
    if (!near.empty()) {
      const std::string n = nearest(given, near);
      hint = n.empty() ? fmt::format("; {} holds {}", dir.string(), fmt::join(near, ", "))
                       : fmt::format("; did you mean '{}'?", n);
    }
    throw UsageError(fmt::format("plugin '{}' not found{}", given, hint));
  }
  const std::string path = fs::canonical(given, ec).string();
  for (const auto& p : plugins())
    if (p.path == path) return p;
  // RTLD_LOCAL: a plugin's own symbols never interpose on another plugin's.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) throw UsageError(fmt::format("plugin '{}' cannot be loaded: {}", given, dlerror()));
  using AbiFn = int (*)();
  using RegisterFn = void (*)(const char*);
  auto abi = reinterpret_cast<AbiFn>(dlsym(handle, "attnbench_plugin_abi_version"));
  auto reg = reinterpret_cast<RegisterFn>(dlsym(handle, "attnbench_plugin_register"));
  if (!abi || !reg) {
    dlclose(handle);
    throw UsageError(fmt::format("'{}' is not an attnbench plugin: it exports no attnbench_plugin_abi_version / "
                                 "attnbench_plugin_register (build it with attnbench_add_plugin() from the CMake package)",
                                 given));
  }
  const int version = abi();
  if (version != kPluginAbiVersion) {
    dlclose(handle);
    throw UsageError(fmt::format("plugin '{}' was built for plugin ABI version {}, but this attnbench has version {}; "
                                 "rebuild the plugin against this attnbench",
                                 given, version, kPluginAbiVersion));
  }
  const auto variants_before = VariantRegistry::instance().names();
  const auto tasks_before = TaskRegistry::instance().names();
  try {
    reg(path.c_str());
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    // The module stays loaded: registrations that succeeded may already point into it.
    throw UsageError(fmt::format("plugin '{}' failed to register: {}", given, e.what()));
  }
  PluginInfo info{path, version, added(variants_before, VariantRegistry::instance().names()),
                  added(tasks_before, TaskRegistry::instance().names())};
  plugins().push_back(std::move(info));
  return plugins().back();
}

void load_plugins_from_env() {
  const char* env = std::getenv("ATTNBENCH_PLUGINS");
  if (!env) return;
  const std::string list = env;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t end = std::min(list.find(':', start), list.size());
    if (end > start) load_plugin(list.substr(start, end - start));
    start = end + 1;
  }
}

}  // namespace ab
