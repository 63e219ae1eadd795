#pragma once
// The layer around the delta-rule kernel that deltanet, gated_deltanet and kda share (the three
// follow flash-linear-attention's layers):
//   q, k, v = SiLU(short conv(x Wq | x Wk | x Wv)),  q <- L2norm_head(q) dk^-1/2,  k <- L2norm_head(k),
//   beta = sigmoid(x Wb) [B, H, N],  o = ab::delta_rule_mix(q, k, v, beta, g),
//   y = output_gate(Norm_head(o), x) Wo.
// A layer supplies its decay g (none, one per head [B, H, N] or one per key channel [B, H, N, dk])
// and its output gate; padded positions are zeroed and get beta = g = 0, so they leave the state
// unchanged. Decoding keeps S [B, H, dk, dv] and the last taps - 1 inputs of the three convolutions.
#include <algorithm>
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

// The decay a delta-rule layer feeds the kernel: none (deltanet), one per head (gated_deltanet)
// or one per key dimension (kda).
enum class Decay { none, head, channel };

// The cost model of a delta-rule layer; `gate_flops` (forward) and `gate_floats` (saved per
// position) are the layer's own decay and output-gate paths beyond the shared layer.
inline ab::Cost delta_layer_cost(const ab::CostArgs& a, Decay decay, double gate_flops, double gate_floats) {
  const auto& p = *a.params;
  const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
  const double Dk = std::round(D * p.at("expand_k").get<double>()), Dv = std::round(D * p.at("expand_v").get<double>());
  const double dk = Dk / H, dv = Dv / H, taps = double(p.at("conv_size").get<int64_t>());
  const double C = std::min<double>(N, double(p.at("chunk").get<int64_t>()));
  const double Np = std::ceil(N / C) * C;  // padded to whole chunks
  const double dirs = a.causal ? 1 : 2;
  // Per position of one (batch, head, direction), multiply-adds: K K^T, Q K^T and W = T Kb (3 C dk),
  // U = T Vb and P U~ (2 C dv), T by substitution (C^2 / 6), U~, the state update and Q S (3 dk dv).
  // Per-key-dimension decays: the rows of a sub-block (16) of K K^T and Q K^T reach up to the end
  // of theirs (on average C / 2 + 8 columns instead of C), and the decay factors of those products
  // take (subs + 3) / 2 exps per position and key dimension (one op each).
  const double L = 16, subs = std::ceil(C / L);
  const bool channel = decay == Decay::channel;
  const double pairs = channel ? 2 * (C / 2 + L / 2) * dk : 2 * C * dk, exps = channel ? dk * (subs + 3) / 2 : 0;
  const double mix = Np * (2 * (pairs + C * dk + 2 * C * dv + C * C / 6 + 3 * dk * dv) + exps);
  ab::Cost c;
  c.flops = 2 * B * N * D * (2 * Dk + Dv + H) + 2 * B * N * Dv * D + 2 * B * N * (2 * Dk + Dv) * taps +
            dirs * B * H * mix + 10 * B * N * (2 * Dk + Dv) + gate_flops;
  // Saved (floats per position): the projections (conv inputs), the conv outputs (SiLU inputs),
  // the SiLU outputs and the head-major normalised q, k and v; beta's logits and beta; the
  // output before and after the norm and the norm's statistics; the layer's gates.
  c.activation_bytes = 4 * B * N * (5 * Dk + 4 * Dv + 3 * Dv + 4 * H + gate_floats);
  c.state_bytes = 4 * B * H * dk * dv + 4 * B * (taps - 1) * (2 * Dk + Dv);
  // Peak in the kernel's backward (one direction at a time: the scratch of one is freed before
  // the other runs): key-width (X), value-width (Y) and chunk-width (Z) buffers over the padded
  // length, the chunk-start states and their gradients. Per-key-dimension decays add the
  // cumulative decays, Gamma K, the gate gradient, the sub-block factors (K o El; Q o El: 2, K o Er:
  // about 2.5) and their products' gradients (measured: about 20 key-width buffers in all).
  const double X = B * H * Np * dk, Y = B * H * Np * dv, Z = B * H * Np * C, SS = B * H * (Np / C) * dk * dv;
  const double key_buffers = decay == Decay::none ? 9 : decay == Decay::head ? 11 : 20;
  c.peak_bytes = c.activation_bytes + 4 * (key_buffers * X + 5 * Y + 6 * Z + 2 * SS) + 4 * D * (2 * Dk + 2 * Dv);
  return c;
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
