#include "args.hpp"

#include <cerrno>
#include <cstdlib>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "core/numbers.hpp"
#include "train/train.hpp"

namespace ab::cli {

Args::Args(int argc, char** argv, int first, const std::string& command, const std::vector<FlagSpec>& flags,
           size_t max_positional)
    : command_(command), flags_(flags) {
  std::vector<std::string> names;
  for (const auto& f : flags) names.push_back("--" + f.name);
  for (int i = first; i < argc; ++i) {
    std::string word = argv[i];
    if (word.rfind("--", 0) != 0 || word == "--") {
      if (positional_.size() >= max_positional)
        throw UsageError(fmt::format("{}: unexpected argument '{}' (see 'attnbench {} --help')", command, word, command));
      positional_.push_back(word);
      continue;
    }
    std::string value;
    bool inline_value = false;
    if (auto eq = word.find('='); eq != std::string::npos) {
      value = word.substr(eq + 1);
      word = word.substr(0, eq);
      inline_value = true;
    }
    const FlagSpec* spec = nullptr;
    for (const auto& f : flags)
      if ("--" + f.name == word) spec = &f;
    if (!spec) throw UsageError(fmt::format("{}: {}", command, unknown_name_message("flag", word, names)));
    if (spec->value.empty()) {
      if (inline_value) throw UsageError(fmt::format("{}: {} takes no value", command, word));
      value = "true";
    } else if (!inline_value) {
      if (i + 1 >= argc) throw UsageError(fmt::format("{}: {} needs a value ({})", command, word, spec->value));
      value = argv[++i];
    }
    auto& slot = values_[spec->name];
    if (!slot.empty() && !spec->repeatable)
      throw UsageError(fmt::format("{}: {} given more than once", command, word));
    slot.push_back(value);
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

std::string Args::require(const std::string& name) const {
  if (!has(name)) throw UsageError(fmt::format("{}: --{} is required (see 'attnbench {} --help')", command_, name, command_));
  // An empty value is a variable that expanded to nothing, never a choice (--out "" would write
  // into the current directory).
  if (get(name).empty()) throw UsageError(fmt::format("{}: --{} is empty; give it a value", command_, name));
  return get(name);
}

int64_t Args::get_int(const std::string& name, int64_t fallback, int64_t min, int64_t max) const {
  if (!has(name)) return fallback;
  const std::string text = get(name);
  const auto parsed = parse_integer(text);  // as --set reads integers: "1e3" is 1000
  if (!parsed) throw UsageError(fmt::format("{}: --{} must be an integer, got '{}'", command_, name, text));
  const int64_t v = *parsed;
  if (v < min || v > max)
    throw UsageError(fmt::format("{}: --{} = {} is out of range [{}, {}]; nearest valid value: {}", command_, name, v,
                                 min, max, v < min ? min : max));
  return v;
}

Json group_sets(const Args& args, const std::string& group, const std::string& command) {
  Json given = Json::object();
  const std::string prefix = group + ".";
  for (const auto& s : args.all("set")) {
    const auto eq = s.find('=');
    if (s.rfind(prefix, 0) != 0 || eq == std::string::npos || eq <= prefix.size())
      throw UsageError(fmt::format("{}: malformed --set '{}': expected {}key=value", command, s, prefix));
    given[s.substr(prefix.size(), eq - prefix.size())] = s.substr(eq + 1);
  }
  return given;
}

bool Args::print_help(const std::string& synopsis, const std::string& about) const {
  if (!has("help")) return false;
  fmt::print("{}", usage_text(synopsis, about, flags_));
  return true;
}

std::string usage_text(const std::string& synopsis, const std::string& about, const std::vector<FlagSpec>& flags) {
  std::string s = fmt::format("usage: attnbench {}\n\n{}\n\nflags:\n", synopsis, about);
  for (const auto& f : flags) {
    const std::string left = f.value.empty() ? "--" + f.name : fmt::format("--{} {}", f.name, f.value);
    s += fmt::format("  {:<24} {}{}\n", left, f.help, f.repeatable ? " (repeatable)" : "");
  }
  return s;
}

std::vector<FlagSpec> with_common(std::vector<FlagSpec> flags) {
  flags.push_back({"threads", "N", "threads for oneDNN (OpenMP) and TBB together; 0 = all cores (default 0)"});
  flags.push_back({"help", "", "show this help"});
  return flags;
}

void apply_common(const Args& args) { set_num_threads(static_cast<int>(args.get_int("threads", 0, 0, kMaxThreads))); }

}  // namespace ab::cli
