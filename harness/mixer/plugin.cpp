// The plugin loader: dlopen, ABI check, then the plugin's queued registrations.
#include "attnbench/plugin.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "attnbench/sdk_signature.hpp"
#include "attnbench/task.hpp"
#include "attnbench/variant.hpp"
#include "core/hash.hpp"

namespace ab {

namespace {
std::vector<PluginInfo>& plugins() {
  static std::vector<PluginInfo> p;
  return p;
}

// "key=value;key=value" -> its parts in order.
std::vector<std::pair<std::string, std::string>> signature_parts(const std::string& sig) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(sig);
  for (std::string part; std::getline(in, part, ';');) {
    const size_t eq = part.find('=');
    out.emplace_back(part.substr(0, eq), eq == std::string::npos ? "" : part.substr(eq + 1));
  }
  return out;
}

// What differs between a plugin's signature and ours, e.g. "sdk (plugin 1a2b.., attnbench 3c4d..)".
std::string signature_difference(const std::string& theirs, const std::string& ours) {
  const auto t = signature_parts(theirs), o = signature_parts(ours);
  std::vector<std::string> diff;
  for (const auto& part : o) {  // (clang 14 cannot capture a structured binding in a lambda)
    const auto it = std::find_if(t.begin(), t.end(), [&](const auto& p) { return p.first == part.first; });
    const std::string v = it == t.end() ? "none" : it->second;
    if (v != part.second) diff.push_back(fmt::format("{} (plugin: {}, attnbench: {})", part.first, v, part.second));
  }
  return diff.empty() ? fmt::format("'{}' vs '{}'", theirs, ours) : fmt::format("{}", fmt::join(diff, ", "));
}

std::vector<std::string> added(const std::vector<std::string>& before, const std::vector<std::string>& after) {
  std::vector<std::string> out;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(out));
  return out;
}
}  // namespace

const std::vector<PluginInfo>& loaded_plugins() { return plugins(); }

const char* build_signature() { return ATTNBENCH_BUILD_SIGNATURE; }

std::string plugin_file_hash(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return fmt::format("fnv1a64:{:016x}", fnv1a64(bytes));
}

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
  using SignatureFn = const char* (*)();
  using RegisterFn = int (*)(const char*, char*, size_t);
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
  // Same ABI version, but other headers, standard library or JSON library: layouts may differ.
  auto sig = reinterpret_cast<SignatureFn>(dlsym(handle, "attnbench_plugin_signature"));
  const std::string signature = sig ? sig() : "";
  if (signature != build_signature()) {
    dlclose(handle);
    throw UsageError(fmt::format("plugin '{}' was built with another build signature: {}; rebuild the plugin "
                                 "against this attnbench (its installed headers and the same compiler)",
                                 given, signature_difference(signature, build_signature())));
  }
  const auto variants_before = VariantRegistry::instance().names();
  const auto tasks_before = TaskRegistry::instance().names();
  std::array<char, 4096> message{};
  // The module stays loaded after a failure: registrations that succeeded may point into it.
  switch (reg(path.c_str(), message.data(), message.size())) {
    case 0: break;
    case 1: throw UsageError(fmt::format("plugin '{}': {}", given, message.data()));
    default: throw UsageError(fmt::format("plugin '{}' failed to register: {}", given, message.data()));
  }
  PluginInfo info{path, version, added(variants_before, VariantRegistry::instance().names()),
                  added(tasks_before, TaskRegistry::instance().names()), plugin_file_hash(path), signature};
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
