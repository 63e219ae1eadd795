// The --set parser and parameter resolution: the first byte picks a variant, the second a task,
// the remaining lines are --set assignments.
#include <sstream>

#include "attnbench/task.hpp"
#include "train/train.hpp"
#include "attnbench/variant.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const auto variants = ab::VariantRegistry::instance().names();
  const auto tasks = ab::TaskRegistry::instance().names();
  const std::string& variant = variants[data[0] % variants.size()];
  const std::string& task = tasks[data[1] % tasks.size()];
  std::vector<std::string> sets;
  std::istringstream lines(fuzz::text(data + 2, size - 2));
  for (std::string line; std::getline(lines, line);) sets.push_back(line);
  fuzz::expect_clean([&] { (void)ab::resolve_run_config(variant, task, sets, 0, 1); });
  return 0;
}
