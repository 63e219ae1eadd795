#pragma once
// Tasks as the CLI builds them: the user's parameters resolved against the spec, then made.
#include <memory>
#include <string>

#include "attnbench/task.hpp"

namespace ab::test {

// *resolved (when given) gets the resolved parameters.
inline std::unique_ptr<Task> make_task(const std::string& name, const Json& given, uint64_t seed = 1,
                                       Json* resolved = nullptr) {
  const TaskSpec& spec = TaskRegistry::instance().get(name);
  Json params = resolve_params(spec.params, given, "task '" + name + "'");
  if (resolved) *resolved = params;
  return spec.make(params, seed);
}

// The UsageError message of making the task ("" when it is made).
inline std::string usage_error(const std::string& name, const Json& given) {
  try {
    make_task(name, given);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace ab::test
