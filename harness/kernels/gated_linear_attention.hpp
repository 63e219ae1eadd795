#pragma once
// Gated (decayed) linear attention, the shared recurrence of RetNet, GLA and Mamba-2/SSD
// (P3 in the variant notes). Per (batch, head), with a state S [dk, dv]:
//   S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t            (causal)
// The decay is given in log space, log_alpha <= 0, either as one scalar per (head, step)
// [B, H, N] (RetNet's constant gamma_h, Mamba-2's Delta_t A_h) or one value per key dimension
// [B, H, N, dk] (GLA). Equivalently o_t = sum_{s<=t} (sum_i q_t[i] k_s[i] exp(G_t[i] - G_s[i])) v_s
// with G the cumulative sum of log_alpha.
//
// Three forms, equal to float tolerance:
//  * recurrent: the sequential scan above, O(N dk dv) time, O(dk dv) memory per (batch, head).
//  * parallel:  the masked quadratic form with the decay matrix exp(G_t - G_s) (s <= t, differences
//               of double-precision cumulative sums, never exp(G) alone), O(N^2 dk) time and an
//               [N, N] score buffer per running (batch, head) task — a reference.
//  * chunked:   (the production form) chunks of C positions; inside a chunk a masked quadratic
//               form with decays relative to the chunk start (exp(b_t - b_s), b local cumulative
//               log decays, always <= 1), between chunks the state is passed on:
//               o_t += (q_t * exp(b_t))^T S_prev, S_next = diag(exp(b_last)) S_prev +
//               sum_s (k_s * exp(b_last - b_s)) v_s^T. O(N C dk + N dk dv) time. Per-key-dimension
//               decays use sub-blocks of 16 positions inside a chunk (fla's secondary chunking):
//               pairwise decays inside a sub-block, and for earlier positions the factorisation
//               exp(b_t - b_s) = exp(b_t - b_r) exp(b_r - b_s) at the sub-block boundary r (both <= 1).
// Backward (every form): dq by a forward sweep (recomputing the states), dk and dv by a reverse
// sweep of the state gradient dS_{t} = diag(alpha_{t+1}) dS_{t+1} + q_t do_t^T; nothing but the
// inputs is saved (no per-chunk states). The gate gradient follows from dq and dk alone:
//   dG_t = q_t * dq_t - k_t * dk_t,  dlog_alpha_t = sum_{u >= t} dG_u   (summed over dk for scalar
// decays), a reverse cumulative sum in double (as flash-linear-attention computes dg).
// Scalar decays in the chunked form with q, k shared by every head (Mamba-2) or one per head
// (RetNet) run as the SSD algorithm of Mamba-2: every product (the chunks' q k^T blocks, their
// masked products with v, the chunk states and their readout, and the backward's counterparts)
// is a batched oneDNN matmul over chunks (and heads), in fp32 whatever the matmul precision; the
// states of all heads side by side when q, k are shared, so one q k^T block serves every head.
// Per-key-dimension decays and the other forms: hand-written loops, TBB over batch * head.
#include <cstdint>
#include <string>

#include "attnbench/autograd.hpp"
#include "attnbench/decode_state.hpp"

namespace ab {

enum class GlaForm { chunked, parallel, recurrent };

struct GatedLinearAttentionOptions {
  GlaForm form = GlaForm::chunked;
  int64_t chunk = 64;    // chunk length of the chunked form
  bool reverse = false;  // anti-causal: the scan runs from the last position to the first
                         // (S_t = diag(alpha_t) S_{t+1} + k_t v_t^T); forward + reverse gives a
                         // bidirectional mixer (the t = s term then appears in both)
};

// q: [B, Hq, N, dk], k: [B, Hk, N, dk] with Hq, Hk in {1, H} (1 = shared by every head, as
// Mamba-2's C and B), v: [B, H, N, dv], log_alpha: [B, H, N] or [B, H, N, dk] (values <= 0)
//   -> o [B, H, N, dv]
// Saves q, k, v and log_alpha only.
Var gated_linear_attention(const Var& q, const Var& k, const Var& v, const Var& log_alpha,
                           const GatedLinearAttentionOptions& opt = {});

// Causal: the op itself. Bidirectional: the causal scan plus the anti-causal scan, summed (the
// token's own term k_t v_t^T counts in both; the variants document this choice).
Var gated_linear_attention_mix(const Var& q, const Var& k, const Var& v, const Var& log_alpha,
                               const GatedLinearAttentionOptions& opt, bool causal);

// "chunked" | "parallel" | "recurrent" (UsageError otherwise).
GlaForm gla_form_from_string(const std::string& name);

// Elementwise helpers for the gates (they save x):
//   log_sigmoid(x) = log(1 / (1 + exp(-x))) * scale   (GLA's gate, scale = 1 / tau)
//   softplus(x)    = log(1 + exp(x))                  (Mamba-2's step size)
// Both save x.
Var log_sigmoid(const Var& x, float scale = 1.f);
Var softplus(const Var& x);

// The recurrent state for decoding: S [B, H, dk, dv].
class GatedLinearState final : public DecodeState {
 public:
  GatedLinearState(int64_t batch, int64_t heads, int64_t key_dim, int64_t value_dim);
  // q_t: [B, Hq, 1, dk], k_t: [B, Hk, 1, dk] (Hq, Hk in {1, H}), v_t: [B, H, 1, dv],
  // log_alpha_t: [B, H, 1] or [B, H, 1, dk] -> o_t [B, H, 1, dv]
  Tensor step(const Tensor& q_t, const Tensor& k_t, const Tensor& v_t, const Tensor& log_alpha_t);
  int64_t bytes() const override { return s_.bytes(); }
  const Tensor& state() const { return s_; }

 private:
  int64_t batch_, heads_, dk_, dv_;
  Tensor s_;  // [B, H, dk, dv]
};

}  // namespace ab
