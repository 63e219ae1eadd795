#pragma once
// Out-of-tree plugins: shared modules that register variants and tasks with the same macros as
// built-in sources (ATTNBENCH_REGISTER_VARIANT / ATTNBENCH_REGISTER_TASK). Build one with
// attnbench_add_plugin() from the CMake package (find_package(attnbench)); load it with
// `attnbench --plugin PATH` or the ATTNBENCH_PLUGINS path list (':'-separated).
//
// Inside a plugin (compiled with ATTNBENCH_PLUGIN defined) the registration macros do not touch
// the registries when the module loads: they queue their registrations, and the loader runs the
// queue through the module's `attnbench_plugin_register` entry point only after its
// `attnbench_plugin_abi_version` has matched kPluginAbiVersion and its
// `attnbench_plugin_signature` our build signature. The entry points come from plugin_entry.cpp,
// which attnbench_add_plugin() compiles into every plugin; no exception crosses them.
#include <string>
#include <vector>

namespace ab {

// Bumped whenever a public header changes (CTest `plugin_abi_pinned` compares the headers' hash
// with harness/include/attnbench/ABI, which records it per version):
// 2: Mixer gained begin_decode / decode_step, Cost gained state_bytes.
// 3: Cost gained peak_bytes (its layout changed).
// 4: the SDK holds only what a plugin may use: fused kernels moved to attnbench/kernels/ (the old
//    paths forward there until ABI 5), DecodeState to decode_state.hpp; the application headers
//    (train, bench, sweep, model, fidelity, PNG, LRA loaders) left it. ops.hpp gained
//    keep_flags(mask, shape) and is_padded_key, the one reading of a key mask, which replaced the
//    GLA kernel's keep_flags, and more ops (div, sqrt, log_softmax, gather, topk, ...; sum_dim and
//    mean_dim take keepdim). VariantSpec gained attention_style (set by the registration
//    template). Cost and CostArgs moved to cost.hpp, and Cost gained bytes. PluginInfo gained hash
//    and signature; the entry points catch every exception and the loader checks a build
//    signature (attnbench/sdk_signature.hpp, generated).
// 5: MixerConfig gained kv_heads and AttentionMixer kv_heads_ (grouped-query attention); Task
//    gained targets_in_input(), TaskSpec gained defaults; Module gained add_param's no_decay flag
//    and no_decay_names(); the forwarding headers at the kernels' old paths are gone (include
//    attnbench/kernels/NAME.hpp); attnbench/kernels/delta_rule.hpp (the delta rule's chunked
//    kernel and decode state); every op of ops.hpp and kernels/ says what it saves for backward
//    (`check --trace-memory` measures it).
// 6: a block-sparse SparseSegment may hold one block list per (batch, head) (B H lists), for
//    data-dependent patterns (nsa's selected blocks); the delta-rule kernel takes a decay per key
//    dimension (log_alpha [B, H, N, dk], kda).
//    Spec builders, so a spec() is one call instead of a field-by-field block: variant_spec
//    (variant.hpp) and task_spec (task.hpp); additive_mask (variant.hpp), the score mask of a
//    context; one detail::Registrar behind both registration macros.
//    AttentionMixer gained input() (x while attend runs, for gates that read it); flash_attention
//    gained the per-head key bias (flash_attention_key_bias, key_bias / d_key_bias of the raw
//    kernels) for the Forgetting Transformer.
//    FlashAttentionOptions gained bf16 (tile products with bf16 inputs, AVX512_BF16) and
//    flash_attention_has_bf16().
// 7: MixerConfig gained rotary_base and AttentionMixer its rotary tables (model.positions=rotary:
//    q and k rotated by position before attend()).
//    gated_linear_attention.hpp documents its SSD path (scalar decays, chunked: batched oneDNN
//    matmuls); the API is unchanged. attnbench/kernels/dplr_delta_rule.hpp (the generalised
//    delta rule with a diagonal-plus-low-rank transition, RWKV-7's kernel, and its decode state).
//    attnbench/kernels/gated_slot_memory.hpp (GSA's key memory: gated linear attention decayed on
//    the value side, with its decode state); fft_conv.hpp gained fft_toeplitz_attention (the
//    fused Toeplitz-weighted kernel attention of kernel_rpe_fft).
#define ATTNBENCH_PLUGIN_ABI_VERSION 7
inline constexpr int kPluginAbiVersion = ATTNBENCH_PLUGIN_ABI_VERSION;

struct PluginInfo {
  std::string path;  // absolute
  int abi_version = 0;
  std::vector<std::string> variants, tasks;  // what it registered
  std::string hash;       // of the file's bytes when it was loaded: plugin_file_hash()
  std::string signature;  // the build signature it was compiled with (equal to ours)
};

// Loads one plugin (once per path). Refuses with a UsageError: a missing file, a library that is
// not an attnbench plugin, an ABI version other than kPluginAbiVersion (naming both), a build
// signature other than ours (naming the parts that differ: SDK headers, C++ standard library,
// nlohmann-json) and a name that is already registered (naming both origins). An exception
// from the plugin's own registration code is reported as a failure naming the plugin.
const PluginInfo& load_plugin(const std::string& path);
// Loads every plugin named in ATTNBENCH_PLUGINS that is not loaded yet.
void load_plugins_from_env();
const std::vector<PluginInfo>& loaded_plugins();
// "fnv1a64:<16 hex digits>" of a file's bytes; "" when it cannot be read. Sweeps record it and
// refuse to resume with a plugin file that changed.
std::string plugin_file_hash(const std::string& path);
// The build signature of this library (what every plugin must have been compiled with).
const char* build_signature();

namespace detail {
using PluginRegisterFn = void (*)(const std::string& origin);
#ifdef ATTNBENCH_PLUGIN
// Queues a registration until the loader has checked the ABI version (plugin_entry.cpp).
[[gnu::visibility("hidden")]] void plugin_defer(PluginRegisterFn fn);
#endif
// A static object whose constructor registers (built-in) or queues the registration (plugin):
// what ATTNBENCH_REGISTER_VARIANT and ATTNBENCH_REGISTER_TASK define.
template <PluginRegisterFn Register>
struct Registrar {
#ifdef ATTNBENCH_PLUGIN
  Registrar() { plugin_defer(Register); }
#else
  Registrar() { Register(""); }
#endif
};
}  // namespace detail

}  // namespace ab
