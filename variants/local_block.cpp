// local_block — block-local attention: the sequence is cut into non-overlapping blocks of `block`
// tokens and every token attends to the keys of its own block only.
// Reference: the "Local Attention" baseline of Tay et al. 2021, Long Range Arena (LRA code
// `lra_benchmarks/models/local`); also xformers PR #192 `block_noglobal`.
// Time O(B H N b d) (only the diagonal blocks are computed); memory O(B N D + B H N) saved for
// backward (q, k, v, O, merged heads, log-sum-exp): no N x N and no N x b buffer.
// Capabilities: bidirectional; causal (prefix of the own block); key padding.
// Caveats: LRA used block 50 on text/ListOps and 64 on image/Pathfinder; the default here is 64.
// When `block` does not divide N the last block is shorter (LRA pads and masks instead: same
// result). A query whose whole block is padding outputs 0.
#include <cmath>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class LocalBlock final : public ab::AttentionMixer {
 public:
  explicit LocalBlock(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), block_(cfg.params.at("block").get<int64_t>()) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "local_block", "sparse", "non-overlapping blocks attend within themselves (LRA local attention)",
        "Tay et al. 2021, Long Range Arena (local attention baseline)",
        {ab::int_param("block", 64, "block length in tokens (LRA: 50 text/ListOps, 64 image/Pathfinder)", 1, 65536)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const auto p = ab::block_diagonal_pattern(a.length, a.params->at("block").get<int64_t>());
      return ab::block_sparse_mixer_cost(p, a, a.causal);
    };
    s.check_params = {{"block", 4}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    auto pattern = cache_.get(N, [&] { return ab::block_diagonal_pattern(N, block_); });
    return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)), ctx.causal,
                                      ctx.key_mask);
  }

 private:
  int64_t block_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(LocalBlock);
