#pragma once
// The Based family (based, rebased): one mixer skeleton, the variants differ only in the feature
// map phi applied to the projected queries and keys.
//   u = x + short_conv(x)                     (depthwise, conv_taps taps; causal or centred)
//   q = u W_q, k = u W_k  [B, H, N, f],  v = u W_v  [B, H, N, d]
//   out_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps)   (ab::linear_attention)
//   y = merge_heads(out) W_o
// Padding: padded tokens are zeroed before the convolution and padded keys are masked. Decode: the
// [F, d] linear-attention state and the last conv_taps - 1 inputs.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace ab_based {

// x: [B, H, N, f] -> [B, H, N, f^2] = s vec(x x^T), so that <outer(x), outer(y)> = s^2 (x.y)^2
// (the full outer product, not the symmetric half: simpler, and the GEMMs do not care).
inline ab::Var outer_features(const ab::Var& x, float s) {
  const int64_t B = x.dim(0), H = x.dim(1), N = x.dim(2), f = x.dim(3);
  const ab::Var outer = ab::mul(ab::reshape(x, {B, H, N, f, 1}), ab::reshape(x, {B, H, N, 1, f}));
  return ab::reshape(ab::scale(outer, s), {B, H, N, f * f});
}

// The parameters every member has; eps is the normaliser's (reference defaults differ).
inline std::vector<ab::ParamSpec> common_params(double eps_default, const std::string& eps_doc) {
  return {ab::int_param("feature_dim", 16, "projected q/k dimension f per head (f^2 quadratic features)", 1, 64),
          ab::int_param("conv_taps", 3, "taps of the short depthwise convolution (0 = no convolution)", 0, 64),
          ab::num_param("eps", eps_default, eps_doc, 0.0, 1.0)};
}

// What a member's feature map adds to the cost: F features per token and head, `map_flops` FLOPs
// per token and head to make them from the f projected values, `map_saved` floats per token and
// head saved for backward besides the features (q and k counted twice: pass both).
struct FeatureCost {
  double F, map_flops, map_saved;
};

inline ab::Cost family_cost(const ab::CostArgs& a, const FeatureCost& fc) {
  const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
  const double f = static_cast<double>(a.params->at("feature_dim").get<int64_t>());
  const double K = static_cast<double>(a.params->at("conv_taps").get<int64_t>());
  const double F = fc.F;
  ab::Cost c;
  // conv + projections (q, k to H f; v, o) + features + state and readout + normaliser
  c.flops = 2 * B * N * D * K + 2 * B * N * D * (2 * H * f + 2 * D) + 2 * B * H * N * fc.map_flops +
            4 * B * H * N * F * d + 4 * B * H * N * F;
  // Saved: the projections' input u (B N D, when the conv is on), the scaled q and k
  // (2 B H N f) and their features (2 B H N F), what the map saves, v and the merged heads
  // (2 B N D); bidirectional also S [F, d] and z [F] per head.
  c.activation_bytes = 4 * ((K > 0 ? 1 : 0) * B * N * D + 2 * B * H * N * f + 2 * B * H * N * F +
                            B * H * N * fc.map_saved + 2 * B * N * D + (a.causal ? 0 : B * H * (F * d + F)));
  c.state_bytes = 4 * (B * H * (F * d + F) + (K > 0 ? B * (K - 1) * D : 0));
  // Peak at the end of the linear-attention backward: the features of q and k, dq~ and dk~
  // (4 B H N F), y, u, v, the upstream gradient per head, G, dv (6 B N D; 5 without the conv),
  // the scaled q, k (2 B H N f), what the map saves, 1 / den and c (2 B H N) and dWo.
  c.peak_bytes = 4 * (4 * B * H * N * F + (K > 0 ? 6 : 5) * B * N * D + 2 * B * H * N * f +
                      B * H * N * fc.map_saved + 2 * B * H * N + D * D);
  return c;
}

class BasedFamilyState final : public ab::DecodeState {
 public:
  BasedFamilyState(int64_t batch, int64_t heads, int64_t features, int64_t d, int64_t channels, int64_t taps)
      : attn(batch, heads, features, d) {
    if (taps > 0) conv = std::make_unique<ab::ShortConvState>(batch, channels, taps);
  }
  int64_t bytes() const override { return attn.bytes() + (conv ? conv->bytes() : 0); }
  ab::LinearAttentionState attn;
  std::unique_ptr<ab::ShortConvState> conv;
};

class BasedFamilyMixer : public ab::Mixer {
 public:
  BasedFamilyMixer(const ab::MixerConfig& cfg, const std::string& name)
      : d_model_(cfg.d_model),
        heads_(cfg.heads),
        head_dim_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0),
        f_(cfg.params.at("feature_dim").get<int64_t>()),
        taps_(cfg.params.at("conv_taps").get<int64_t>()),
        eps_(static_cast<float>(cfg.params.at("eps").get<double>())) {
    if (heads_ <= 0 || d_model_ % heads_ != 0)
      throw ab::UsageError(name + ": model.d_model must be a multiple of model.heads");
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    wq_ = add_param("wq", ab::init_xavier_uniform(d_model_, heads_ * f_, stream(0)));
    wk_ = add_param("wk", ab::init_xavier_uniform(d_model_, heads_ * f_, stream(1)));
    wv_ = add_param("wv", ab::init_xavier_uniform(d_model_, d_model_, stream(2)));
    wo_ = add_param("wo", ab::init_xavier_uniform(d_model_, d_model_, stream(3)));
    if (taps_ > 0) {
      conv_w_ = add_param("conv.w", ab::init_uniform({d_model_, taps_}, 1.0f / std::sqrt(static_cast<float>(taps_)), stream(4)));
      conv_b_ = add_param("conv.b", ab::Tensor::zeros({d_model_}));
    }
  }

  // x: [B, H, N, f] -> [B, H, N, feature_count()]
  virtual ab::Var feature_map(const ab::Var& x) const = 0;
  virtual int64_t feature_count() const = 0;

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1);
    ab::Var u = x;
    if (taps_ > 0) {
      ab::Var xm = x;
      if (ctx.key_mask) {  // zero padded tokens so the convolution cannot carry them to real ones
        xm = ab::mul(x, ab::Var(ab::keep_flags(ctx.key_mask, {B, N, 1})));
      }
      u = ab::add(x, ab::short_conv(xm, conv_w_, conv_b_, ctx.causal));  // [B, N, D]
    }
    auto heads = [&](const ab::Var& w, int64_t width) {  // [B, N, H * width] -> [B, H, N, width]
      return ab::permute(ab::reshape(ab::linear(u, w), {B, N, heads_, width}), {0, 2, 1, 3});
    };
    ab::LinearAttentionOptions opt;
    opt.feature = ab::FeatureMap::identity;
    opt.causal = ctx.causal;
    opt.eps = eps_;
    opt.key_mask = ctx.key_mask;
    const ab::Var o =
        ab::linear_attention(feature_map(heads(wq_, f_)), feature_map(heads(wk_, f_)), heads(wv_, head_dim_), opt);
    return ab::linear(ab::reshape(ab::permute(o, {0, 2, 1, 3}), {B, N, d_model_}), wo_);  // [B, N, D]
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<BasedFamilyState>(batch, heads_, feature_count(), head_dim_, d_model_, taps_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<BasedFamilyState&>(state);
    const int64_t B = x_t.dim(0);
    ab::Var u(x_t);
    if (taps_ > 0) {
      const ab::Tensor b = conv_b_.value();
      u = ab::add(u, ab::Var(st.conv->step(x_t, conv_w_.value(), &b)));
    }
    // With one position, [B, 1, H, w] is already the [B, H, 1, w] layout.
    auto heads = [&](const ab::Var& w, int64_t width) { return ab::reshape(ab::linear(u, w), {B, heads_, 1, width}); };
    const ab::Tensor o = st.attn.step(feature_map(heads(wq_, f_)).value(), feature_map(heads(wk_, f_)).value(),
                                      heads(wv_, head_dim_).value(), eps_);  // [B, H, 1, d]
    return ab::linear(ab::Var(o.reshape({B, 1, d_model_})), wo_).value();
  }

 protected:
  int64_t d_model_, heads_, head_dim_, f_, taps_;
  float eps_;
  ab::Var wq_, wk_, wv_, wo_, conv_w_, conv_b_;
};

}  // namespace ab_based
