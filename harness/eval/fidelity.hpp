#pragma once
// Approximation fidelity (`bench --fidelity`): the relative error ||o - o_exact|| / ||o_exact|| of
// an attention-style variant's attend() against exact softmax attention on the same q, k, v.
// Random q, k ~ N(0, 1) give nearly flat attention, the hardest case for sparse and low-rank
// forms; the q, k, v a trained model feeds its attention are peaked and structured, which is
// what an approximation meets in use. Both sources are here.
#include <map>
#include <string>

#include "attnbench/params.hpp"
#include "attnbench/tensor.hpp"
#include "attnbench/variant.hpp"

namespace ab {

struct AttentionInputs {
  Tensor q, k, v;  // [B, H, N, d]
};

AttentionInputs random_attention_inputs(int64_t batch, int64_t heads, int64_t length, int64_t head_dim,
                                        uint64_t seed);

// A softmax model (2 layers, d_model 64, 2 heads, MLP 128, sinusoidal positions) trained on a task
// at one length; capture() runs its weights at any length and returns what one layer's attention
// receives. Training is deterministic for a seed and thread count.
class TrainedAttentionSource {
 public:
  // task: a registered classification task whose `min_length`/`max_length` set the document
  // length (text, retrieval, image ... ); steps of batch 16 at train_length.
  TrainedAttentionSource(std::string task, int64_t train_length, int64_t steps, uint64_t seed);
  // q, k, v of `layer` for `batch` test examples of exactly `length` tokens.
  AttentionInputs capture(int64_t length, int64_t batch, int layer) const;
  const Json& description() const { return description_; }  // task, length, steps, accuracy

 private:
  Json task_params(int64_t length) const;
  std::string task_;
  uint64_t seed_;
  Json model_params_;
  std::map<std::string, Tensor> weights_;
  Json description_;
};

// NaN for a variant that is not attention-style (no attend()). The variant is built at the
// inputs' shape (d_model = H * d) with `seed`.
double attention_fidelity(const VariantSpec& spec, const Json& variant_params, const AttentionInputs& in, bool causal,
                          uint64_t seed);

}  // namespace ab
