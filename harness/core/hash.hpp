#pragma once
// FNV-1a, 64 bits: content ids of sweep cells and of plugin files (not a cryptographic hash; it
// tells versions of one file apart, it does not defend against a forger).
#include <cstdint>
#include <string_view>

namespace ab {

inline uint64_t fnv1a64(std::string_view bytes, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

}  // namespace ab
