#pragma once
// Out-of-tree plugins: shared modules that register variants and tasks with the same macros as
// built-in sources (ATTNBENCH_REGISTER_VARIANT / ATTNBENCH_REGISTER_TASK). Build one with
// attnbench_add_plugin() from the CMake package (find_package(attnbench)); load it with
// `attnbench --plugin PATH` or the ATTNBENCH_PLUGINS path list (':'-separated).
//
// Inside a plugin (compiled with ATTNBENCH_PLUGIN defined) the registration macros do not touch
// the registries when the module loads: they queue their registrations, and the loader runs the
// queue through the module's `attnbench_plugin_register` entry point only after its
// `attnbench_plugin_abi_version` has matched kPluginAbiVersion. Both entry points come from
// plugin_entry.cpp, which attnbench_add_plugin() compiles into every plugin.
#include <string>
#include <vector>

namespace ab {

// Bumped whenever a public class layout, virtual table or registration signature changes.
// 2: Mixer gained begin_decode / decode_step, Cost gained state_bytes.
// 3: Cost gained peak_bytes (its layout changed).
// 4: the SDK holds only what a plugin may use: fused kernels moved to attnbench/kernels/ (the old
//    paths forward there until ABI 5), DecodeState to decode_state.hpp; the application headers
//    (train, bench, sweep, model, fidelity, PNG, LRA loaders) left it. ops.hpp gained
//    keep_flags(mask, shape) and is_padded_key, the one reading of a key mask, which replaced the
//    GLA kernel's keep_flags. VariantSpec gained attention_style (set by the registration
//    template). Cost and CostArgs moved to cost.hpp (same layout), so a kernel header can state
//    the cost of the mixers built on it (block_sparse_mixer_cost).
inline constexpr int kPluginAbiVersion = 4;

struct PluginInfo {
  std::string path;  // absolute
  int abi_version = 0;
  std::vector<std::string> variants, tasks;  // what it registered
};

// Loads one plugin (once per path). Refuses with a UsageError: a missing file, a library that is
// not an attnbench plugin, an ABI version other than kPluginAbiVersion (naming both) and a name
// that is already registered (naming both origins). An exception from the plugin's own
// registration code is reported as a failure naming the plugin.
const PluginInfo& load_plugin(const std::string& path);
// Loads every plugin named in ATTNBENCH_PLUGINS that is not loaded yet.
void load_plugins_from_env();
const std::vector<PluginInfo>& loaded_plugins();

namespace detail {
using PluginRegisterFn = void (*)(const std::string& origin);
#ifdef ATTNBENCH_PLUGIN
// Queues a registration until the loader has checked the ABI version (plugin_entry.cpp).
[[gnu::visibility("hidden")]] void plugin_defer(PluginRegisterFn fn);
#endif
}  // namespace detail

}  // namespace ab
