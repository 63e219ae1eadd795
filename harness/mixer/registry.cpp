// The variant and task registries. Both are function-local statics, so registration from static
// initialisers (built-in sources or plugins) never depends on initialisation order.
#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "attnbench/plugin.hpp"
#include "attnbench/task.hpp"
#include "attnbench/variant.hpp"
#include "mixer/plugin_hint.hpp"

namespace ab {

namespace {
std::vector<std::filesystem::path>& hint_dirs() {
  static std::vector<std::filesystem::path> dirs;
  return dirs;
}
}  // namespace

void add_plugin_hint_dir(const std::filesystem::path& dir) {
  if (std::find(hint_dirs().begin(), hint_dirs().end(), dir) == hint_dirs().end()) hint_dirs().push_back(dir);
}

std::string unknown_with_plugin_hint(const char* what, const std::string& name, const std::vector<std::string>& names) {
  std::string hint = fmt::format("; a plugin's {}s need --plugin PATH (or ATTNBENCH_PLUGINS)", what);
  // The .so files not loaded yet: in the current folder, the folders of the loaded plugins and
  // the folders callers named (a sweep spec's).
  namespace fs = std::filesystem;
  std::vector<fs::path> dirs{"."};
  for (const auto& p : loaded_plugins()) dirs.push_back(fs::path(p.path).parent_path());
  dirs.insert(dirs.end(), hint_dirs().begin(), hint_dirs().end());
  std::vector<std::string> seen, found;  // canonical paths, and the paths as shown
  for (const auto& p : loaded_plugins()) seen.push_back(p.path);
  for (const auto& dir : dirs) {
    std::error_code ec;
    std::vector<std::string> here;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() != ".so") continue;
      const std::string canon = fs::weakly_canonical(e.path(), ec).string();
      if (std::find(seen.begin(), seen.end(), canon) != seen.end()) continue;
      seen.push_back(canon);
      here.push_back(e.path().string());
    }
    std::sort(here.begin(), here.end());
    found.insert(found.end(), here.begin(), here.end());
  }
  if (!found.empty())
    hint += fmt::format(", e.g. --plugin {}{}", fmt::join(found, " or --plugin "),
                        loaded_plugins().empty() ? " (no plugin is loaded)" : "");
  return unknown_name_message(what, name, names) + hint;
}

template <class Spec>
static void add_unique(std::vector<Spec>& specs, Spec spec, const char* what) {
  for (const auto& s : specs)
    if (s.name == spec.name)
      throw std::runtime_error(fmt::format("{} '{}' is registered twice: by {} and by {}", what, spec.name,
                                           s.origin, spec.origin));
  specs.push_back(std::move(spec));
}

template <class Spec>
static std::vector<std::string> sorted_names(const std::vector<Spec>& specs) {
  std::vector<std::string> n;
  for (const auto& s : specs) n.push_back(s.name);
  std::sort(n.begin(), n.end());
  return n;
}

template <class Spec>
static const Spec* find_spec(const std::vector<Spec>& specs, const std::string& name) {
  for (const auto& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

// The fields variant and task specs share.
template <class Spec>
static Spec described(std::string name, std::string summary, std::string reference, std::vector<ParamSpec> params) {
  Spec s;
  s.name = std::move(name);
  s.summary = std::move(summary);
  s.reference = std::move(reference);
  s.params = std::move(params);
  return s;
}

VariantSpec variant_spec(std::string name, std::string family, std::string summary, std::string reference,
                         std::vector<ParamSpec> params, Capabilities caps) {
  auto s = described<VariantSpec>(std::move(name), std::move(summary), std::move(reference), std::move(params));
  s.family = std::move(family);
  s.caps = caps;
  return s;
}

TaskSpec task_spec(std::string name, std::string summary, std::string reference, std::vector<ParamSpec> params) {
  return described<TaskSpec>(std::move(name), std::move(summary), std::move(reference), std::move(params));
}

VariantRegistry& VariantRegistry::instance() {
  static VariantRegistry r;
  return r;
}
void VariantRegistry::add(VariantSpec spec) { add_unique(specs_, std::move(spec), "variant"); }
const VariantSpec* VariantRegistry::find(const std::string& name) const { return find_spec(specs_, name); }
const VariantSpec& VariantRegistry::get(const std::string& name) const {
  if (auto* s = find(name)) return *s;
  throw UsageError(unknown_with_plugin_hint("variant", name, names()));
}
std::vector<std::string> VariantRegistry::names() const { return sorted_names(specs_); }

TaskRegistry& TaskRegistry::instance() {
  static TaskRegistry r;
  return r;
}
void TaskRegistry::add(TaskSpec spec) { add_unique(specs_, std::move(spec), "task"); }
const TaskSpec* TaskRegistry::find(const std::string& name) const { return find_spec(specs_, name); }
const TaskSpec& TaskRegistry::get(const std::string& name) const {
  if (auto* s = find(name)) return *s;
  throw UsageError(unknown_with_plugin_hint("task", name, names()));
}
std::vector<std::string> TaskRegistry::names() const { return sorted_names(specs_); }

const char* split_name(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::valid: return "valid";
    case Split::test: return "test";
  }
  return "?";
}

}  // namespace ab
