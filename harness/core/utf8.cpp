#include "core/utf8.hpp"

namespace ab {

std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto byte = [&](size_t i) { return i < text.size() ? static_cast<unsigned char>(text[i]) : 0u; };
  for (size_t i = 0; i < text.size();) {
    const unsigned c = byte(i);
    // Length of the sequence and the range of its second byte (Unicode 15, table 3-7): this
    // refuses overlong forms, surrogates and code points beyond U+10FFFF.
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    size_t ok = len ? 1 : 0;  // bytes of a well-formed prefix
    if (len > 1 && byte(i + 1) >= lo && byte(i + 1) <= hi)
      for (ok = 2; ok < len && byte(i + ok) >= 0x80 && byte(i + ok) <= 0xBF;) ++ok;
    if (len && ok == len) {
      out.append(text.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the ill-formed prefix (at least one byte)
      i += ok ? ok : 1;
    }
  }
  return out;
}

Json valid_utf8_json(const Json& doc) {
  if (doc.is_string()) return valid_utf8(doc.get_ref<const std::string&>());
  if (doc.is_array()) {
    Json out = Json::array();
    for (const auto& x : doc) out.push_back(valid_utf8_json(x));
    return out;
  }
  if (doc.is_object()) {
    Json out = Json::object();
    for (const auto& [k, v] : doc.items()) out[valid_utf8(k)] = valid_utf8_json(v);
    return out;
  }
  return doc;
}

}  // namespace ab
