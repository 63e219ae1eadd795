#pragma once
// Selective scan: the input-dependent diagonal state-space recurrence of Mamba (S6), Gu & Dao 2023.
// For every batch b, channel c and state index s (n states per channel):
//   dt_t      = softplus(delta[b, t, c] + bias[c])   (or delta + bias without the softplus)
//   h_t[c, s] = exp(dt_t A[c, s]) h_{t-1}[c, s] + dt_t Bm[b, t, s] u[b, t, c]      (h_{-1} = 0)
//   y[b, t, c] = sum_s Cm[b, t, s] h_t[c, s] + D[c] u[b, t, c]
// `reverse` runs the same recurrence from t = N-1 down to 0 (h_{t+1} is the previous state), the
// backward half of a bidirectional Mamba.
// Kernel: one sequential pass per (batch, block of channels), TBB over those units. Time
// O(B N C n). Memory: the forward keeps its inputs and the state at every `chunk`-th step
// (B C ceil(N / chunk) n floats), never the [B, N, C, n] states; the backward recomputes the states
// of one chunk at a time from its checkpoint and runs the reverse recurrence
//   dh_t = Cm_t dy_t + exp(dt_{t+1} A) dh_{t+1},
// giving du, d(delta), dA, dBm, dCm, dD and d(bias). Deterministic for any thread count.
#include <cstdint>

#include "attnbench/autograd.hpp"
#include "attnbench/decode_state.hpp"

namespace ab {

struct SelectiveScanOptions {
  Var D;                        // [C] skip connection; undefined = none
  Var delta_bias;               // [C] added to delta before the softplus; undefined = none
  bool delta_softplus = false;  // apply softplus (threshold 20, as torch) to delta + bias
  bool reverse = false;         // scan from the last position to the first
  int64_t chunk = 64;           // steps between saved states (>= 1)
};

// u, delta: [B, N, C]; A: [C, n]; Bm, Cm: [B, N, n] -> y: [B, N, C]
Var selective_scan(const Var& u, const Var& delta, const Var& A, const Var& Bm, const Var& Cm,
                   const SelectiveScanOptions& opt = {});

// Bytes of the state checkpoints a training-mode selective_scan keeps for backward.
inline double selective_scan_checkpoint_bytes(double batch, double length, double channels, double states,
                                              double chunk) {
  const double chunks = static_cast<double>(static_cast<int64_t>((length + chunk - 1) / chunk));
  return 4.0 * batch * channels * chunks * states;
}

// Softplus as the scan applies it: x for x > 20, log(1 + exp(x)) otherwise.
float scan_softplus(float x);

// The recurrence one token at a time (decoding): holds h [B, C, n].
class SelectiveScanState final : public DecodeState {
 public:
  SelectiveScanState(int64_t batch, int64_t channels, int64_t states);
  // u_t, delta_t: [B, C] (or [B, 1, C]), raw delta as selective_scan takes it; A: [C, n];
  // Bm_t, Cm_t: [B, n] (or [B, 1, n]); D, delta_bias: [C] or null -> y_t [B, 1, C]
  Tensor step(const Tensor& u_t, const Tensor& delta_t, const Tensor& A, const Tensor& Bm_t, const Tensor& Cm_t,
              const Tensor* D, const Tensor* delta_bias, bool delta_softplus);
  const Tensor& state() const { return h_; }
  int64_t bytes() const override { return h_.bytes(); }

 private:
  int64_t batch_, channels_, states_;
  Tensor h_;  // [B, C, n]
};

}  // namespace ab
