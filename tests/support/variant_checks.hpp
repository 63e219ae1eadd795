#pragma once
// The conformance checks (check_variant) of registered variants under given parameters.
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "attnbench/check.hpp"
#include "attnbench/variant.hpp"

namespace ab::test {

// Every check of every (variant, parameters) case passes; a failure names the case and the check.
inline void expect_checks_pass(const std::vector<std::pair<std::string, Json>>& cases) {
  for (const auto& [name, params] : cases) {
    const VariantSpec* spec = VariantRegistry::instance().find(name);
    ASSERT_NE(spec, nullptr) << name;
    for (const CheckResult& r : check_variant(*spec, params))
      EXPECT_TRUE(r.passed) << name << " " << params.dump() << " " << r.check << ": " << r.detail;
  }
}

}  // namespace ab::test
