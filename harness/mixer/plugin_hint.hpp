#pragma once
// The message for an unknown variant or task name, which may be a plugin's that was not loaded.
#include <string>
#include <vector>

namespace ab {

// unknown_name_message(what, name, names), plus how to load a plugin (--plugin PATH or
// ATTNBENCH_PLUGINS) and, when none is loaded, the .so files of the current directory.
std::string unknown_with_plugin_hint(const char* what, const std::string& name, const std::vector<std::string>& names);

}  // namespace ab
