#include "core/json_input.hpp"

#include <memory>
#include <set>
#include <vector>

#include <fmt/format.h>

namespace ab {

Json::parser_callback_t json_input_guard(const std::string& origin) {
  // Per open object or array: its path and (objects) the keys seen so far. Shared, because
  // nlohmann copies the callback.
  struct Level {
    std::string path;
    std::set<std::string> keys;
    std::string key;  // the object's current key (the path of the value being parsed)
  };
  auto stack = std::make_shared<std::vector<Level>>();
  return [origin, stack](int depth, Json::parse_event_t event, Json& parsed) {
    using E = Json::parse_event_t;
    if (event == E::object_start || event == E::array_start) {
      if (depth >= kMaxJsonDepth)
        throw UsageError(fmt::format("{}: JSON nested deeper than {} levels; flatten it", origin, kMaxJsonDepth));
      std::string path = "top level";
      if (!stack->empty()) {
        const Level& up = stack->back();
        path = up.key.empty() ? up.path + "[]" : (up.path == "top level" ? "" : up.path + ".") + up.key;
      }
      stack->push_back({path, {}, {}});
    } else if (event == E::object_end || event == E::array_end) {
      if (!stack->empty()) stack->pop_back();
    } else if (event == E::key && !stack->empty()) {
      Level& obj = stack->back();
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!obj.keys.insert(key).second)
        throw UsageError(fmt::format("{}: key '{}' appears twice in {} (JSON keeps only one; remove the other)",
                                     origin, key, obj.path));
      obj.key = key;
    }
    return true;
  };
}

Json parse_json_input(const std::string& text, const std::string& origin) {
  try {
    return Json::parse(text, json_input_guard(origin));
  } catch (const Json::parse_error& e) {
    // Line and column of the byte offset nlohmann reports.
    size_t line = 1, col = 1;
    for (size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) text[i] == '\n' ? (++line, col = 1) : ++col;
    throw UsageError(fmt::format("{}: malformed JSON at line {}, column {}: {}", origin, line, col, e.what()));
  } catch (const Json::out_of_range& e) {  // 1e999: JSON has no infinity
    throw UsageError(fmt::format("{}: a number is beyond the range of a double: {}", origin, e.what()));
  }
}

}  // namespace ab
