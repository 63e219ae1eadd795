#pragma once
// The analytic cost model of a token mixer (VariantSpec::cost), below the kernels so that a fused
// kernel can state the cost of the mixers built on it (block_sparse_mixer_cost).
#include <cstdint>

#include "attnbench/params.hpp"

namespace ab {

// Arguments of the analytic cost model. activation_bytes is what a training-mode forward keeps
// alive for backward, as the tracking allocator counts it, excluding the input x and the output y;
// `attnbench check` compares it with the measured figure (within 25%).
struct CostArgs {
  int64_t batch, length, d_model, heads;
  const Json* params;  // the variant's resolved parameters
  bool causal;
};
struct Cost {
  double flops = 0;             // forward FLOPs of the mixer (multiply-add = 2)
  // Forward memory traffic the algorithm cannot avoid, in bytes. With flops it places the mixer on
  // the roofline: bench reports max(flops / FMA peak, bytes / bandwidth) / time, counting a
  // forward+backward as 3x both. 0 = the default: reading x and the parameters, writing y and
  // activation_bytes (what the forward saves). Declare it when the algorithm must stream more
  // through memory than that (e.g. a state larger than the caches).
  double bytes = 0;
  double activation_bytes = 0;  // saved for backward
  // Decode state of the whole batch after `length` tokens (KV cache, recurrent state, convolution
  // history); 0 for variants that do not decode. `attnbench check` compares it with
  // DecodeState::bytes().
  double state_bytes = 0;
  // Peak of a training-mode forward followed by a backward from an upstream gradient of ones, in
  // bytes above what was live before the forward, as the tracking allocator counts them (sizes
  // rounded up to its granules). Out: x, the mixer's parameters and the upstream gradient (all
  // allocated before). In: y, everything the forward saves for backward, the transient buffers of
  // the op that is running at the worst moment, the gradient of x and the parameter gradients
  // (held to the end). Usually the worst moment is early in backward: saved activations plus the
  // first gradient buffers. `attnbench check` (peak_model) compares it with
  // measure_mixer_memory().peak_bytes at two lengths (within 25%); `attnbench bench` uses it to
  // predict fwd_bwd cells. 0 = not declared (the bench then falls back to a heuristic).
  double peak_bytes = 0;
};

}  // namespace ab
