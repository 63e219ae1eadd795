#pragma once
// Pixels as tokens, shared by the image tasks (image, pathfinder): gray level + 1, so that 0 stays
// padding (vocabulary 257), or, with black_is_padding=true, LRA's convention (token = gray level,
// black pixels count as padding; vocabulary 256).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "attnbench/task.hpp"

namespace ab::gray {

inline ParamSpec black_is_padding_param() {
  return bool_param("black_is_padding", false,
                    "LRA's token convention: token = gray level, so black pixels are padding (vocabulary 256); "
                    "false = gray level + 1, nothing is padding (vocabulary 257)");
}

class Tokens {
 public:
  explicit Tokens(const Json& params) : offset_(params.at("black_is_padding").get<bool>() ? 0 : 1) {}

  int64_t vocab_size() const { return 256 + offset_; }
  // gray [H W] -> tokens [H W]
  std::vector<int32_t> of(const std::vector<uint8_t>& gray) const {
    std::vector<int32_t> t(gray.size());
    for (size_t i = 0; i < gray.size(); ++i) t[i] = gray[i] + offset_;
    return t;
  }
  // tokens [H W] -> gray [H W] (ImageTask::image_pixels)
  std::vector<uint8_t> pixels(const std::vector<int32_t>& tokens) const {
    std::vector<uint8_t> px(tokens.size());
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(std::clamp(tokens[i] - offset_, 0, 255));
    return px;
  }

 private:
  int offset_;
};

}  // namespace ab::gray
