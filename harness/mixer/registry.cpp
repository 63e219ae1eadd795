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

std::string unknown_with_plugin_hint(const char* what, const std::string& name, const std::vector<std::string>& names) {
  std::string hint = fmt::format("; a plugin's {}s need --plugin PATH (or ATTNBENCH_PLUGINS)", what);
  if (loaded_plugins().empty()) {
    std::vector<std::string> here;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(".", ec))
      if (e.path().extension() == ".so") here.push_back(e.path().string());
    std::sort(here.begin(), here.end());
    if (!here.empty()) hint += fmt::format(", e.g. --plugin {} (no plugin is loaded)", fmt::join(here, " or --plugin "));
  }
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
