#pragma once
// Building blocks for decoding one token at a time (Mixer::begin_decode / decode_step).
#include <cstdint>
#include <functional>

#include "attnbench/decode_state.hpp"
#include "attnbench/tensor.hpp"

namespace ab {

// The keys and values of every token so far, for attention-style decoding (softmax with a KV
// cache, sigmoid attention, ...). Stored per (batch, head) as rows of d floats; capacity doubles
// as it fills, bytes() counts the tokens held (2 B H length d floats).
class KvCache final : public DecodeState {
 public:
  KvCache(int64_t batch, int64_t heads, int64_t head_dim);
  // k_t, v_t: [B, H, 1, d]
  void append(const Tensor& k_t, const Tensor& v_t);
  int64_t length() const { return length_; }
  // Row-major [length(), d] keys / values of sequence b, head h.
  const float* keys(int64_t b, int64_t h) const;
  const float* values(int64_t b, int64_t h) const;
  int64_t bytes() const override { return 2 * batch_ * heads_ * length_ * dim_ * 4; }

 private:
  void grow(int64_t capacity);
  int64_t batch_, heads_, dim_, length_ = 0, capacity_ = 0;
  Tensor k_, v_;  // [B, H, capacity, d]
};

// Attention of one query per (batch, head) over the cache with weights of the caller's choosing:
// q_t [B, H, 1, d] -> o_t [B, H, 1, d], o = sum_j w_j v_j, where weigh(bh, w, L) turns the scores
// w_j = scale q . k_j (j < L = cache.length(), bh = b H + h) into the weights, in place. Called
// from several threads at once (one bh each).
Tensor attend_cached(const Tensor& q_t, const KvCache& cache, float scale,
                     const std::function<void(int64_t bh, float* w, int64_t L)>& weigh);

// w[0, n) <- softmax(w[0, n)), stable (the largest score subtracted first).
void softmax_in_place(float* w, int64_t n);

// Exact softmax attention of one query per (batch, head) over the cache:
// q_t [B, H, 1, d] -> o_t [B, H, 1, d], o = softmax(scale * q K^T) V.
Tensor softmax_attend_cached(const Tensor& q_t, const KvCache& cache, float scale);

// The running state of causal kernelised attention (linear_elu, performer, cosformer, based, ...):
// per (batch, head) S = sum_j phi(k_j) v_j^T [m, dv] and z = sum_j phi(k_j) [m].
class LinearAttentionState final : public DecodeState {
 public:
  LinearAttentionState(int64_t batch, int64_t heads, int64_t feature_dim, int64_t value_dim);
  // phi_q, phi_k: [B, H, 1, m], v: [B, H, 1, dv] -> [B, H, 1, dv]. Adds phi_k v^T to S and phi_k to
  // z, then reads out phi_q^T S / (phi_q^T z + eps), 0 where the denominator is exactly 0 (as
  // ab::linear_attention does).
  Tensor step(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v, float eps);
  int64_t bytes() const override { return s_.bytes() + z_.bytes(); }

 private:
  int64_t batch_, heads_, m_, dv_;
  Tensor s_, z_;  // [B, H, m, dv], [B, H, m]
};

}  // namespace ab
