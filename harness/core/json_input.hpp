#pragma once
// JSON that we did not write ourselves (sweep specs, run files read back): nlohmann's parser
// accepts any nesting depth (deep documents overflow the stack later, when they are printed or
// destroyed) and keeps the last of duplicate keys without a word. Our readers refuse both.
#include <string>

#include "attnbench/params.hpp"

namespace ab {

inline constexpr int kMaxJsonDepth = 64;  // far beyond any spec or run file we write

// A parser callback for Json::parse that throws UsageError, naming `origin`, on nesting deeper
// than kMaxJsonDepth and on a key given twice in one object (naming the key's path).
Json::parser_callback_t json_input_guard(const std::string& origin);

// Json::parse with that guard; malformed text is a UsageError naming `origin`, line and column.
Json parse_json_input(const std::string& text, const std::string& origin);

}  // namespace ab
