#pragma once
// Monarch matrices along the sequence axis (Dao et al. 2022, "Monarch: Expressive Structured Matrices
// for Efficient and Accurate Training"; Fu et al. 2023, "Monarch Mixer").
//
// An order-2 Monarch matrix of size N = m1 * m2 is
//   M = P^T · blockdiag(R) · P · blockdiag(L)
// with L: m1 blocks of m2 x m2 (acting on the contiguous runs x[i*m2 .. i*m2 + m2)), P the
// reshape-transpose permutation (P z)[j*m1 + i] = z[i*m2 + j], and R: m2 blocks of m1 x m1. Written out,
//   y[i*m2 + j] = sum_{i', j'} R[j][i][i'] L[i'][j][j'] x[i'*m2 + j'].
// Applying M costs O(N (m1 + m2)) per channel, O(N^{3/2}) for m1 = m2 = sqrt(N); no N x N buffer.
//
// The discrete Fourier transform has such a factorisation (Cooley-Tukey "four-step": DFTs of size m1
// and m2 with the twiddle factors folded into the second block-diagonal factor), which is how the
// Monarch Mixer computes its FFT convolutions. monarch_long_conv does exactly that: each factor is one
// real GEMM over all rows and blocks (complex products as real 2 x 2 blocks), the twiddles a pointwise
// pass that also transposes the block grid.
// The max-pooling ops of PoNet (hand-written kernels with saved argmax) live here too.
#include <cstdint>
#include <utility>

#include "attnbench/autograd.hpp"

namespace ab {

// x: [B, N, C], L: [m1, m2, m2], R: [m2, m1, m1], N = m1 * m2 -> y [B, N, C], y[b, :, c] = M x[b, :, c].
// Differentiable in x, L and R (batched GEMMs and permutations; saves two [B, N, C] tensors when L and
// R want gradients).
Var monarch(const Var& x, const Var& L, const Var& R);

// The materialised N x N matrix M (row-major [N, N]) of the factors, for tests and inspection.
Tensor monarch_dense(const Tensor& L, const Tensor& R);

// The factor sizes (m1, m2) used for a transform of at least `n` points: m1 = ceil(sqrt(n)),
// m2 = ceil(n / m1), so m1 * m2 >= n and both are about sqrt(n).
std::pair<int64_t, int64_t> monarch_factors(int64_t n);

// Long (length-N) depthwise convolution along the sequence, computed as M^-1 diag(F h) M with M the
// Monarch DFT of size n = m1 * m2 >= 2N (monarch_factors(2N); zero padding makes the circular
// convolution linear):
//   y[b, t, c] = sum_{s <= t} k[t - s, c] v[b, s, c]  +  sum_{s >= t} k_rev[s - t, c] v[b, s, c]
// v: [B, N, C]; k, k_rev: [N, C] (lag-major filters); k_rev undefined = causal convolution (the
// second sum is dropped). With k_rev the lag-0 tap is k[0] + k_rev[0], as in M2's k_f + conj(k_rev_f).
// Differentiable in v, k and k_rev; saves only v (the spectra are recomputed in backward).
// Time O(B C n (m1 + m2)), memory O(B C n).
Var monarch_long_conv(const Var& v, const Var& k, const Var& k_rev);

// Forward FLOPs of monarch_long_conv for the given sizes (the cost models use it).
double monarch_long_conv_flops(int64_t batch, int64_t length, int64_t channels, bool bidirectional);

// ---- max pooling along the sequence (PoNet's segment and local poolings) ------------------------
// Both take x [B, N, C] and an optional additive key mask [B, 1, 1, N] (-inf = padded position, as in
// MixerContext::key_mask). Padded positions never win a max; an output whose pool holds no real
// position is 0. Ties go to the first (lowest) position. The argmax is saved for backward (one float
// index per output of the pool), so backward routes each output gradient to its winner.
//
// Segment max pooling: segments [s*size, (s+1)*size) ∩ [0, N); every position gets the max of its
// segment: y[b, t, c] = max_{s in seg(t)} x[b, s, c]. Saves B * ceil(N / size) * C indices.
Var segment_max_pool(const Var& x, int64_t size, const Tensor* key_mask = nullptr);
// Local (sliding window) max pooling, stride 1, window `window` (odd) centred on t:
// y[b, t, c] = max_{|s - t| <= window / 2} x[b, s, c]. Saves B * N * C indices.
Var local_max_pool(const Var& x, int64_t window, const Tensor* key_mask = nullptr);

}  // namespace ab
