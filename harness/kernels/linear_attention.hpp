#pragma once
// Fused ops for the low-rank and kernelised mixers (linear_elu, performer, nystrom). Each computes
// its value eagerly and records a hand-written backward that captures only the tensors it reads.
//  * linear_attention: kernelised attention with a normaliser (P2 in the variant notes),
//    bidirectional (two batched GEMMs through the [m, dv] state) or causal (a sequential scan over
//    positions with the running state S = sum phi(k) v^T, z = sum phi(k); the backward recomputes
//    the states by a forward scan and accumulates the key/value gradients by the reverse scan).
//    No [N, m, dv] buffer in either direction; TBB over batch * head.
//  * favor_features: Performer's random-feature maps (positive softmax, hyperbolic softmax, ReLU)
//    with the max-subtraction stabiliser.
//  * sequence_depthwise_conv: a per-head 1-D convolution along the sequence, shared over the head
//    dimension (Nystromformer's skip connection on the values).
#include <cstdint>

#include "attnbench/autograd.hpp"

namespace ab {

// Feature map applied inside linear_attention to q and k, elementwise.
enum class FeatureMap {
  identity,       // q and k are already features (e.g. from favor_features)
  elu_plus_one,   // phi(x) = elu(x) + 1 (Katharopoulos et al. 2020)
  relu_plus_eps,  // phi(x) = max(x, 0) + feature_eps (LRA's deterministic "Performer")
};

struct LinearAttentionOptions {
  FeatureMap feature = FeatureMap::identity;
  float feature_eps = 1e-3f;  // relu_plus_eps only
  bool causal = false;
  // out_i = num_i / (den_i + eps); a row whose denominator is exactly 0 (no visible key) is 0.
  float eps = 1e-6f;
  // Additive key mask [B, 1, 1, N] (0 keep, -inf padded): phi(k) is zeroed at padded keys, so they
  // enter neither the state nor the normaliser (and receive no gradient).
  const Tensor* key_mask = nullptr;
};

// q, k: [B, H, N, m], v: [B, H, N, dv] -> [B, H, N, dv]
//   out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),  S_i = sum_{j in J(i)} phi(k_j) v_j^T,
//   z_i = sum_{j in J(i)} phi(k_j),  J(i) = unpadded keys (bidirectional) or unpadded keys j <= i (causal).
// Saves q, k, v (and, bidirectional, S [B, H, m, dv] and z [B, H, m]).
Var linear_attention(const Var& q, const Var& k, const Var& v, const LinearAttentionOptions& opt = {});

enum class FavorKernel {
  softmax_positive,    // phi(x) = m^-1/2 (exp(w x^ - |x^|^2/2 - c) + stabilizer)          -> m features
  softmax_hyperbolic,  // phi(x) = (2m)^-1/2 [exp(+w x^ - |x^|^2/2 - c), exp(-w x^ - ...)] (+ stabilizer) -> 2m
  relu,                // phi(x) = max(w x^, 0) + relu_eps                                   -> m features
};

struct FavorOptions {
  FavorKernel kernel = FavorKernel::softmax_positive;
  // The stabilising constant c (treated as a constant in backward): the maximum exponent per row
  // for queries, per (batch, head) over every unpadded key and feature for keys, so that the ratio
  // in linear_attention is unchanged (exactly so when stabilizer = 0).
  bool is_query = true;
  float stabilizer = 1e-6f;  // added to the exponential features
  float relu_eps = 1e-3f;    // added to the ReLU features
  // Keys: padded rows ([B, 1, 1, N] additive mask) stay out of the maximum; their features are
  // then meaningless (clamped), and linear_attention with the same mask zeroes them.
  const Tensor* key_mask = nullptr;
};

// x: [B, H, N, d], w: [m, d] (random projections, a constant) -> [B, H, N, m] or [B, H, N, 2m]
// x^ = x d^-1/4, so that x^_q . x^_k = q . k / sqrt(d). Saves x and the output.
Var favor_features(const Var& x, const Tensor& w, const FavorOptions& opt = {});

// v: [B, H, N, d], w: [H, K] -> [B, H, N, d]
//   y[b, h, n, :] = sum_t w[h, t] v[b, h, n + t - K/2, :], zero outside [0, N) (K odd: centred).
// Saves w, and v if w wants a gradient.
Var sequence_depthwise_conv(const Var& v, const Var& w);

}  // namespace ab
