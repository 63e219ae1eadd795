// bigbird — block window + random blocks + global blocks (BigBird ITC). With blocks of `block`
// tokens and nb = ceil(N / block) blocks:
//   global blocks G: the first block (global_blocks >= 1) and the last (global_blocks = 2);
//   query block q in G sees every key block;
//   any other q sees {q-1, q, q+1} U G U R_h(q), R_h(q) = `random_blocks` blocks drawn without
//   replacement from the blocks not already listed (per head, per query block).
// Reference: Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences; LRA
// `bigbird_attention.py` (block 64, 3 random blocks, first/last global).
// Randomness: the random blocks are fixed per layer (like LRA, which draws them once at trace
// time): RngStream(seed, Purpose::mixer, layer, head, query block) of the MixerConfig, so not
// stochastic across steps; the same seed and layer give the same pattern.
// Kernel: block-sparse, every listed block is whole (no element masks).
// Time O(B H N (3 + r + g) b d) (global rows: O(g b N d)); memory O(B N D + B H N) saved for backward.
// Capabilities: bidirectional; causal = pattern AND j <= i, with the random blocks drawn from the
// past blocks only (so each query still gets r of them when available); key padding.
// Caveats: the causal form is not in the paper (BigBird is an encoder design): the last global block
// is then in everyone's future, and only the first acts as a global prefix.
#include <algorithm>
#include <cmath>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/variant.hpp"

namespace {

struct BigBirdShape {
  int64_t block, random_blocks, global_blocks, heads;
  uint64_t seed;
  int layer;
};

ab::SparsePattern bigbird_pattern(int64_t N, const BigBirdShape& s, bool causal) {
  const auto bounds = ab::uniform_bounds(N, s.block);
  const int64_t nb = static_cast<int64_t>(bounds.size()) - 1;
  auto is_global = [&](int64_t b) { return (s.global_blocks >= 1 && b == 0) || (s.global_blocks >= 2 && b == nb - 1); };
  ab::SparsePattern p;
  p.length = N;
  std::vector<int32_t> candidates;
  p.segments.push_back(ab::build_segment(
      N, {{}, {}, bounds, bounds}, s.heads, [&](int64_t h, int64_t qb, std::vector<int32_t>& kbs) {
        if (is_global(qb)) {
          for (int64_t kb = 0; kb < nb; ++kb) kbs.push_back(static_cast<int32_t>(kb));
          return;
        }
        for (int64_t kb = std::max<int64_t>(0, qb - 1); kb <= std::min(nb - 1, qb + 1); ++kb)
          kbs.push_back(static_cast<int32_t>(kb));
        for (int64_t kb = 0; kb < nb; ++kb)
          if (is_global(kb)) kbs.push_back(static_cast<int32_t>(kb));
        candidates.clear();
        for (int64_t kb = 0; kb < (causal ? qb : nb); ++kb)
          if (!is_global(kb) && std::abs(kb - qb) > 1) candidates.push_back(static_cast<int32_t>(kb));
        // Partial Fisher-Yates: the first `take` candidates become a uniform draw without replacement.
        ab::RngStream rng(s.seed, ab::Purpose::mixer, static_cast<uint64_t>(s.layer), static_cast<uint64_t>(h),
                          static_cast<uint64_t>(qb));
        const int64_t take = std::min<int64_t>(s.random_blocks, static_cast<int64_t>(candidates.size()));
        for (int64_t t = 0; t < take; ++t) {
          const int64_t pick = t + static_cast<int64_t>(rng.below(candidates.size() - static_cast<size_t>(t)));
          std::swap(candidates[static_cast<size_t>(t)], candidates[static_cast<size_t>(pick)]);
          kbs.push_back(candidates[static_cast<size_t>(t)]);
        }
      }));
  return p;
}

class BigBird final : public ab::AttentionMixer {
 public:
  explicit BigBird(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        shape_{cfg.params.at("block").get<int64_t>(), cfg.params.at("random_blocks").get<int64_t>(),
               cfg.params.at("global_blocks").get<int64_t>(), cfg.heads, cfg.seed, cfg.layer} {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "bigbird", "sparse",
        "block window (3 blocks) + random blocks (fixed per layer and head) + first/last global blocks",
        "Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences",
        {ab::int_param("block", 64, "block length in tokens (LRA 64)", 1, 65536),
         ab::int_param("random_blocks", 3, "random key blocks per query block (LRA 3)", 0, 1e6),
         ab::int_param("global_blocks", 2, "global blocks: 0 none, 1 the first, 2 the first and the last", 0, 2)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const BigBirdShape shape{a.params->at("block").get<int64_t>(), a.params->at("random_blocks").get<int64_t>(),
                               a.params->at("global_blocks").get<int64_t>(), a.heads, 0, 0};
      const auto p = bigbird_pattern(a.length, shape, a.causal);
      return ab::block_sparse_mixer_cost(p, a, a.causal);
    };
    // Blocks of one token at N = 8 leave room for random blocks beside the window and the globals.
    s.check_params = {{"block", 1}, {"random_blocks", 2}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    auto pattern = cache_.get(2 * N + (ctx.causal ? 1 : 0), [&] { return bigbird_pattern(N, shape_, ctx.causal); });
    return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)), ctx.causal,
                                      ctx.key_mask);
  }

 private:
  BigBirdShape shape_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(BigBird);
