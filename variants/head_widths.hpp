#pragma once
// Key and value widths per head from the expand_k / expand_v parameters (gla, gsa, deltanet,
// gated_deltanet, kda: fla's layers size q, k by expand_k d_model and v by expand_v d_model).
#include <algorithm>
#include <cmath>
#include <string>

#include "attnbench/variant.hpp"

namespace ab_head_widths {

struct HeadWidths {
  int64_t dk, dv;  // per head
};

// dk = expand_k D / H and dv = expand_v D / H. A UsageError naming `name` and the nearest valid
// expand_k / expand_v when expand D is not a positive multiple of the heads.
inline HeadWidths head_widths(const ab::MixerConfig& cfg, const std::string& name) {
  const int64_t D = cfg.d_model, H = cfg.heads;
  const int64_t Dk = std::llround(D * cfg.params.at("expand_k").get<double>());
  const int64_t Dv = std::llround(D * cfg.params.at("expand_v").get<double>());
  if (H <= 0 || Dk % H != 0 || Dv % H != 0 || Dk == 0 || Dv == 0) {
    // The nearest widths that fit: whole multiples of the heads, at least one channel per head.
    auto nearest = [&](int64_t w) {
      const int64_t h = std::max<int64_t>(H, 1);
      return std::to_string(double(std::max<int64_t>(h, (w + h / 2) / h * h)) / double(D));
    };
    throw ab::UsageError(name + ": expand_k * d_model = " + std::to_string(Dk) + " and expand_v * d_model = " +
                         std::to_string(Dv) + " must be positive multiples of model.heads = " + std::to_string(H) +
                         " (d_model = " + std::to_string(D) + "); nearest valid: variant.expand_k=" + nearest(Dk) +
                         ", variant.expand_v=" + nearest(Dv));
  }
  return {Dk / H, Dv / H};
}

}  // namespace ab_head_widths
