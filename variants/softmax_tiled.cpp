// softmax_tiled — exact softmax attention computed tile by tile with an online softmax over key
// blocks, never materialising the N x N scores (the FlashAttention scheme).
// Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness";
// backward as in Dao 2023, "FlashAttention-2" (probabilities recomputed from the per-row
// log-sum-exp).
// Time O(B H N^2 d) (backward recomputes the scores: 5 tile GEMMs instead of 4 saved ones);
// memory O(B N D): q, k, v, the output and one log-sum-exp per query row are kept for backward.
// Capabilities: causal (fully masked key tiles skipped), bidirectional, key-padding mask.
// precision=bf16 rounds the tile products' inputs to bfloat16 (fp32 sums; relative error ~3e-3,
// `bench --fidelity` reports it against fp32).
// Same projections and initialisation as `softmax`, so both give the same outputs for a seed (up to
// fp32 rounding). Caveats: no attention dropout; a query row whose keys are all padding outputs 0
// (the dense variant would give NaN there).
#include <cmath>
#include <string>

#include "attnbench/kernels/flash_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class SoftmaxTiled final : public ab::AttentionMixer {
 public:
  explicit SoftmaxTiled(const ab::MixerConfig& cfg) : AttentionMixer(cfg) {
    opt_.block_q = cfg.params.at("block_q").get<int64_t>();
    opt_.block_k = cfg.params.at("block_k").get<int64_t>();
    opt_.bwd_block_q = cfg.params.at("bwd_block_q").get<int64_t>();
    opt_.bwd_block_k = cfg.params.at("bwd_block_k").get<int64_t>();
    opt_.bf16 = cfg.params.at("precision").get<std::string>() == "bf16";
    if (opt_.bf16 && !ab::flash_attention_has_bf16())
      throw ab::UsageError(
          "softmax_tiled: variant.precision=bf16 needs a CPU with AVX512_BF16 (vdpbf16ps), and this one has none "
          "(or the build has no AVX-512); use variant.precision=fp32");
  }

  static ab::VariantSpec spec() {
    const ab::FlashAttentionOptions def;
    ab::VariantSpec s = ab::variant_spec(
        "softmax_tiled", "dense",
        "exact softmax attention with an online softmax over key tiles, O(N) memory (FlashAttention)",
        "Dao et al. 2022, FlashAttention; Dao 2023, FlashAttention-2",
        {
            ab::int_param("block_q", def.block_q, "forward tile: query rows per work item", 1, 4096),
            ab::int_param("block_k", def.block_k, "forward tile: keys per online-softmax step", 1, 8192),
            ab::int_param("bwd_block_q", def.bwd_block_q, "backward tile: query rows", 1, 4096),
            ab::int_param("bwd_block_k", def.bwd_block_k, "backward tile: keys per work item step", 1, 8192),
            ab::enum_param("precision", "fp32", {"fp32", "bf16"},
                           "inputs of the tile products (QK^T, PV and the backward's three): fp32, or bf16 with fp32 "
                           "accumulation (AVX512_BF16); softmax and accumulators stay fp32"),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      // projections + QK^T + PV; causal: the N (N + 1) / 2 visible pairs (the kernel skips fully
      // masked tiles, so counting N^2 would put a causal run above its roofline)
      const double pairs = a.causal ? N * (N + 1) / 2 : N * N;
      c.flops = 2 * B * N * D * D * 4 + 4 * B * pairs * D;
      // Saved for backward: q, k, v and the output O per head, the merged heads (input of the
      // output projection), 5 B N D floats, and one log-sum-exp per query row and head (B H N).
      c.activation_bytes = 4 * (5 * B * N * D + B * H * N);
      // Peak in the tiled backward: y, q, k, v, O, the upstream gradient per head, dq, dk, dv
      // (9 B N D), the log-sum-exp and dWo; the tiles' scores are per-thread scratch.
      c.peak_bytes = 4 * (9 * B * N * D + B * H * N + D * D);
      return c;
    };
    // The conformance checks run at N = 8: small tiles so that several query and key tiles, the
    // online rescaling and the causal tile skipping are all exercised.
    s.check_params = {{"block_q", 3}, {"block_k", 4}, {"bwd_block_q", 3}, {"bwd_block_k", 2}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
    return ab::flash_attention(q, k, v, scale, ctx.causal, ctx.key_mask, opt_);
  }

 private:
  ab::FlashAttentionOptions opt_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(SoftmaxTiled);
