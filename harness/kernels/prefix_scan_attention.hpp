#pragma once
// Fused prefix-scan ops for the linear and normalised attention family (aaren, transnormer,
// flowformer), each with a hand-written backward that captures only what it reads:
//  * prefix_softmax_attention: causal softmax attention of ONE query per (batch, head) given its
//    scores s_j = q . k_j, i.e. o_t = sum_{j<=t} softmax_{j<=t}(s)_j v_j (Aaren). Forward is a
//    chunked parallel prefix scan of the online-softmax operator
//      (m_a, u_a, w_a) (+) (m_b, u_b, w_b) = (m, u_a e^{m_a-m} + u_b e^{m_b-m}, w_a e^{m_a-m} + w_b e^{m_b-m}),
//    m = max(m_a, m_b); it saves s and the log-sum-exp L_t per position (O(N) + the inputs); the
//    backward recomputes o and runs the reverse scans G_j = g_j + e^{L_j - L_{j+1}} G_{j+1}
//    (factors <= 1, chunked the same way).
//  * causal_linear_numerator: out_i = sum_{j<=i} (q_i . k_j) v_j, linear attention WITHOUT the
//    normaliser (TransNormer's NormAttention, Flowformer's causal dot product); a sequential scan
//    per (batch, head) with the [m, dv] state, backward by the reverse scan; saves q, k, v only.
// The small helpers these variants also use (cumsum, reciprocal, clamp) are in ops.hpp.
#include <cstdint>

#include "attnbench/autograd.hpp"
#include "attnbench/ops.hpp"

namespace ab {

// s: [B, H, N] scores, v: [B, H, N, dv] -> [B, H, N, dv]. key_mask: additive [B, 1, 1, N] (0 keep,
// -inf padded) or null; padded keys take no weight. A position with no visible key outputs 0.
Var prefix_softmax_attention(const Var& s, const Var& v, const Tensor* key_mask = nullptr);

// q, k: [B, H, N, m], v: [B, H, N, dv] -> [B, H, N, dv]; padded keys (mask as above) are left out.
Var causal_linear_numerator(const Var& q, const Var& k, const Var& v, const Tensor* key_mask = nullptr);

}  // namespace ab
