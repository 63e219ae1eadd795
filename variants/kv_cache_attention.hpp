#pragma once
// Attention mixers that decode over a KV cache of every token so far (softmax, sigmoid,
// softmax_clip, softmax_gate): attend_step appends the step's keys and values to the cache and
// hands the query and the cache to the variant's attend_cache. O(t d) per token after t tokens.
// Their full-sequence forms share the scaled N x N scores.
#include <cmath>
#include <memory>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/variant.hpp"

namespace ab_kv_cache {

class KvCacheAttention : public ab::AttentionMixer {
 public:
  using ab::AttentionMixer::AttentionMixer;

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<ab::KvCache>(batch, heads_, head_dim_);
  }
  // q, k, v: [B, H, 1, d] -> [B, H, 1, d]
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& cache = static_cast<ab::KvCache&>(state);
    cache.append(k, v);
    return attend_cache(q, cache);
  }

 protected:
  // q [B, H, 1, d] against the keys and values of every token so far, this one's included -> [B, H, 1, d]
  virtual ab::Tensor attend_cache(const ab::Tensor& q, const ab::KvCache& cache) = 0;

  // 1 / sqrt(d), the score scale of the whole family (decode included).
  float score_scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim_)); }
  // q, k [B, H, N, d] -> q k^T / sqrt(d) [B, H, N, N]; scaling q (N d) is cheaper than scaling the
  // scores (N^2).
  ab::Var scaled_scores(const ab::Var& q, const ab::Var& k) const {
    return ab::matmul(ab::scale(q, score_scale()), k, false, true);
  }
  // -> softmax over the keys of the scaled scores under the context's causal / padding mask
  // [B, H, N, N], materialised.
  ab::Var softmax_probabilities(const ab::Var& q, const ab::Var& k, const ab::MixerContext& ctx) const {
    const ab::Tensor mask = ab::additive_mask(ctx, q.dim(2));  // [B, 1, N, N], [N, N] or [B, 1, 1, N]
    return ab::softmax(scaled_scores(q, k), mask.defined() ? &mask : nullptr);
  }
};

}  // namespace ab_kv_cache
