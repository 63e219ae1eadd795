#pragma once
// The key memory of Gated Slot Attention (Zhang et al. 2024, eq. 8-9): gated linear attention
// whose decay acts on the value side, one decay per slot. Per (batch, head), with m slots:
//   K~_t = diag(alpha_t) K~_{t-1} + s_t k_t^T   [m, dk],     o_t = K~_t q_t   [m]
// i.e. o_t[j] = sum_{u<=t} (q_t . k_u) s_u[j] exp(G_t[j] - G_u[j]), G the cumulative log alpha.
// ab::gated_linear_attention decays the key side (S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,
// o_t = S_t^T q_t): with the slots as its key its read contracts over the slots, so it cannot
// produce this one except as m heads of value width 1, each recomputing every q . k product.
//
// Computed as the sequential scan: O(N m dk) time (4 N m dk flops forward, fewer than a chunked
// form's N C dk + 4 N m dk), the state (16 KiB at m = dk = 64) stays in L1 and every inner loop
// runs over m or dk (vectorised, no horizontal sums in the forward). TBB over batch * head.
// Backward: dq by a forward sweep recomputing the states (dq_t = K~_t^T do_t); dk and ds by a
// reverse sweep of the state gradient P_t = do_t q_t^T + diag(alpha_{t+1}) P_{t+1} [m, dk]:
// dk_t = P_t^T s_t, ds_t = P_t k_t. The gate gradient needs no state: dG_t = do_t * o_t - s_t * ds_t
// (elementwise over the slots), dlog_alpha_t = sum_{u>=t} dG_u, summed in double.
// Saves q, k, s, log_alpha and the output o. The decays only shrink the state (alpha <= 1): no
// exponential of a cumulative gate is formed, nothing can overflow.
#include <cstdint>

#include "attnbench/autograd.hpp"
#include "attnbench/decode_state.hpp"

namespace ab {

// q, k: [B, H, N, dk], s: [B, H, N, m] (write strengths), log_alpha: [B, H, N, m] (<= 0)
//   -> o [B, H, N, m]. reverse: the anti-causal scan (K~_t = diag(alpha_t) K~_{t+1} + s_t k_t^T).
Var gated_slot_memory(const Var& q, const Var& k, const Var& s, const Var& log_alpha, bool reverse = false);

// Causal: the op. Bidirectional: the causal plus the anti-causal scan, summed (the token's own
// term counts in both, as gated_linear_attention_mix).
Var gated_slot_memory_mix(const Var& q, const Var& k, const Var& s, const Var& log_alpha, bool causal);

// The state for decoding: K~ [B, H, m, dk].
class GatedSlotMemoryState final : public DecodeState {
 public:
  GatedSlotMemoryState(int64_t batch, int64_t heads, int64_t slots, int64_t key_dim);
  // q_t, k_t: [B, H, 1, dk], s_t, log_alpha_t: [B, H, 1, m] -> o_t [B, H, 1, m]
  Tensor step(const Tensor& q_t, const Tensor& k_t, const Tensor& s_t, const Tensor& log_alpha_t);
  int64_t bytes() const override { return s_.bytes(); }

 private:
  int64_t batch_, heads_, m_, dk_;
  Tensor s_;  // [B, H, m, dk]
};

}  // namespace ab
