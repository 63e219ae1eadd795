#pragma once
// The token-mixer plugin contract. A mixer maps x[B, N, D] -> y[B, N, D] and owns its projections.
// Attention-style variants derive from AttentionMixer and implement only attend(q, k, v, ctx).
// Register a variant with ATTNBENCH_REGISTER_VARIANT(Class) in its own .cpp file; Class provides
//   static VariantSpec spec();
//   Class(const MixerConfig& cfg);
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "attnbench/cost.hpp"
#include "attnbench/decode_state.hpp"
#include "attnbench/module.hpp"
#include "attnbench/ops.hpp"
#include "attnbench/params.hpp"
#include "attnbench/plugin.hpp"

namespace ab {

struct Capabilities {
  bool causal = false;           // an exact causal (prefix-only) form exists
  bool bidirectional = true;     // the encoder form exists
  bool padding_mask = false;     // honours the key-padding mask
  bool stochastic = false;       // draws from the RNG stream in forward
  bool length_dependent = false; // parameter shapes depend on the maximum length
  bool decode = false;           // decodes one token at a time with a carried state (causal)
};

struct MixerConfig {
  int64_t d_model = 64;
  int64_t heads = 4;
  int64_t max_length = 128;  // the longest sequence this instance will see
  int layer = 0;
  uint64_t seed = 0;
  Json params;  // the variant's resolved parameters
  // Grouped-query attention (model.kv_heads), read by AttentionMixer only: Wk and Wv project to
  // kv_heads heads, each shared by heads / kv_heads consecutive query heads. 0 = heads (MHA).
  int64_t kv_heads = 0;
  // Rotary positions (model.positions=rotary), read by AttentionMixer only: q and k of every head
  // are rotated by their position before attend() (RoFormer; over the whole head, channel m paired
  // with m + d/2 as in GPT-NeoX and flash-attn's non-interleaved rotary) with this base; 0 = none.
  double rotary_base = 0.0;
};

// What a forward call may know beyond x.
struct MixerContext {
  // Additive [B, 1, 1, N]: 0 keep, -inf padded key; null = none. A key is padded when its value is
  // below -1e4 (is_padded_key in ops.hpp); keep_flags() turns the mask into 0/1 flags.
  const Tensor* key_mask = nullptr;
  bool causal = false;
  bool training = false;
  uint64_t seed = 0;
  int64_t step = 0;  // training step (stochastic mixers key their draws with it)
  int layer = 0;
};

class Mixer : public Module {
 public:
  // x: [B, N, D] -> [B, N, D]
  virtual Var forward(const Var& x, const MixerContext& ctx) = 0;

  // Causal decoding, for variants that declare caps.decode. begin_decode starts `batch` empty
  // sequences; decode_step takes the next token of each, x_t [B, 1, D], and returns y_t [B, 1, D],
  // equal (to float tolerance) to position t of forward(x, causal) over the tokens so far.
  // Inference only: no tape is recorded. The defaults throw a UsageError.
  virtual std::unique_ptr<DecodeState> begin_decode(int64_t batch, const MixerContext& ctx);
  virtual Tensor decode_step(const Tensor& x_t, DecodeState& state, const MixerContext& ctx);
};

// Owns Wq, Wk, Wv, Wo (Xavier-uniform, no bias, as in LRA) and the head split. With
// MixerConfig::kv_heads < heads (GQA / MQA) Wk and Wv are [D, kv_heads * d] and every k, v head is
// repeated to its group of query heads before attend(), so variants always see H heads. With
// MixerConfig::rotary_base > 0 the q and k that attend() sees are rotated (rotary positions);
// one-token decoding then refuses (it would need each state's position).
class AttentionMixer : public Mixer {
 public:
  explicit AttentionMixer(const MixerConfig& cfg);
  Var forward(const Var& x, const MixerContext& ctx) final;
  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  virtual Var attend(const Var& q, const Var& k, const Var& v, const MixerContext& ctx) = 0;

  // Decoding: projects x_t and hands the heads to attend_step (variants override begin_decode
  // and attend_step).
  Tensor decode_step(const Tensor& x_t, DecodeState& state, const MixerContext& ctx) final;
  // q_t, k_t, v_t: [B, H, 1, d] -> o_t [B, H, 1, d]
  virtual Tensor attend_step(const Tensor& q_t, const Tensor& k_t, const Tensor& v_t, DecodeState& state,
                             const MixerContext& ctx);

 protected:
  // The mixer's input x [B, N, D] (x_t [B, 1, D] in decode) while attend / attend_step runs, for
  // variants whose gates read x (softmax_gate, fox); undefined at any other time.
  const Var& input() const { return input_; }

  int64_t d_model_, heads_, head_dim_, kv_heads_;
  Var wq_, wk_, wv_, wo_;

 private:
  Var input_;
  // Rotary positions: x [.., N, d] -> x * cos + rotate_half(x) * sin, tables [max_length, d]
  // (undefined = off) and rotate_half as a constant [d, d] matrix (x1, x2 -> -x2, x1).
  Tensor rotary_cos_, rotary_sin_, rotary_half_;
};

struct VariantSpec {
  std::string name;
  std::string family;     // e.g. "dense", "sparse", "low-rank", "kernel", "state-space"
  std::string summary;    // one line
  std::string reference;  // paper
  std::vector<ParamSpec> params;
  Capabilities caps;
  std::function<Cost(const CostArgs&)> cost;
  std::function<std::unique_ptr<Mixer>(const MixerConfig&)> make;
  std::string origin = "built-in";  // or the plugin path
  bool attention_style = false;     // derives from AttentionMixer (attend() exists); set by registration
  // Parameter overrides for the conformance checks, which run at tiny sizes (N = 8, D = 16,
  // H = 2), e.g. a block size that divides 8. Empty = the defaults.
  Json check_params = Json::object();
};

// The additive mask [.., N, N] of attention scores under ctx: causal_mask(N) [N, N] when causal,
// the key mask [B, 1, 1, N] when given, both summed [B, 1, N, N], or an undefined Tensor when
// neither applies (add it to the scores before the normalisation; -inf drops a score).
Tensor additive_mask(const MixerContext& ctx, int64_t N);

// A spec with its description, parameters and capabilities filled in, so spec() reads as one call
// (the variant then sets cost, and check_params where the defaults do not fit the checks' sizes):
//   ab::VariantSpec s = ab::variant_spec("name", "family", "one-line summary", "Author et al. 2024, Title",
//                                        {ab::int_param(...), ...}, {.causal = true, ...});
VariantSpec variant_spec(std::string name, std::string family, std::string summary, std::string reference,
                         std::vector<ParamSpec> params, Capabilities caps);

class VariantRegistry {
 public:
  static VariantRegistry& instance();
  void add(VariantSpec spec);  // throws on a duplicate name, naming both origins
  const VariantSpec& get(const std::string& name) const;  // UsageError naming the nearest
  const VariantSpec* find(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted

 private:
  std::vector<VariantSpec> specs_;
};

namespace detail {
template <class T>
void register_variant(const std::string& origin) {
  VariantSpec s = T::spec();
  s.make = [](const MixerConfig& cfg) -> std::unique_ptr<Mixer> { return std::make_unique<T>(cfg); };
  s.attention_style = std::is_base_of_v<AttentionMixer, T>;
  if (!origin.empty()) s.origin = origin;
  VariantRegistry::instance().add(std::move(s));
}
}  // namespace detail

#define ATTNBENCH_REGISTER_VARIANT(Class)                                      \
  static const ::ab::detail::Registrar<&::ab::detail::register_variant<Class>> \
      ATTNBENCH_CONCAT(ab_variant_registrar_, __LINE__) {}

}  // namespace ab
