#include <cmath>

#include <fmt/format.h>

#include "attnbench/variant.hpp"
#include "mixer/attention_probe.hpp"

namespace ab {

namespace {
// k or v heads [B, G, N, d] -> [B, G * r, N, d]: head g serves query heads g * r .. g * r + r - 1
// (consecutive groups, as in GQA). The copies' gradients sum back into the shared head.
Var repeat_heads(const Var& t, int64_t r) {
  if (r == 1) return t;
  const int64_t B = t.dim(0), G = t.dim(1), N = t.dim(2), d = t.dim(3);
  const Var one = reshape(t, {B, G, 1, N * d});
  return reshape(concat(std::vector<Var>(static_cast<size_t>(r), one), 2), {B, G * r, N, d});
}
}  // namespace

AttentionMixer::AttentionMixer(const MixerConfig& cfg)
    : d_model_(cfg.d_model), heads_(cfg.heads), head_dim_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0),
      kv_heads_(cfg.kv_heads == 0 ? cfg.heads : cfg.kv_heads) {
  if (heads_ <= 0 || d_model_ % heads_ != 0)
    throw UsageError(fmt::format("model.d_model = {} must be a multiple of model.heads = {}", d_model_, heads_));
  if (kv_heads_ <= 0 || heads_ % kv_heads_ != 0)
    throw UsageError(fmt::format("model.kv_heads = {} must divide model.heads = {}", kv_heads_, heads_));
  auto stream = [&](uint64_t which) { return RngStream(cfg.seed, Purpose::init, 1000 + cfg.layer, which); };
  wq_ = add_param("wq", init_xavier_uniform(d_model_, d_model_, stream(0)));
  wk_ = add_param("wk", init_xavier_uniform(d_model_, kv_heads_ * head_dim_, stream(1)));
  wv_ = add_param("wv", init_xavier_uniform(d_model_, kv_heads_ * head_dim_, stream(2)));
  wo_ = add_param("wo", init_xavier_uniform(d_model_, d_model_, stream(3)));
  if (cfg.rotary_base > 0) {
    const int64_t d = head_dim_, h = d / 2;
    if (d % 2 != 0)
      throw UsageError(fmt::format("rotary positions rotate pairs of channels, but the head width d_model / heads = {} "
                                   "is odd; nearest valid d_model: {}", d, (d + 1) * heads_));
    // Position n, pair (m, m + h): angle n * base^(-2m / d) (flash-attn's inv_freq), in double.
    rotary_cos_ = Tensor::empty({cfg.max_length, d});
    rotary_sin_ = Tensor::empty({cfg.max_length, d});
    for (int64_t n = 0; n < cfg.max_length; ++n)
      for (int64_t m = 0; m < h; ++m) {
        const double a = static_cast<double>(n) * std::pow(cfg.rotary_base, -2.0 * static_cast<double>(m) / static_cast<double>(d));
        rotary_cos_[n * d + m] = rotary_cos_[n * d + m + h] = static_cast<float>(std::cos(a));
        rotary_sin_[n * d + m] = rotary_sin_[n * d + m + h] = static_cast<float>(std::sin(a));
      }
    rotary_half_ = Tensor::zeros({d, d});  // x @ P = (-x2, x1)
    for (int64_t m = 0; m < h; ++m) {
      rotary_half_[(m + h) * d + m] = -1.f;
      rotary_half_[m * d + m + h] = 1.f;
    }
  }
}

Tensor additive_mask(const MixerContext& ctx, int64_t N) {
  if (!ctx.causal) return ctx.key_mask ? *ctx.key_mask : Tensor();
  Tensor mask = causal_mask(N);
  if (ctx.key_mask) mask = add(Var(*ctx.key_mask), Var(mask)).value();  // [B, 1, 1, N] + [N, N] -> [B, 1, N, N]
  return mask;
}

Var AttentionMixer::forward(const Var& x, const MixerContext& ctx) {
  // x: [B, N, D] -> q, k, v: [B, H, N, d] (k, v projected to kv_heads heads and repeated; q, k
  // rotated by position with rotary positions)
  const int64_t B = x.dim(0), N = x.dim(1);
  auto heads = [&](const Var& w, int64_t h) {
    return permute(reshape(linear(x, w), {B, N, h, head_dim_}), {0, 2, 1, 3});
  };
  const bool rotary = rotary_cos_.defined();
  if (rotary && N > rotary_cos_.dim(0))
    throw std::invalid_argument(fmt::format("sequence length {} exceeds the {} positions this mixer was built for", N,
                                            rotary_cos_.dim(0)));
  auto rows = [&](const Tensor& t) { return !rotary || N == t.dim(0) ? t : slice(Var(t), 0, 0, N).value(); };
  const Tensor cos = rows(rotary_cos_), sin = rows(rotary_sin_);
  // t [B, h, N, d] -> t * cos + rotate_half(t) * sin, the tables [N, d] broadcast over B and h
  auto rotate = [&](const Var& t) {
    return rotary ? add(mul(t, Var(cos)), mul(linear(t, Var(rotary_half_)), Var(sin))) : t;
  };
  Var o;
  {  // q, k, v die before the output projection, as they would as temporaries
    const Var q = rotate(heads(wq_, heads_)), k = repeat_heads(rotate(heads(wk_, kv_heads_)), heads_ / kv_heads_),
              v = repeat_heads(heads(wv_, kv_heads_), heads_ / kv_heads_);
    if (const auto& probe = attention_probe()) probe(ctx.layer, q.value(), k.value(), v.value());
    input_ = x;
    o = attend(q, k, v, ctx);  // [B, H, N, d]
    input_ = Var();
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
  if (rotary_cos_.defined())
    throw UsageError("one-token decoding with rotary positions (model.positions=rotary) is not supported: the decode "
                     "state does not carry its position; decode without rotary positions");
  if (x_t.rank() != 3 || x_t.dim(1) != 1 || x_t.dim(2) != d_model_)
    throw UsageError(fmt::format("decode_step takes one token [B, 1, {}], got {}", d_model_, shape_str(x_t.shape())));
  const Var x(x_t);
  auto heads = [&](const Var& w, int64_t h) {
    return repeat_heads(Var(linear(x, w).value().reshape({B, h, 1, head_dim_})), heads_ / h).value();
  };
  input_ = x;
  const Tensor o = attend_step(heads(wq_, heads_), heads(wk_, kv_heads_), heads(wv_, kv_heads_), state, ctx);
  input_ = Var();
  return linear(Var(o.reshape({B, 1, d_model_})), wo_).value();
}

}  // namespace ab
