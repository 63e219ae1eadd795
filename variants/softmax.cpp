// softmax — exact multi-head softmax attention with the N x N score matrix materialised.
// Vaswani et al. 2017, "Attention Is All You Need". The reference every other variant is compared to.
// Time O(B H N^2 d); memory O(B H N^2) for the saved probabilities.
#include "attnbench/kernels/decode.hpp"
#include "attnbench/variant.hpp"
#include "kv_cache_attention.hpp"

namespace {

class Softmax final : public ab_kv_cache::KvCacheAttention {
 public:
  explicit Softmax(const ab::MixerConfig& cfg)
      : KvCacheAttention(cfg), dropout_(static_cast<float>(cfg.params.at("dropout").get<double>())) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s =
        ab::variant_spec("softmax", "dense", "exact softmax attention, N x N scores materialised (the reference)",
                         "Vaswani et al. 2017, Attention Is All You Need",
                         {ab::num_param("dropout", 0.0, "dropout on the attention probabilities", 0.0, 0.95)},
                         {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const bool dropout = a.params->at("dropout").get<double>() > 0;
      ab::Cost c;
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * N * D;  // projections + QK^T + PV
      // Saved for backward: scaled q, k, v and the merged heads (4 B N D floats), the
      // probabilities P (B H N^2), and P after dropout when dropout is on.
      c.activation_bytes = 4 * (4 * B * N * D + (dropout ? 2 : 1) * B * H * N * N);
      c.state_bytes = 4 * 2 * B * N * D;  // the KV cache
      // Peak (measured at the softmax backward): P, dP and dS (3 B H N^2; the recomputed dropout
      // mask needs no buffer), y, the scaled q, k, the gradient of x (already formed by the value
      // branch, which backward reaches first) and the gradients of Wo and Wv.
      c.peak_bytes = 4 * (3 * B * H * N * N + 4 * B * N * D + 2 * D * D);
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    ab::Var p = softmax_probabilities(q, k, ctx);  // [B, H, N, N]
    p = ab::dropout(p, dropout_, ab::RngStream(ctx.seed, ab::Purpose::dropout, ctx.step, ctx.layer, 1), ctx.training);
    return ab::matmul(p, v);
  }

  // Decoding with a KV cache: O(t d) per token after t tokens.
  ab::Tensor attend_cache(const ab::Tensor& q, const ab::KvCache& cache) override {
    return ab::softmax_attend_cached(q, cache, score_scale());
  }

 private:
  float dropout_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Softmax);
