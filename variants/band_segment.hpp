#pragma once
// The sliding-window band of local_window and longformer as one block-sparse segment.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "attnbench/kernels/block_sparse_attention.hpp"

namespace ab_band {

// Query i sees key j when i - left <= j <= i + right and both are at or after `first` (longformer's
// global tokens come before it and are handled by their own segments); blocks of `block` tokens.
inline ab::SparseSegment band_segment(int64_t N, int64_t left, int64_t right, int64_t block, int64_t first = 0) {
  const auto bounds = ab::uniform_bounds(N, block);
  return ab::build_segment(
      N, {{}, {}, bounds, bounds}, 1,
      [&](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
        const int64_t r0 = qb * block, r1 = std::min(N, r0 + block) - 1;
        const int64_t lo = std::max<int64_t>(0, r0 - left), hi = std::min(N - 1, r1 + right);
        for (int64_t kb = lo / block; kb <= hi / block; ++kb) kbs.push_back(static_cast<int32_t>(kb));
      },
      [&](int64_t, int64_t i, int64_t j) { return i >= first && j >= first && j >= i - left && j <= i + right; });
}

}  // namespace ab_band
