#pragma once
// The three split sizes of a task with presets: train_size, valid_size and test_size, null = the
// preset's value. Written once per task, as numbers, for both the parameters' docs and their
// resolution (image, pathfinder, retrieval, text, mqar and the safari synthetics).
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "attnbench/task_helpers.hpp"

namespace ab::preset_sizes {

inline constexpr std::array<const char*, 3> kKeys = {"train_size", "valid_size", "test_size"};

struct Sizes {
  std::array<int64_t, 3> small, large;  // train, valid, test under the small and the large preset
};

// 1638400 -> "1,638,400"
inline std::string grouped(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// `own` followed by the three size parameters. unit: what an example is ("examples", "images");
// large: the large preset's name; also[k]: a default beyond the presets' (e.g. "all in the file"),
// empty for none; train_hi: the training size's upper bound.
inline std::vector<ParamSpec> after(std::vector<ParamSpec> own, const char* unit, const Sizes& s, const char* large,
                                    std::array<const char*, 3> also = {}, double train_hi = 1e10) {
  const char* what[3] = {"training", "validation", "test"};
  for (int k = 0; k < 3; ++k) {
    std::string doc = fmt::format("{} {}; null = {}", what[k], unit, grouped(s.small[k]));
    if (s.large[k] != s.small[k]) doc += fmt::format(" (small) / {} ({})", grouped(s.large[k]), large);
    if (also[k]) doc += fmt::format(" / {}", also[k]);
    own.push_back(null_int_param(kKeys[k], std::move(doc), 1, k == 0 ? train_hi : 1e10));
  }
  return own;
}

// A SplitTask whose sizes come from a Sizes table.
class Task : public SplitTask {
 protected:
  using SplitTask::SplitTask;

  // sizes_ from the given sizes or the preset's, recorded in the effective parameters.
  void resolve_sizes(const Sizes& s) {
    for (int k = 0; k < 3; ++k) sizes_[k] = preset_default(kKeys[k], s.small[k], s.large[k]).get<int64_t>();
  }
};

}  // namespace ab::preset_sizes
