#pragma once
// The generalised delta rule with a diagonal-plus-low-rank transition (DPLR; RWKV-7 "Goose").
// Per (batch, head), with a state S [dk, dv] (the transpose of RWKV-7's S in R^{dv x dk}):
//   S_t = (diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t                 (causal)
// w_t = exp(g_t), g_t <= 0 one log decay per key dimension. RWKV-7 uses a = -kk, b = kk * a_lr
// (kk the L2-normalised removal key, a_lr the in-context learning rate); the delta rule is the case
// w = 1, a = -beta k, b = k, with k beta-scaled in the k v^T term (tested against ab::delta_rule).
//
// Chunked form. Inside a chunk of C positions, with G_t the chunk-local inclusive cumulative sum of
// g (G_{-1} = 0), S0 the state before the chunk and u_t = S_{t-1}^T a_t (what the low-rank term
// reads from the state):
//   A_ab[t, s] = sum_j a_t[j] b_s[j] exp(G_{t-1}[j] - G_s[j]),  A_ak likewise with k_s   (s < t)
//   Q_b[t, s]  = sum_j q_t[j] b_s[j] exp(G_t[j] - G_s[j]),      Q_k likewise with k_s    (s <= t)
//   U = (I - A_ab)^-1 (A~ S0 + A_ak V),   A~ = a o exp(G_{t-1})          (the UT transform)
//   O = Q~ S0 + Q_b U + Q_k V,            Q~ = q o exp(G_t)
//   S1 = diag(exp(G_last)) S0 + B^^T U + K^^T V,  B^_s = b_s o exp(G_last - G_s), K^ likewise
// Every exponent is <= 0 (decays relative to the chunk start, pairwise ones as running products of
// w), so any g <= 0 is safe. The pairwise matrices cost O(C dk) per position; the state products
// (A~ S0, Q~ S0, the rank-C state update) O(dk dv); the inverse is a forward substitution.
// Backward is hand-written: nothing but the inputs is saved; it recomputes the chunk-start states
// in one forward sweep, then one reverse sweep recomputes each chunk and propagates the state
// gradient. Parallel (TBB) over batch * heads; scratch: the chunk-start states [B, H, N / C, dk, dv]
// from the tracking allocator (backward only) plus O(C (C + dk + dv)) per task.
#include <cstdint>

#include "attnbench/autograd.hpp"
#include "attnbench/decode_state.hpp"

namespace ab {

struct DplrDeltaRuleOptions {
  int64_t chunk = 16;    // chunk length C
  bool reverse = false;  // anti-causal: the scan runs from the last position to the first
};

// q, k, a, b, log_w: [B, H, N, dk], v: [B, H, N, dv] -> o [B, H, N, dv]. log_w <= 0 (not checked:
// a positive log decay is a growing state). Saves the inputs only.
Var dplr_delta_rule(const Var& q, const Var& k, const Var& v, const Var& a, const Var& b, const Var& log_w,
                    const DplrDeltaRuleOptions& opt = {});

// The recurrent state for decoding: S [B, H, dk, dv].
class DplrDeltaRuleState final : public DecodeState {
 public:
  DplrDeltaRuleState(int64_t batch, int64_t heads, int64_t key_dim, int64_t value_dim);
  // q_t, k_t, a_t, b_t, log_w_t: [B, H, 1, dk], v_t: [B, H, 1, dv] -> o_t [B, H, 1, dv]
  Tensor step(const Tensor& q_t, const Tensor& k_t, const Tensor& v_t, const Tensor& a_t, const Tensor& b_t,
              const Tensor& log_w_t);
  int64_t bytes() const override { return s_.bytes(); }
  const Tensor& state() const { return s_; }

 private:
  int64_t batch_, heads_, dk_, dv_;
  Tensor s_;  // [B, H, dk, dv]
};

}  // namespace ab
