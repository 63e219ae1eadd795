// local_window — sliding-window attention: token i attends to the `window` keys around it,
//   j in [i - (ceil(w/2) - 1), i + floor(w/2)]   (w keys in total: ceil(w/2) to the left including
//   i itself, floor(w/2) to the right — the LRA Longformer convention).
// Reference: Beltagy et al. 2020 (the sliding-window part of Longformer); LRA local attention;
// xformers `local` (window_size), zoology `slide_attn`.
// Kernel: block-sparse over the band of `block` x `block` tiles that meet the window, with an element
// mask on the ragged edges (only the band is computed, ~ (w + block) keys per query).
// Time O(B H N (w + b) d); memory O(B N D + B H N) saved for backward (no N x N buffer).
// Capabilities: bidirectional; causal = the window intersected with j <= i (ceil(w/2) keys: the
// past half; use twice the window for w past keys); key padding.
// Caveats: window >= 2N - 1 covers every key, i.e. equals dense softmax attention.
#include <algorithm>
#include <cmath>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"
#include "band_segment.hpp"

namespace {

ab::SparsePattern local_window_pattern(int64_t N, int64_t window, int64_t block) {
  const int64_t left = (window + 1) / 2 - 1, right = window / 2;
  ab::SparsePattern p;
  p.length = N;
  p.segments.push_back(ab_band::band_segment(N, left, right, block));
  return p;
}

class LocalWindow final : public ab::AttentionMixer {
 public:
  explicit LocalWindow(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        window_(cfg.params.at("window").get<int64_t>()),
        block_(cfg.params.at("block").get<int64_t>()) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "local_window", "sparse", "sliding window of `window` keys around each token (block-sparse band kernel)",
        "Beltagy et al. 2020, Longformer (sliding window); Tay et al. 2021, LRA local attention",
        {ab::int_param("window", 128,
                       "keys per query in total: ceil(w/2) to the left including the token, floor(w/2) to the right", 1,
                       1e9),
         ab::int_param("block", 64, "kernel tile in tokens (speed only: results are the same for any block)", 1, 4096)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const auto p = local_window_pattern(a.length, a.params->at("window").get<int64_t>(),
                                          a.params->at("block").get<int64_t>());
      return ab::block_sparse_mixer_cost(p, a, a.causal);
    };
    s.check_params = {{"window", 4}, {"block", 2}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    auto pattern = cache_.get(N, [&] { return local_window_pattern(N, window_, block_); });
    return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)), ctx.causal,
                                      ctx.key_mask);
  }

 private:
  int64_t window_, block_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(LocalWindow);
