#pragma once
// What the safari synthetics (associative_recall, induction_heads) share: their token ids
// (0 = padding, 1..N ordinary tokens, N+1 = "=>", N+2 = ".") and safari's own spelling of them.
#include <cstdint>
#include <string>
#include <vector>

namespace ab::safari {

// The whole sequence as safari spells it: ordinary tokens "0".."N-1", "=>" and ".".
inline std::string readable(const std::vector<int32_t>& seq, int64_t N) {
  std::string out;
  for (int32_t t : seq) {
    if (!out.empty()) out += ' ';
    out += t == N + 1 ? std::string("=>") : t == N + 2 ? std::string(".") : std::to_string(t - 1);
  }
  return out;
}

}  // namespace ab::safari
