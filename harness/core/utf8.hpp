#pragma once
// Text from outside (a child's output, paths, command lines, file contents, exception messages)
// may hold bytes that are not UTF-8; a JSON document may not, and nlohmann refuses to write one
// that does. Every such text goes through valid_utf8 on its way into a document.
#include <string>
#include <string_view>

#include "attnbench/params.hpp"

namespace ab {

// `text` with every invalid UTF-8 sequence replaced by U+FFFD; valid text is returned unchanged.
std::string valid_utf8(std::string_view text);
// The same for every string (and key) inside a JSON value.
Json valid_utf8_json(const Json& doc);

}  // namespace ab
