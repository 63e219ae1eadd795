#pragma once
// Short depthwise convolution along the sequence, the local mixing step of Mamba, H3, Hyena,
// Based and Monarch Mixer: every channel has its own K taps.
//   causal:   y[b, t, c] = bias[c] + sum_{j<K} w[c, j] x[b, t - j, c]        (j = 0 is the token itself)
//   centered: y[b, t, c] = bias[c] + sum_{j<K} w[c, j] x[b, t + j - (K-1)/2, c]
// Positions outside [0, N) read zero. Time O(B N C K); saves x for the weight gradient.
#include <cstdint>

#include "attnbench/autograd.hpp"
#include "attnbench/decode_state.hpp"

namespace ab {

// x: [B, N, C], w: [C, K], bias: [C] or undefined -> [B, N, C]
Var short_conv(const Var& x, const Var& w, const Var& bias, bool causal);

// The causal form one token at a time: keeps the last K - 1 inputs of every sequence.
class ShortConvState final : public DecodeState {
 public:
  ShortConvState(int64_t batch, int64_t channels, int64_t taps);
  // x_t: [B, 1, C] (or [B, C]), w: [C, K], bias: [C] or undefined -> y_t [B, 1, C]
  Tensor step(const Tensor& x_t, const Tensor& w, const Tensor* bias);
  int64_t bytes() const override { return hist_.bytes(); }

 private:
  int64_t batch_, channels_, taps_;
  Tensor hist_;  // [B, K - 1, C], most recent input last
};

}  // namespace ab
