#pragma once
// Numbers written as text, read the same way by every flag and every --set.
#include <cstdint>
#include <optional>
#include <string>

namespace ab {

// "1000", "-3", and integral values in number form ("1e3", "2.0"), within ±9e15 (exact in a
// double). nullopt for anything else: fractions, overflow, trailing text, "".
std::optional<int64_t> parse_integer(const std::string& text);

// How a number reads in a message: JSON writes NaN and infinities as `null`, which names nothing.
std::string number_text(double d);

}  // namespace ab
