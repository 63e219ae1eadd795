#include "attnbench/params.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/numbers.hpp"

namespace ab {

UsageError::~UsageError() = default;

ParamSpec int_param(std::string name, int64_t def, std::string doc, double min, double max) {
  return ParamSpec{std::move(name), ParamType::integer, Json(def), std::move(doc), min, max, {}};
}
ParamSpec num_param(std::string name, double def, std::string doc, double min, double max) {
  return ParamSpec{std::move(name), ParamType::number, Json(def), std::move(doc), min, max, {}};
}
ParamSpec bool_param(std::string name, bool def, std::string doc) {
  return ParamSpec{std::move(name), ParamType::boolean, Json(def), std::move(doc), -1e300, 1e300, {}};
}
ParamSpec enum_param(std::string name, std::string def, std::vector<std::string> choices, std::string doc) {
  return ParamSpec{std::move(name), ParamType::string, Json(std::move(def)), std::move(doc), -1e300, 1e300,
                   std::move(choices)};
}

std::string type_name(ParamType t) {
  switch (t) {
    case ParamType::integer: return "integer";
    case ParamType::number: return "number";
    case ParamType::boolean: return "boolean";
    case ParamType::string: return "string";
  }
  return "?";
}

static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    // A candidate that contains the word (or the reverse) is a good guess too.
    if (d > 0 && (c.find(word) != std::string::npos || word.find(c) != std::string::npos)) d = std::min<size_t>(d, 2);
    if (d < best_d) best_d = d, best = c;
  }
  const size_t limit = std::max<size_t>(2, word.size() / 2);
  return best_d <= limit ? best : std::string();
}

std::string unknown_name_message(const std::string& what, const std::string& word,
                                 const std::vector<std::string>& candidates) {
  const std::string near = nearest(word, candidates);
  std::string msg = fmt::format("unknown {} '{}'", what, word);
  if (!near.empty()) msg += fmt::format("; did you mean '{}'?", near);
  msg += fmt::format(" (valid: {})", fmt::join(candidates, ", "));
  return msg;
}

static std::string range_text(const ParamSpec& s) {
  const bool lo = s.min > -1e299, hi = s.max < 1e299;
  if (lo && hi) return fmt::format("[{}, {}]", s.min, s.max);
  if (lo) return fmt::format(">= {}", s.min);
  if (hi) return fmt::format("<= {}", s.max);
  return "any";
}

// Checks one JSON value against its spec; converts integral numbers for number params.
static Json check_value(const ParamSpec& s, const Json& v, const std::string& owner) {
  const std::string where = fmt::format("{} parameter '{}'", owner, s.name);
  switch (s.type) {
    case ParamType::integer: {
      double d;
      if (v.is_number_integer()) d = static_cast<double>(v.get<int64_t>());
      else if (v.is_number_float() && std::isfinite(v.get<double>()) && std::floor(v.get<double>()) == v.get<double>())
        d = v.get<double>();
      else
        throw UsageError(fmt::format("{} must be an integer, got {}", where,
                                     v.is_number_float() ? number_text(v.get<double>()) : v.dump()));
      if (d < s.min || d > s.max)
        throw UsageError(fmt::format("{} = {} is out of range {}; nearest valid value: {}", where, v.dump(),
                                     range_text(s), d < s.min ? s.min : s.max));
      return Json(static_cast<int64_t>(d));
    }
    case ParamType::number: {
      if (!v.is_number()) throw UsageError(fmt::format("{} must be a number, got {}", where, v.dump()));
      const double d = v.get<double>();
      if (!std::isfinite(d))
        throw UsageError(
            fmt::format("{} = {} is not a finite number; valid range {}", where, number_text(d), range_text(s)));
      if (d < s.min || d > s.max)
        throw UsageError(fmt::format("{} = {} is out of range {}; nearest valid value: {}", where, v.dump(),
                                     range_text(s), d < s.min ? s.min : s.max));
      return Json(d);
    }
    case ParamType::boolean:
      if (!v.is_boolean()) throw UsageError(fmt::format("{} must be true or false, got {}", where, v.dump()));
      return v;
    case ParamType::string: {
      if (!v.is_string()) throw UsageError(fmt::format("{} must be a string, got {}", where, v.dump()));
      const auto str = v.get<std::string>();
      if (!s.choices.empty() && std::find(s.choices.begin(), s.choices.end(), str) == s.choices.end())
        throw UsageError(unknown_name_message(fmt::format("value for {}", where), str, s.choices));
      return v;
    }
  }
  return v;
}

Json resolve_params(const std::vector<ParamSpec>& specs, const Json& given, const std::string& owner) {
  if (!given.is_null() && !given.is_object())
    throw UsageError(fmt::format("{} parameters must be an object, got {}", owner, given.dump()));
  std::vector<std::string> names;
  for (const auto& s : specs) names.push_back(s.name);
  if (given.is_object())
    for (const auto& [k, v] : given.items())
      if (std::find(names.begin(), names.end(), k) == names.end())
        throw UsageError(unknown_name_message(fmt::format("{} parameter", owner), k, names));
  Json out = Json::object();
  for (const auto& s : specs) {
    if (given.is_object() && given.contains(s.name)) {
      const Json& v = given.at(s.name);
      out[s.name] = v.is_string() && s.type != ParamType::string ? parse_param_value(s, v.get<std::string>(), owner)
                                                                 : check_value(s, v, owner);
    } else {
      out[s.name] = s.default_value;
    }
  }
  return out;
}

Json parse_param_value(const ParamSpec& s, const std::string& text, const std::string& owner) {
  const std::string where = fmt::format("{} parameter '{}'", owner, s.name);
  switch (s.type) {
    case ParamType::integer: {
      // "1e3" or "2.0" are integers written as numbers, accepted when exact (as by every flag).
      const auto v = parse_integer(text);
      if (!v) throw UsageError(fmt::format("{} must be an integer, got '{}'", where, text));
      return check_value(s, Json(*v), owner);
    }
    case ParamType::number: {
      char* end = nullptr;
      const double d = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0') throw UsageError(fmt::format("{} must be a number, got '{}'", where, text));
      return check_value(s, Json(d), owner);
    }
    case ParamType::boolean:
      if (text == "true" || text == "1" || text == "yes") return Json(true);
      if (text == "false" || text == "0" || text == "no") return Json(false);
      throw UsageError(fmt::format("{} must be true or false, got '{}'", where, text));
    case ParamType::string:
      return check_value(s, Json(text), owner);
  }
  return Json(text);
}

Json describe_params(const std::vector<ParamSpec>& specs) {
  Json arr = Json::array();
  for (const auto& s : specs) {
    Json j = {{"name", s.name}, {"type", type_name(s.type)}, {"default", s.default_value}, {"doc", s.doc}};
    if (s.min > -1e299) j["min"] = s.min;
    if (s.max < 1e299) j["max"] = s.max;
    if (!s.choices.empty()) j["choices"] = s.choices;
    arr.push_back(std::move(j));
  }
  return arr;
}

}  // namespace ab
