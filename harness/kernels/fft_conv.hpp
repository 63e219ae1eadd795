#pragma once
// Long convolutions by FFT and diagonal state-space kernels: the building blocks of S4D, H3, Hyena
// (and any long-convolution mixer).
//
// fft_conv: a per-channel linear (not circular) convolution along the sequence axis of activations
// in the usual [B, N, C] layout (the transforms run along axis 1 with stride C, no transposes).
// Two kernels, both indexed by the lag l >= 0 (the M2 / S4 bidirectional convention):
//   y[b, t, c] = sum_{0 <= t - s < L} k_fwd[g(c), t - s] u[b, s, c]        (causal part)
//              + sum_{0 <= s - t < L} k_bwd[g(c), s - t] u[b, s, c]        (anti-causal part, optional)
// so lag 0 is counted by both kernels when k_bwd is given. Kernel rows are shared by groups of
// channels: k is [G, L] with G dividing C, and channel c uses row g(c) = c / (C / G) (G = C is the
// ordinary depthwise case; H3 shares one SSM kernel between the d x d channels of a head).
// L may differ from N: taps at lags >= N are never reached (their gradient is zero).
// Computed with real FFTs zero-padded to M = fft::good_size(N + min(L, N) - 1), the frequency-domain
// kernel being K_fwd + conj(K_bwd). Backward by FFT too: du = correlation of dy with the kernel
// (dy spectrum times conj(K)), dk_fwd[l] = sum_{b,t} dy[t] u[t - l], dk_bwd[l] = sum_{b,t} dy[t] u[t + l]
// (one inverse transform of sum_b conj(U_b) DY_b gives both). Time O(B C M log M + G M log M).
// Saved for backward: u (when the kernels need gradients) and the kernel spectrum [M/2+1, G] complex
// (when u needs a gradient). Peak extra memory of one sequence's padded buffers (O(M C)).
//
// ssm_diag_kernel: the convolution kernel of a diagonal SSM (S4D) with zero-order-hold
// discretisation, per channel c and mode n (B fixed to 1, as in S4D):
//   dt = exp(log_dt[c]),  A_n = -exp(log_a_re[c, n]) + i a_im[c, n],  z_n = exp(dt A_n),
//   Bbar_n = (z_n - 1) / A_n,  K[c, l] = 2 Re(sum_n C_n Bbar_n z_n^l),  C_n = c[c, n, 0] + i c[c, n, 1].
// A fused op (complex arithmetic in double) with its own backward; time O(C n L).
#include <complex>
#include <cstdint>
#include <vector>

#include "attnbench/autograd.hpp"
#include "attnbench/decode_state.hpp"

namespace ab {

// u: [B, N, C], k_fwd: [G, L], k_bwd: [G, L] or undefined (causal) -> y [B, N, C]
Var fft_conv(const Var& u, const Var& k_fwd, const Var& k_bwd = Var());

// The padded FFT length fft_conv uses for N positions and L taps (for cost models).
int64_t fft_conv_length(int64_t n, int64_t taps);

// fft_toeplitz_attention: the numerator of kernelised attention under a Toeplitz weight C (Luo et
// al. 2021, kernel_rpe_fft), per (batch, head) with m features and e value channels:
//   r[n] = sum_j C[n - j] (fq_n . fk_j) x_j,   C[l] = k_fwd[h, l] (l >= 0) + k_bwd[h, -l] (l <= 0)
// (lag 0 counted by both kernels, as fft_conv). That is fft_conv over the m e channels of the
// outer products fk[:, a] x[:, c], read out by fq; fused per (batch, head) so that neither the
// [N, m, e] products nor their convolution is ever materialised: a block of channels is built in
// zero-padded rows, transformed (real FFT, FFTW plans over the rows), multiplied by the kernel
// spectrum, transformed back and contracted with fq while it is in cache. Backward recomputes
// them: per channel the products' and the gradient's spectra, the convolution again (for dfq) and
// the correlation (for dfk and dx): four transforms to the forward's two; the kernels' gradient
// from the sum over channels and batch of conj(U) dS, one inverse transform per head.
// Time O(B H m e M log M), extra memory O(B H (m + e) N) plus a block of rows per running task.
// fq, fk: [B, H, N, m], x: [B, H, N, e], k_fwd: [H, L], k_bwd: [H, L] or undefined (causal)
//   -> r [B, H, N, e]
Var fft_toeplitz_attention(const Var& fq, const Var& fk, const Var& x, const Var& k_fwd, const Var& k_bwd = Var());

// log_dt: [C], log_a_re: [C, n], a_im: [C, n], c: [C, n, 2] (real, imaginary) -> K [C, L]
// Saves its four (parameter-sized) inputs.
Var ssm_diag_kernel(const Var& log_dt, const Var& log_a_re, const Var& a_im, const Var& c, int64_t length);

// The discretised modes of the same SSM, for the recurrent (decode) form:
//   x_t = abar * x_{t-1} + bbar * u_t,   y_t = 2 Re(sum_n c_n x_t,n)
struct DiagSsmModes {
  int64_t channels = 0, modes = 0;
  std::vector<std::complex<float>> abar, bbar, c;  // [channels, modes]
};
DiagSsmModes diag_ssm_modes(const Tensor& log_dt, const Tensor& log_a_re, const Tensor& a_im, const Tensor& c);

// The complex state of a diagonal SSM for `batch` sequences of `channels` channels; channel s uses
// the modes of row s / (channels / modes.channels). bytes() = batch * channels * modes * 8.
class DiagSsmState final : public DecodeState {
 public:
  DiagSsmState(int64_t batch, int64_t channels, int64_t modes);
  // u: [B, channels] (any shape with that many values) -> y [B, channels] (no skip term)
  Tensor step(const Tensor& u, const DiagSsmModes& m);
  int64_t bytes() const override { return static_cast<int64_t>(x_.size() * sizeof(std::complex<float>)); }

 private:
  int64_t batch_, channels_, modes_;
  std::vector<std::complex<float>> x_;  // [B, channels, modes]
};

}  // namespace ab
