#pragma once
// Exact softmax attention with an online softmax over key blocks (the FlashAttention scheme):
// no N x N buffer exists at any time. Forward keeps q, k, v, the output O and one log-sum-exp per
// query row; backward recomputes the probabilities tile by tile from them (FlashAttention-2).
//
//   O[b,h,i,:] = sum_j softmax_j(scale * q[b,h,i,:] . k[b,h,j,:] + mask[b,j] (+ causal)) v[b,h,j,:]
//
// Shapes: q [B, H, Nq, d]; k, v [B, H, Nk, d]; key_mask additive [B, 1, 1, Nk] (0 keep, -inf drop;
// any finite value is added as a bias) or null; O [B, H, Nq, d]; lse [B, H, Nq].
// An optional per-head key bias kb [B, H, Nk] (natural-log units) is added to every score of key j:
// S_ij + kb[b,h,j] (the Forgetting Transformer's forget bias -c_j; its per-row term c_i cancels in
// the softmax). It is differentiable: d kb_j = sum_i dS_ij.
// Causal (requires Nq == Nk): query i sees keys j <= i. A query row that sees no key at all (every
// key masked) gets O = 0, lse = +inf and zero gradients, never NaN.
// Threads: TBB over (batch*head, query block) in forward; over (batch*head, key-block group) in
// backward with per-group dQ partials summed in a fixed order. Results are identical for a given
// thread count (forward: for any thread count).
#include <cstdint>

#include "attnbench/autograd.hpp"

namespace ab {

struct FlashAttentionOptions {
  int64_t block_q = 128;      // forward tile: query rows
  int64_t block_k = 512;      // forward tile: keys
  int64_t bwd_block_q = 128;  // backward tile: query rows
  int64_t bwd_block_k = 128;  // backward tile: keys
  // Use the portable loop kernels even where AVX-512 is available (for tests and comparisons).
  bool portable = false;
  // Tile products (all GEMMs of forward and backward) with bfloat16 inputs and fp32 accumulation
  // (AVX512_BF16 vdpbf16ps); softmax, exp and the accumulators stay fp32. Needs
  // flash_attention_has_bf16(), else std::invalid_argument. Block sizes are rounded up to even.
  bool bf16 = false;
};

// Differentiable in q, k and v (not in the mask). Returns [B, H, Nq, d].
Var flash_attention(const Var& q, const Var& k, const Var& v, float scale, bool causal,
                    const Tensor* key_mask = nullptr, const FlashAttentionOptions& opt = {});
// The same with the per-head key bias kb [B, H, Nk], differentiable in q, k, v and kb.
Var flash_attention_key_bias(const Var& q, const Var& k, const Var& v, const Var& key_bias, float scale, bool causal,
                             const Tensor* key_mask = nullptr, const FlashAttentionOptions& opt = {});

// ---- raw kernels (no autograd), for benchmarks and for fused ops built on top ----
struct FlashShape {
  int64_t batch = 1, heads = 1, q_len = 1, k_len = 1, head_dim = 1;
};

// q [B,H,Nq,d], k, v [B,H,Nk,d], key_mask [B or 1, Nk] (additive) or null -> o [B,H,Nq,d] and
// lse [B,H,Nq] (natural log of the softmax denominator of the scaled, masked scores).
void flash_attention_forward(const FlashShape& s, const float* q, const float* k, const float* v,
                             const float* key_mask, int64_t mask_batch, float scale, bool causal, float* o,
                             float* lse, const FlashAttentionOptions& opt = {}, const float* key_bias = nullptr);

// From the forward's q, k, v, o, lse and the output gradient dout [B,H,Nq,d]: dq [B,H,Nq,d] and
// dk, dv [B,H,Nk,d] (overwritten); with key_bias [B,H,Nk] also d_key_bias [B,H,Nk] (overwritten; may
// be null when not wanted).
void flash_attention_backward(const FlashShape& s, const float* q, const float* k, const float* v,
                              const float* key_mask, int64_t mask_batch, float scale, bool causal, const float* o,
                              const float* lse, const float* dout, float* dq, float* dk, float* dv,
                              const FlashAttentionOptions& opt = {}, const float* key_bias = nullptr,
                              float* d_key_bias = nullptr);

// Whether this build has the AVX-512 micro-kernels (else every call uses the portable kernels).
bool flash_attention_has_avx512();
// Whether the bf16 tile products can run: this build has them and this CPU has AVX512_BF16.
bool flash_attention_has_bf16();

}  // namespace ab
