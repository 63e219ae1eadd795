// Compiled into every plugin by attnbench_add_plugin(): the entry points the loader looks up and
// the queue of registrations that wait for its checks (see attnbench/plugin.hpp). No exception
// crosses these extern "C" functions: the loader gets a status and a message instead.
#include <cstddef>
#include <exception>
#include <string>
#include <vector>

#include "attnbench/params.hpp"
#include "attnbench/plugin.hpp"
#include "attnbench/sdk_signature.hpp"

namespace {
std::vector<ab::detail::PluginRegisterFn>& queued() {
  static std::vector<ab::detail::PluginRegisterFn> q;
  return q;
}

// Copies what fits of `text` into message[capacity], always terminated.
void put(char* message, std::size_t capacity, const char* text) noexcept {
  if (!message || capacity == 0) return;
  std::size_t i = 0;
  for (; text[i] && i + 1 < capacity; ++i) message[i] = text[i];
  message[i] = '\0';
}
}  // namespace

namespace ab::detail {
void plugin_defer(PluginRegisterFn fn) { queued().push_back(fn); }
}  // namespace ab::detail

extern "C" [[gnu::visibility("default")]] int attnbench_plugin_abi_version() noexcept { return ab::kPluginAbiVersion; }

extern "C" [[gnu::visibility("default")]] const char* attnbench_plugin_signature() noexcept {
  return ATTNBENCH_BUILD_SIGNATURE;
}

// Returns 0 when every queued registration ran; 1 for a usage error (e.g. a name registered twice),
// 2 for any other exception, with its message in message[capacity].
extern "C" [[gnu::visibility("default")]] int attnbench_plugin_register(const char* origin, char* message,
                                                                        std::size_t capacity) noexcept {
  try {
    for (auto fn : queued()) fn(origin);
    return 0;
  } catch (const ab::UsageError& e) {
    put(message, capacity, e.what());
    return 1;
  } catch (const std::exception& e) {
    put(message, capacity, e.what());
  } catch (...) {
    put(message, capacity, "an exception that is not a std::exception");
  }
  return 2;
}
