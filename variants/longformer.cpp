// longformer — sliding window + global tokens: token i attends to the `window` keys around it
// (ceil(w/2) to the left including i, floor(w/2) to the right, as in LRA) and to the first
// `global_tokens` positions (CLS); the global tokens attend to every key.
//   A(i) = {all j}                                  for i < g
//   A(i) = {j : i - ceil(w/2) < j <= i + floor(w/2)} U {j < g}   otherwise
// Reference: Beltagy et al. 2020, Longformer: The Long-Document Transformer; LRA
// `longformer_attention.py` (sliding_window_size = 512, global = CLS), xformers PR #192.
// Kernel: three disjoint segments of one joint softmax — the band (block-sparse tiles of `block`,
// element mask on the ragged edges, global rows and columns excluded), the global rows against
// every key, and every other row against the global keys — so the globals cost O(N g d), not whole
// tiles. Time O(B H N (w + b + 2 g) d); memory O(B N D + B H N) saved for backward.
// Capabilities: bidirectional; causal (pattern AND j <= i: the global tokens are a prefix, so they
// stay visible to every later token, and they see only their own past); key padding.
// Caveats: no dilation, no per-head windows; the global tokens are always the first g positions
// (LRA's optional global mask marks CLS, which is position 0 here).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"
#include "band_segment.hpp"

namespace {

ab::SparsePattern longformer_pattern(int64_t N, int64_t window, int64_t globals, int64_t block) {
  const int64_t left = (window + 1) / 2 - 1, right = window / 2, g = std::min(globals, N);
  ab::SparsePattern p;
  p.length = N;
  const auto bounds = ab::uniform_bounds(N, block);
  p.segments.push_back(ab_band::band_segment(N, left, right, block, g));  // band among the non-global tokens
  if (g > 0) {
    std::vector<int64_t> glob(static_cast<size_t>(g)), rest(static_cast<size_t>(N - g));
    std::iota(glob.begin(), glob.end(), 0);
    std::iota(rest.begin(), rest.end(), g);
    const auto all_blocks = [](int64_t nkb) {
      return [nkb](int64_t, int64_t, std::vector<int32_t>& kbs) {
        for (int64_t kb = 0; kb < nkb; ++kb) kbs.push_back(static_cast<int32_t>(kb));
      };
    };
    // Global rows see every key.
    p.segments.push_back(ab::build_segment(N, {glob, {}, ab::uniform_bounds(g, block), bounds}, 1,
                                           all_blocks(static_cast<int64_t>(bounds.size()) - 1)));
    // Every other row sees the global keys.
    if (g < N) {
      const auto gb = ab::uniform_bounds(g, block);
      p.segments.push_back(ab::build_segment(N, {rest, glob, ab::uniform_bounds(N - g, block), gb}, 1,
                                             all_blocks(static_cast<int64_t>(gb.size()) - 1)));
    }
  }
  return p;
}

class Longformer final : public ab::AttentionMixer {
 public:
  explicit Longformer(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        window_(cfg.params.at("window").get<int64_t>()),
        globals_(cfg.params.at("global_tokens").get<int64_t>()),
        block_(cfg.params.at("block").get<int64_t>()) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "longformer", "sparse",
        "sliding window + global tokens (the first g positions) attending to and from everything",
        "Beltagy et al. 2020, Longformer: The Long-Document Transformer",
        {ab::int_param("window", 512,
                       "keys per query in the band: ceil(w/2) to the left including the token, floor(w/2) to the "
                       "right (LRA 512)",
                       1, 1e9),
         ab::int_param("global_tokens", 1, "global tokens: the first g positions (1 = CLS; 0 = none)", 0, 1e9),
         ab::int_param("block", 64, "kernel tile in tokens (speed only)", 1, 4096)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const auto p = longformer_pattern(a.length, a.params->at("window").get<int64_t>(),
                                        a.params->at("global_tokens").get<int64_t>(), a.params->at("block").get<int64_t>());
      return ab::block_sparse_mixer_cost(p, a, a.causal);
    };
    s.check_params = {{"window", 3}, {"global_tokens", 1}, {"block", 2}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    auto pattern = cache_.get(N, [&] { return longformer_pattern(N, window_, globals_, block_); });
    return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)), ctx.causal,
                                      ctx.key_mask);
  }

 private:
  int64_t window_, globals_, block_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Longformer);
