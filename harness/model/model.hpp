#pragma once
// The encoder every variant is evaluated in: token embedding + positions -> L pre-norm blocks
// (norm -> [u + short conv(u)] -> mixer -> residual; norm -> MLP -> residual, unless model.mlp=false;
// the MLP is GELU or MAD's SwiGLU, model.mlp_type) -> final norm -> head. model.positions=rotary
// adds nothing at the embedding: the attention-style layers rotate their q and k instead. model.mixers gives each layer its own variant (hybrids). model.pooling=last
// on a per-position task is MAD's autoencoder: the last position's state, plus a sin-cos row per
// output position, through a 2-layer MLP decoder, then the head.
#include <memory>
#include <vector>

#include "attnbench/task.hpp"
#include "attnbench/variant.hpp"

namespace ab {

std::vector<ParamSpec> model_param_specs();

// The mixer of each layer: one entry per layer of model.layers.
struct LayerMixer {
  const VariantSpec* spec;
  Json params;  // `variant_params` for the layers of the run's variant, the defaults for the others
};
// Resolves model.mixers against model.layers (empty = `variant` in every layer) and checks what the
// layers must satisfy together: every layer's capabilities against model.causal, and model.kv_heads
// against model.heads and the presence of an attention-style layer, model.positions=rotary likewise
// (and an even head width), model.mlp_type against model.mlp. UsageError naming the problem
// and the nearest valid choice otherwise.
std::vector<LayerMixer> plan_layers(const Json& model_params, const VariantSpec& variant, const Json& variant_params);
// The variant names of plan_layers, layer by layer (the run file's variant.layers).
std::vector<std::string> mixer_schedule(const Json& model_params, const VariantSpec& variant);

// One batch of padded examples. tokens: [B, N]; tokens2: [B, N] for pair tasks;
// labels: [B] (classification) or [B * N] (per position, kIgnoreLabel where unscored).
struct Batch {
  int64_t size = 0, length = 0;
  std::vector<int32_t> tokens, tokens2, labels;
};

// Pads examples [begin, begin + count) of a split (indices taken from `order` when given).
Batch make_batch(const Task& task, Split split, const std::vector<int64_t>& indices);

class Model : public Module {
 public:
  // model_params: resolved model_param_specs(); variant: the registered spec and its resolved params.
  // max_length: the longest task sequence the model will see (0 = the task's length), for test
  // splits longer than training: mixers and position tables are built for it.
  Model(const Json& model_params, const VariantSpec& variant, const Json& variant_params, const Task& task,
        uint64_t seed, int64_t max_length = 0);
  ~Model() override;
  // -> logits [B, C] (classification) or [B * N, C] (per position); batch.length <= max_length
  Var forward(const Batch& batch, bool training, int64_t step);
  int64_t model_length() const { return model_length_; }  // max task length (+1 with a CLS token)
  const std::vector<LayerMixer>& layers() const { return layers_; }

 private:
  struct Block;
  Var encode(const std::vector<int32_t>& tokens, int64_t B, int64_t N, bool training, int64_t step);

  Json p_;
  TaskKind kind_;
  int64_t d_, task_length_, model_length_, vocab_, classes_;  // task_length_: the longest, as built
  int32_t pad_id_;
  bool cls_, decoder_, use_mask_, causal_;  // decoder_: model.pooling=last (MAD's autoencoder)
  float dropout_;
  uint64_t seed_;
  Var tok_emb_, pos_emb_, cls_emb_, final_gamma_, final_beta_, head_w1_, head_b1_, head_w2_, head_b2_;
  Tensor sinusoid_;
  Var dec_g_[3], dec_b_[3], dec_w_[2], dec_bias_[2];  // model.pooling=last: the decoder MLP's norms and linears
  Tensor dec_pos_;                                     // its sin-cos table [task length, D]
  std::vector<LayerMixer> layers_;
  std::vector<std::unique_ptr<Block>> blocks_;
};

}  // namespace ab
