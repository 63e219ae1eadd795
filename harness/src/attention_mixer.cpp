#include <fmt/format.h>

#include "attnbench/variant.hpp"
#include "attention_probe.hpp"

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

}  // namespace ab
