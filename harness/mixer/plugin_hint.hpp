#pragma once
// The message for an unknown variant or task name, which may be a plugin's that was not loaded.
#include <filesystem>
#include <string>
#include <vector>

namespace ab {

// unknown_name_message(what, name, names), plus how to load a plugin (--plugin PATH or
// ATTNBENCH_PLUGINS) and the .so files not loaded yet in the current folder, in the folders of the
// loaded plugins and in those given to add_plugin_hint_dir.
std::string unknown_with_plugin_hint(const char* what, const std::string& name, const std::vector<std::string>& names);
// Another folder to look in for the hint (a sweep spec's).
void add_plugin_hint_dir(const std::filesystem::path& dir);

}  // namespace ab
