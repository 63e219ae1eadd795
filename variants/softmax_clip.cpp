// softmax_clip — clipped softmax attention: P = clip((zeta - gamma) softmax(QK^T / sqrt(d)) + gamma, 0, 1).
// Bondarenko, Nagel, Blankevoort 2023, "Quantizable Transformers: Removing Outliers by Helping
// Attention Heads Do Nothing" (NeurIPS), eq. 4.1; as clipped_softmax() in
// qualcomm-ai-research/outlier-free-transformers (there `eta` is zeta). gamma < 0 lets a head give a
// key exactly 0 weight with finite logits (so it can "do nothing" without growing outliers); zeta > 1
// lets it give exactly 1. gamma = 0, zeta = 1 is plain softmax attention.
// Dense, N x N probabilities materialised (as `softmax`): time O(B H N^2 d), memory O(B H N^2).
// Masked keys (causal, padding) get probability 0 before the stretch, then gamma, then the clip: with
// gamma < 0 they stay exactly 0 (gamma > 0 is refused, it would leak weight onto masked keys).
// Capabilities: bidirectional, causal, padding mask, decode (KV cache, O(t d) per token).
#include <algorithm>
#include <cmath>
#include <vector>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"
#include "kv_cache_attention.hpp"

namespace {

class SoftmaxClip final : public ab_kv_cache::KvCacheAttention {
 public:
  explicit SoftmaxClip(const ab::MixerConfig& cfg)
      : KvCacheAttention(cfg),
        gamma_(static_cast<float>(cfg.params.at("gamma").get<double>())),
        zeta_(static_cast<float>(cfg.params.at("zeta").get<double>())) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "softmax_clip", "dense",
        "clipped softmax clip((zeta - gamma) softmax + gamma, 0, 1): heads can give exact 0 / 1 weights",
        "Bondarenko et al. 2023, Quantizable Transformers (clipped softmax)",
        {ab::num_param("gamma", -0.025, "stretch lower end (<= 0; 0 with zeta 1 = softmax)", -1.0, 0.0),
         ab::num_param("zeta", 1.0, "stretch upper end (>= 1)", 1.0, 2.0)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * N * D + 3 * B * H * N * N;  // + stretch and clip
      // Saved: scaled q, k, v and the merged heads (4 B N D), the softmax output, the stretched
      // weights (the clamp's input) and the clipped ones (PV's backward): 3 B H N^2.
      c.activation_bytes = 4 * (4 * B * N * D + 3 * B * H * N * N);
      c.state_bytes = 4 * 2 * B * N * D;  // the KV cache
      // Peak at the softmax backward: P, clipped P, their gradients and dS (4 B H N^2 at most
      // alive), y, q, k, the gradient of x and dWo, dWv.
      c.peak_bytes = 4 * (4 * B * H * N * N + 4 * B * N * D + 2 * D * D);
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    ab::Var p = softmax_probabilities(q, k, ctx);  // [B, H, N, N]
    if (gamma_ != 0.f || zeta_ != 1.f) p = ab::clamp(ab::add_scalar(ab::scale(p, zeta_ - gamma_), gamma_), 0.f, 1.f);
    return ab::matmul(p, v);
  }

  // q: [B, H, 1, d] -> [B, H, 1, d]: the clipped softmax of q against the whole cache.
  ab::Tensor attend_cache(const ab::Tensor& q, const ab::KvCache& cache) override {
    return ab::attend_cached(q, cache, score_scale(), [&](int64_t, float* w, int64_t L) {
      ab::softmax_in_place(w, L);
      for (int64_t j = 0; j < L; ++j)
        w[j] = std::clamp((zeta_ - gamma_) * w[j] + gamma_, 0.f, 1.f);
    });
  }

 private:
  float gamma_, zeta_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(SoftmaxClip);
