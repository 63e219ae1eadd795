// `check`: the conformance suite and gradient checks over registered variants.
#include <regex>

#include <fmt/format.h>

#include "args.hpp"
#include "attnbench/check.hpp"
#include "commands.hpp"

namespace ab::cli {

int cmd_check(int argc, char** argv, int first) {
  const auto flags = with_common({{"variant", "RE", "check the variants whose name matches this regular expression (default: all)"},
                                  {"json", "", "print the results as JSON"}});
  Args args(argc, argv, first, "check", flags);
  if (args.print_help("check [--variant RE] [--json]",
                      "Shape, finiteness, determinism, causality, padding, finite-difference gradients\n"
                      "and cost model of each variant. Exits 1 if any check fails.")) return 0;
  apply_common(args);
  const std::string pattern = args.get("variant", ".*");
  std::regex re;
  try {
    re = std::regex(pattern);
  } catch (const std::regex_error& e) {
    throw UsageError(fmt::format("check: --variant '{}' is not a valid regular expression: {}", pattern, e.what()));
  }
  auto& reg = VariantRegistry::instance();
  std::vector<std::string> chosen;
  for (const auto& n : reg.names())
    if (std::regex_match(n, re)) chosen.push_back(n);
  if (chosen.empty()) throw UsageError("check: " + unknown_name_message("variant", pattern, reg.names()));
  Json report = Json::array();
  int failed = 0, passed = 0;
  for (const auto& n : chosen) {
    for (const auto& r : check_variant(reg.get(n))) {
      (r.passed ? passed : failed)++;
      report.push_back({{"variant", n}, {"check", r.check}, {"passed", r.passed}, {"detail", r.detail}});
      if (!args.has("json"))
        fmt::print("{:<4} {:<16} {:<18} {}\n", r.passed ? "ok" : "FAIL", n, r.check, r.detail);
    }
  }
  if (args.has("json")) fmt::print("{}\n", report.dump(2));
  else fmt::print("{} passed, {} failed\n", passed, failed);
  return failed ? 1 : 0;
}

}  // namespace ab::cli
