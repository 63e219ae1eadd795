#pragma once
// Shared by the libFuzzer targets: what counts as a finding. A documented refusal (UsageError,
// which the CLI turns into exit 2 with a message) is the expected answer to bad input; any other
// exception escaping a parser, and of course any crash or sanitizer report, is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "attnbench/params.hpp"

namespace fuzz {

template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const ab::UsageError&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "finding: a %s escaped instead of a UsageError: %s\n", typeid(e).name(), e.what());
    std::abort();
  }
}

inline std::string text(const uint8_t* data, size_t size) { return std::string(reinterpret_cast<const char*>(data), size); }

}  // namespace fuzz
