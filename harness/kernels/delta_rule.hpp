#pragma once
// The delta rule (DeltaNet) and its gated form (Gated DeltaNet). Per (batch, head), with a state
// S [dk, dv] (the transpose of the papers' S in R^{dv x dk}):
//   S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t      (causal)
// alpha_t = exp(g_t), g_t <= 0 one scalar per (head, step) (Gated DeltaNet), or alpha = 1 (DeltaNet),
// or one value per key dimension (Kimi Delta Attention: S_t = (I - beta_t k_t k_t^T) diag(alpha_t)
// S_{t-1} + beta_t k_t v_t^T). Equivalently S_t = diag(alpha_t) S_{t-1} + k_t u_t^T with the "new
// value" u_t = beta_t (v_t - (diag(alpha_t) S_{t-1})^T k_t).
//
// Chunked form (the WY / UT representation of Yang et al. 2024, flash-linear-attention's
// chunk_delta_rule). Inside a chunk of C positions, with b the chunk-local inclusive cumulative sum
// of g, gamma = exp(b) (<= 1), D[t, s] = exp(b_t - b_s) (s <= t, <= 1) and S0 the state before it:
//   T  = (I + strict_tril(diag(beta) (K K^T o D)))^-1                               [C, C]
//   W  = -T diag(beta gamma) K,  U = T diag(beta) V                                 [C, dk], [C, dv]
//   U~ = U + W S0                      (the chunk's u_t, all at once)
//   O  = diag(gamma) Q S0 + (tril(Q K^T) o D) U~
//   S1 = gamma_last S0 + (diag(exp(b_last - b)) K)^T U~
// Everything but the state passing (two [C, dk] x [dk, dv] products per chunk) runs at once over
// all chunks as batched oneDNN GEMMs; the chunk-to-chunk recurrence runs as one batched GEMM over
// batch * heads per chunk. T comes from forward substitution (C^3 / 6 per chunk).
// Backward is hand-written: the forward quantities are recomputed from the inputs (nothing but q,
// k, v, beta and g is saved), then one reverse sweep over chunks gives the state gradients and
// everything else is batched GEMMs again (dT -> dM = -T^T dT T^T for the inverse). The gate gradient
// gathers d/db per position (every place a gamma or D appears) and sums it in reverse over the chunk.
// Per-key-dimension decays: gamma and exp(b_last - b) become diagonal matrices (Gamma Q, Gamma K
// instead of scalings), and K K^T o D, Q K^T o D become sum_j k_t[j] k_s[j] exp(b_t[j] - b_s[j]):
// O(C^2 dk) element-wise loops (one exp per term, every exponent <= 0) instead of GEMMs, forward
// and backward; the rest of the form is unchanged.
// Scratch: about twenty [B, H, N, max(dk, dv, C)] buffers and the chunk-start states
// [B, H, N / C, dk, dv], from the tracking allocator (the memory figures see them).
#include <cstdint>

#include "attnbench/autograd.hpp"
#include "attnbench/decode_state.hpp"

namespace ab {

struct DeltaRuleOptions {
  int64_t chunk = 64;    // chunk length C
  bool reverse = false;  // anti-causal: the scan runs from the last position to the first
};

// q, k: [B, H, N, dk], v: [B, H, N, dv], beta: [B, H, N] (in [0, 1] in the layers, any value
// works), log_alpha: [B, H, N] or [B, H, N, dk] (<= 0) or undefined (alpha = 1, plain DeltaNet)
//   -> o [B, H, N, dv].
// q and k are used as given (the layers L2-normalise them). Saves the inputs only.
Var delta_rule(const Var& q, const Var& k, const Var& v, const Var& beta, const Var& log_alpha,
               const DeltaRuleOptions& opt = {});

// Causal: the op itself. Bidirectional: the causal plus the anti-causal scan, summed (the token's
// own term counts in both; as gated_linear_attention_mix).
Var delta_rule_mix(const Var& q, const Var& k, const Var& v, const Var& beta, const Var& log_alpha,
                   const DeltaRuleOptions& opt, bool causal);

// The recurrent state for decoding: S [B, H, dk, dv].
class DeltaRuleState final : public DecodeState {
 public:
  DeltaRuleState(int64_t batch, int64_t heads, int64_t key_dim, int64_t value_dim);
  // q_t, k_t: [B, H, 1, dk], v_t: [B, H, 1, dv], beta_t: [B, H, 1], log_alpha_t: [B, H, 1],
  // [B, H, 1, dk] or undefined -> o_t [B, H, 1, dv]
  Tensor step(const Tensor& q_t, const Tensor& k_t, const Tensor& v_t, const Tensor& beta_t,
              const Tensor& log_alpha_t);
  int64_t bytes() const override { return s_.bytes(); }
  const Tensor& state() const { return s_; }

 private:
  int64_t batch_, heads_, dk_, dv_;
  Tensor s_;  // [B, H, dk, dv]
};

}  // namespace ab
