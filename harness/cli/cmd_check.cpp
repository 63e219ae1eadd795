// `check`: the conformance suite and gradient checks over registered variants.
#include <regex>

#include <fmt/format.h>

#include "args.hpp"
#include "attnbench/check.hpp"
#include "attnbench/ops.hpp"
#include "commands.hpp"
#include "eval/memory_trace.hpp"

namespace ab::cli {

int cmd_check(int argc, char** argv, int first) {
  const auto flags = with_common({{"variant", "RE", "check the variants whose name matches this regular expression (default: all)"},
                                  {"seed", "S", "seed of the inputs, parameters and sampled elements (default 1)"},
                                  {"set", "variant.KEY=VALUE", "a variant parameter (only when one variant is checked)", true},
                                  {"trace-memory", "",
                                   "instead of the checks, measure one variant's saved and peak bytes at 81 small sizes "
                                   "and print them as formulas in B, N, D, H (and as C++ for its cost model)"},
                                  {"json", "", "print the results as JSON"}});
  Args args(argc, argv, first, "check", flags);
  if (args.print_help("check [--variant RE] [--seed S] [--set variant.k=v ...] [--json | --trace-memory]",
                      "Shape, finiteness, determinism, causality, padding, finite-difference gradients\n"
                      "and cost model of each variant. Exits 1 if any check fails.\n"
                      "--trace-memory fits the bytes a variant saves for backward and its forward+backward\n"
                      "peak, measured as the memory checks measure them, exactly as polynomials in B, N,\n"
                      "D, H, verifies them at a held-out size and compares them with the cost model;\n"
                      "exits 1 when no exact formula fits.")) return 0;
  apply_common(args);
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 1, 0, INT64_MAX));
  const Json given = group_sets(args, "variant", "check");
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
  if (!given.empty() && chosen.size() != 1)
    throw UsageError(fmt::format("check: --set applies to one variant, but --variant '{}' matches {}; name one",
                                 pattern, chosen.size()));
  if (args.has("trace-memory")) {
    if (args.has("json")) throw UsageError("check: --trace-memory prints text; drop --json");
    if (chosen.size() != 1)
      throw UsageError(fmt::format("check: --trace-memory traces one variant, but --variant '{}' matches {}; name one",
                                   pattern, chosen.size()));
    // One thread unless told: at the traced sizes other threads' buffers blur the peak's formula.
    if (!args.has("threads")) set_num_threads(1);
    const VariantSpec& spec = reg.get(chosen.front());
    const MemoryTrace t = trace_memory(spec, given, seed);
    fmt::print("{}", render_memory_trace(spec, t));
    return t.ok() ? 0 : 1;
  }
  Json report = Json::array();
  int failed = 0, passed = 0;
  for (const auto& n : chosen) {
    for (const auto& r : check_variant(reg.get(n), given, seed)) {
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
