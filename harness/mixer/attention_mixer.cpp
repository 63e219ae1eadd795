#include <fmt/format.h>

#include "attnbench/variant.hpp"
#include "mixer/attention_probe.hpp"

namespace ab {

AttentionMixer::AttentionMixer(const MixerConfig& cfg)
    : d_model_(cfg.d_model), heads_(cfg.heads), head_dim_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0) {
  if (heads_ <= 0 || d_model_ % heads_ != 0)
    throw UsageError(fmt::format("model.d_model = {} must be a multiple of model.heads = {}", d_model_, heads_));
  auto stream = [&](uint64_t which) { return RngStream(cfg.seed, Purpose::init, 1000 + cfg.layer, which); };
  wq_ = add_param("wq", init_xavier_uniform(d_model_, d_model_, stream(0)));
  wk_ = add_param("wk", init_xavier_uniform(d_model_, d_model_, stream(1)));
  wv_ = add_param("wv", init_xavier_uniform(d_model_, d_model_, stream(2)));
  wo_ = add_param("wo", init_xavier_uniform(d_model_, d_model_, stream(3)));
}

Var AttentionMixer::forward(const Var& x, const MixerContext& ctx) {
  // x: [B, N, D] -> q, k, v: [B, H, N, d]
  const int64_t B = x.dim(0), N = x.dim(1);
  auto heads = [&](const Var& w) { return permute(reshape(linear(x, w), {B, N, heads_, head_dim_}), {0, 2, 1, 3}); };
  Var o;
  {  // q, k, v die before the output projection, as they would as temporaries
    const Var q = heads(wq_), k = heads(wk_), v = heads(wv_);
    if (const auto& probe = attention_probe()) probe(ctx.layer, q.value(), k.value(), v.value());
    o = attend(q, k, v, ctx);  // [B, H, N, d]
  }
  return linear(reshape(permute(o, {0, 2, 1, 3}), {B, N, d_model_}), wo_);
}

// Decoding: the defaults refuse; AttentionMixer projects one token and hands it to attend_step.
std::unique_ptr<DecodeState> Mixer::begin_decode(int64_t, const MixerContext&) {
  throw UsageError("this variant does not decode one token at a time (its capabilities have no 'decode')");
}

Tensor Mixer::decode_step(const Tensor&, DecodeState&, const MixerContext&) {
  throw UsageError("this variant does not decode one token at a time (its capabilities have no 'decode')");
}

Tensor AttentionMixer::attend_step(const Tensor&, const Tensor&, const Tensor&, DecodeState&, const MixerContext&) {
  throw UsageError("this variant does not decode one token at a time (its capabilities have no 'decode')");
}

Tensor AttentionMixer::decode_step(const Tensor& x_t, DecodeState& state, const MixerContext& ctx) {
  // x_t: [B, 1, D] -> q, k, v: [B, H, 1, d] (with one position, [B, 1, H, d] is already that layout)
  NoGrad ng;
  const int64_t B = x_t.dim(0);
  if (x_t.rank() != 3 || x_t.dim(1) != 1 || x_t.dim(2) != d_model_)
    throw UsageError(fmt::format("decode_step takes one token [B, 1, {}], got {}", d_model_, shape_str(x_t.shape())));
  const Var x(x_t);
  auto heads = [&](const Var& w) { return linear(x, w).value().reshape({B, heads_, 1, head_dim_}); };
  const Tensor o = attend_step(heads(wq_), heads(wk_), heads(wv_), state, ctx);  // [B, H, 1, d]
  return linear(Var(o.reshape({B, 1, d_model_})), wo_).value();
}

}  // namespace ab
