#pragma once
// Declared, validated parameters: variants, tasks, the model and training all describe their
// knobs with ParamSpec; user values are checked strictly (unknown keys, wrong types, values out of
// range are errors that name the nearest valid choice) and resolved with every default filled in.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#define ATTNBENCH_CONCAT_(a, b) a##b
#define ATTNBENCH_CONCAT(a, b) ATTNBENCH_CONCAT_(a, b)

namespace ab {

using Json = nlohmann::ordered_json;

// A usage error: bad input from the user. The CLI maps it to exit code 2.
// The out-of-line destructor (core/params.cpp) is its key function: its typeinfo lives only in
// libattnbench, so a plugin catches and throws the same type as the library.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  ~UsageError() override;
};

enum class ParamType { integer, number, boolean, string };

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::number;
  Json default_value;  // null = "resolved by the owner" (the doc says how)
  std::string doc;
  double min = -1e300;  // inclusive range for integer and number
  double max = 1e300;
  std::vector<std::string> choices;  // for strings: the valid values (empty = free text)
};

ParamSpec int_param(std::string name, int64_t def, std::string doc, double min = -1e300, double max = 1e300);
ParamSpec num_param(std::string name, double def, std::string doc, double min = -1e300, double max = 1e300);
ParamSpec bool_param(std::string name, bool def, std::string doc);
ParamSpec enum_param(std::string name, std::string def, std::vector<std::string> choices, std::string doc);

std::string type_name(ParamType t);

// The closest candidate by edit distance (empty if none is reasonably close).
std::string nearest(const std::string& word, const std::vector<std::string>& candidates);
// "unknown variant 'softmx'; did you mean 'softmax'? (valid: a, b, c)"
std::string unknown_name_message(const std::string& what, const std::string& word,
                                 const std::vector<std::string>& candidates);

// Checks `given` (an object of user values, possibly strings from the command line) against
// `specs` and returns the full set with defaults filled in, in spec order. `owner` names the
// parameter group in messages ("variant 'softmax'", "task 'listops'", "model").
Json resolve_params(const std::vector<ParamSpec>& specs, const Json& given, const std::string& owner);

// Converts a command-line string to the type a spec wants, or throws UsageError.
Json parse_param_value(const ParamSpec& spec, const std::string& text, const std::string& owner);

Json describe_params(const std::vector<ParamSpec>& specs);

}  // namespace ab
