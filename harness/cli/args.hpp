#pragma once
// A strict command-line parser: every flag is declared; unknown flags, missing values and stray
// words are usage errors that name the nearest valid flag.
#include <map>
#include <string>
#include <vector>

#include "attnbench/params.hpp"

namespace ab::cli {

struct FlagSpec {
  std::string name;  // without the leading "--"
  std::string value; // placeholder for the value ("N", "FILE"); empty = a switch
  std::string help;
  bool repeatable = false;
};

class Args {
 public:
  // Parses argv[first..argc). `positional` names the accepted positional words (empty = none).
  Args(int argc, char** argv, int first, const std::string& command, const std::vector<FlagSpec>& flags,
       size_t max_positional = 0);
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::vector<std::string> all(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  std::string require(const std::string& name) const;  // UsageError when missing
  int64_t get_int(const std::string& name, int64_t fallback, int64_t min, int64_t max) const;
  // With --help: prints the usage (synopsis, what the command does, its flags) and returns true.
  bool print_help(const std::string& synopsis, const std::string& about) const;

 private:
  std::string command_;
  std::vector<FlagSpec> flags_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

std::string usage_text(const std::string& synopsis, const std::string& about, const std::vector<FlagSpec>& flags);

// The --set values of one parameter group ("variant", "task") as {key: text}; any other form of
// --set is a usage error naming the command and the expected form.
Json group_sets(const Args& args, const std::string& group, const std::string& command);

// Flags every command accepts.
std::vector<FlagSpec> with_common(std::vector<FlagSpec> flags);
// Applies --threads (0 = all cores).
void apply_common(const Args& args);

}  // namespace ab::cli
