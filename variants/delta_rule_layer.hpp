#pragma once
// The layer around the delta-rule kernel that deltanet, gated_deltanet and kda share (the three
// follow flash-linear-attention's layers):
//   q, k, v = SiLU(short conv(x Wq | x Wk | x Wv)),  q <- L2norm_head(q) dk^-1/2,  k <- L2norm_head(k),
//   beta = sigmoid(x Wb) [B, H, N],  o = ab::delta_rule_mix(q, k, v, beta, g),
//   y = output_gate(Norm_head(o), x) Wo.
// A layer supplies its decay g (none, one per head [B, H, N] or one per key channel [B, H, N, dk])
// and its output gate; padded positions are zeroed and get beta = g = 0, so they leave the state
// unchanged. Decoding keeps S [B, H, dk, dv] and the last taps - 1 inputs of the three convolutions.
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "attnbench/kernels/delta_rule.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"
#include "head_widths.hpp"

namespace ab_delta_layer {

class DeltaLayerState final : public ab::DecodeState {
 public:
  DeltaLayerState(int64_t batch, int64_t heads, int64_t dk, int64_t dv, int64_t taps)
      : s(batch, heads, dk, dv),
        conv{ab::ShortConvState(batch, heads * dk, taps), ab::ShortConvState(batch, heads * dk, taps),
             ab::ShortConvState(batch, heads * dv, taps)} {}
  int64_t bytes() const override { return s.bytes() + conv[0].bytes() + conv[1].bytes() + conv[2].bytes(); }
  ab::DeltaRuleState s;
  ab::ShortConvState conv[3];  // q, k, v
};

// The sizes a delta-rule layer's cost model starts from (from CostArgs and the resolved params).
struct CostSizes {
  double B, N, D, H;
  double Dk, Dv, dk, dv, taps;  // widths: all heads, per head; conv taps
  double C, Np, dirs;           // chunk, length padded to whole chunks, scan directions
};
inline CostSizes cost_sizes(const ab::CostArgs& a) {
  const auto& p = *a.params;
  CostSizes s;
  s.B = a.batch, s.N = a.length, s.D = a.d_model, s.H = a.heads;
  s.Dk = std::round(s.D * p.at("expand_k").get<double>()), s.Dv = std::round(s.D * p.at("expand_v").get<double>());
  s.dk = s.Dk / s.H, s.dv = s.Dv / s.H, s.taps = double(p.at("conv_size").get<int64_t>());
  s.C = std::min<double>(s.N, double(p.at("chunk").get<int64_t>()));
  s.Np = std::ceil(s.N / s.C) * s.C;
  s.dirs = a.causal ? 1 : 2;
  return s;
}

class DeltaRuleLayer : public ab::Mixer {
 public:
  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const bool causal = ctx.causal;
    auto conv = [&](int i, const ab::Var& in) { return ab::short_conv(in, cw_[i], ab::Var(), causal); };
    auto mix = [&](const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::Var& beta, const ab::Var& g) {
      return ab::delta_rule_mix(q, k, v, beta, g, opt_, causal);
    };
    return run(x, ctx.key_mask, conv, mix);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<DeltaLayerState>(batch, heads_, dk_, dv_, taps_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<DeltaLayerState&>(state);
    auto conv = [&](int i, const ab::Var& in) { return ab::Var(st.conv[i].step(in.value(), cw_[i].value(), nullptr)); };
    auto mix = [&](const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::Var& beta, const ab::Var& g) {
      return ab::Var(st.s.step(q.value(), k.value(), v.value(), beta.value(), g.value()));
    };
    return run(ab::Var(x_t), nullptr, conv, mix).value();
  }

 protected:
  // Reads expand_k, expand_v (head_widths: a UsageError naming `name` when they do not fit the
  // heads), conv_size and chunk; creates wq, wk, wv and their conv taps (init streams 0-5), wbeta
  // (6), wo (7) and the per-head norm's affine.
  DeltaRuleLayer(const ab::MixerConfig& cfg, const std::string& name)
      : d_model_(cfg.d_model), heads_(cfg.heads), seed_(cfg.seed), layer_(cfg.layer) {
    const auto& p = cfg.params;
    const int64_t D = d_model_;
    const ab_head_widths::HeadWidths w = ab_head_widths::head_widths(cfg, name);
    dk_ = w.dk;
    dv_ = w.dv;
    const int64_t Dk = heads_ * dk_, Dv = heads_ * dv_;
    taps_ = p.at("conv_size").get<int64_t>();
    opt_.chunk = p.at("chunk").get<int64_t>();
    const int64_t widths[3] = {Dk, Dk, Dv};
    const char* names[3] = {"q", "k", "v"};
    const float cb = 1.0f / std::sqrt(static_cast<float>(taps_));
    for (int i = 0; i < 3; ++i) {
      w_[i] = add_param(std::string("w") + names[i], ab::init_xavier_uniform(D, widths[i], stream(i)));
      cw_[i] = add_param(std::string("conv_") + names[i] + "_weight", ab::init_uniform({widths[i], taps_}, cb, stream(3 + i)));
    }
    wb_ = add_param("wbeta", ab::init_xavier_uniform(D, heads_, stream(6)));
    wo_ = add_param("wo", ab::init_xavier_uniform(Dv, D, stream(7)));
    norm_w_ = add_param("norm_weight", ab::Tensor::full({dv_}, 1.f));
    norm_b_ = add_param("norm_bias", ab::Tensor::zeros({dv_}));
  }

  // The layer's init stream `which` (8 onwards are free for the layer's own parameters).
  ab::RngStream stream(uint64_t which) const { return ab::RngStream(seed_, ab::Purpose::init, 1000 + layer_, which); }

  // x [B, N, D] -> the log decay g <= 0, [B, H, N] or [B, H, N, dk]; undefined for none.
  virtual ab::Var decay(const ab::Var& x) const = 0;
  // y [B, N, H dv] (after the per-head norm), x [B, N, D] -> [B, N, H dv]
  virtual ab::Var output_gate(const ab::Var& y, const ab::Var& x) const = 0;

  int64_t d_model_, heads_, dk_ = 0, dv_ = 0, taps_ = 4;
  ab::DeltaRuleOptions opt_;
  ab::Var w_[3], cw_[3], wb_, wo_, norm_w_, norm_b_;

 private:
  using ConvFn = std::function<ab::Var(int, const ab::Var&)>;
  using MixFn = std::function<ab::Var(const ab::Var&, const ab::Var&, const ab::Var&, const ab::Var&, const ab::Var&)>;

  ab::Var run(const ab::Var& x_in, const ab::Tensor* key_mask, const ConvFn& conv, const MixFn& mix) const {
    const int64_t B = x_in.dim(0), N = x_in.dim(1);
    const ab::Tensor keep = ab::keep_flags(key_mask, {B, N});  // undefined: no mask
    const ab::Var x = key_mask ? ab::mul(x_in, ab::Var(keep.reshape({B, N, 1}))) : x_in;
    auto heads = [&](const ab::Var& t, int64_t d) {  // [B, N, H d] -> [B, H, N, d]
      return ab::permute(ab::reshape(t, {B, N, heads_, d}), {0, 2, 1, 3});
    };
    ab::Var u[3];
    for (int i = 0; i < 3; ++i) u[i] = ab::silu(conv(i, ab::linear(x, w_[i])));
    const ab::Var q = ab::scale(ab::l2_normalize(heads(u[0], dk_)), 1.0f / std::sqrt(static_cast<float>(dk_)));
    const ab::Var k = ab::l2_normalize(heads(u[1], dk_));
    const ab::Var v = heads(u[2], dv_);
    ab::Var beta = ab::permute(ab::sigmoid(ab::linear(x, wb_)), {0, 2, 1});  // [B, H, N]
    ab::Var g = decay(x);
    if (key_mask) {
      beta = ab::mul(beta, ab::Var(keep.reshape({B, 1, N})));
      if (g.defined()) g = ab::mul(g, ab::Var(g.rank() == 3 ? keep.reshape({B, 1, N}) : keep.reshape({B, 1, N, 1})));
    }
    const ab::Var o = mix(q, k, v, beta, g);                                      // [B, H, N, dv]
    ab::Var y = ab::layer_norm(ab::permute(o, {0, 2, 1, 3}), norm_w_, norm_b_);  // [B, N, H, dv]
    return ab::linear(output_gate(ab::reshape(y, {B, N, heads_ * dv_}), x), wo_);
  }

  uint64_t seed_;
  int layer_;
};

}  // namespace ab_delta_layer
