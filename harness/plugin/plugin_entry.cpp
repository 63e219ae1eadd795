// Compiled into every plugin by attnbench_add_plugin(): the two entry points the loader looks up
// and the queue of registrations that wait for its ABI check (see attnbench/plugin.hpp).
#include <string>
#include <vector>

#include "attnbench/plugin.hpp"

namespace {
std::vector<ab::detail::PluginRegisterFn>& queued() {
  static std::vector<ab::detail::PluginRegisterFn> q;
  return q;
}
}  // namespace

namespace ab::detail {
void plugin_defer(PluginRegisterFn fn) { queued().push_back(fn); }
}  // namespace ab::detail

extern "C" [[gnu::visibility("default")]] int attnbench_plugin_abi_version() { return ab::kPluginAbiVersion; }

extern "C" [[gnu::visibility("default")]] void attnbench_plugin_register(const char* origin) {
  for (auto fn : queued()) fn(origin);
}
