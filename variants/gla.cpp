// gla — gated linear attention with a data-dependent decay per key dimension.
// Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training" (ICML);
// defaults of flash-linear-attention's GatedLinearAttention (expand_k 0.5, expand_v 1, low-rank
// gate 16, gate_logit_normalizer 16, output gate swish).
//   q = x Wq dk^-1/2, k = x Wk (heads of dk = expand_k D / H), v = x Wv (heads of dv = expand_v D / H),
//   log alpha_t = logsigmoid(x_t W1 W2 + b) / tau  in (-inf, 0]^dk  (alpha = sigmoid(.)^(1/tau)),
//   S_t = diag(alpha_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t,
//   y = (Norm_head(o) * swish(x Wg)) Wo.
// The per-head norm is a LayerNorm over dv with an affine shared by the heads (fla: RMSNorm).
// Forms (parameter `form`): chunked (default, O(N C dk + N dk dv) time; decays relative to the
// chunk start, so no exp of a cumulative gate can overflow), parallel (O(N^2 dk), N x N buffer),
// recurrent (O(N dk dv)); ab::gated_linear_attention saves only q, k, v and the gates: O(B N D)
// memory. The gate gradient comes from the reverse cumulative sum of q * dq - k * dk.
// Capabilities: causal with decoding (state S [B, H, dk, dv]); bidirectional = causal scan plus
// anti-causal scan summed (not in the paper; the token's own term counts twice); padding mask
// (padded keys are zeroed and their gates set to 1, so they neither add to nor decay the state).
#include <cmath>
#include <string>

#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/variant.hpp"
#include "gla_family.hpp"
#include "head_widths.hpp"

namespace {

class Gla final : public ab_gla_family::Layer {
 public:
  explicit Gla(const ab::MixerConfig& cfg) : Layer(cfg, widths(cfg).dk, widths(cfg).dv) {
    const auto& p = cfg.params;
    const int64_t D = d_model_, Dk = heads_ * dk_, Dv = heads_ * dv_;
    rank_ = p.at("gate_low_rank").get<int64_t>();
    inv_tau_ = ab_gla_family::inverse_gate_normalizer(p);
    add_qkv();
    wg_ = add_weight("wg", D, Dv, 3);
    wo_ = add_weight("wo", Dv, D, 4);
    w1_ = add_weight("gate_w1", D, rank_, 5);
    w2_ = add_weight("gate_w2", rank_, Dk, 6);
    b_ = add_param("gate_bias", ab::Tensor::zeros({Dk}));
    add_head_norm();
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab_gla_family::family_spec(
        "gla", "gated linear attention: data-dependent decay per key dimension, chunked scan",
        "Yang et al. 2024, Gated Linear Attention Transformers with Hardware-Efficient Training",
        "the recurrence",
        ab_gla_family::with_widths(
            {}, 0.5, 1.0,
            {
                ab::int_param("gate_low_rank", 16, "rank of the gate projection W1 W2 (fla: 16)", 1, 1024),
                ab::num_param("gate_normalizer", 16.0, "tau: log alpha = logsigmoid(.) / tau (fla: 16)", 1.0, 1024.0),
            }));
    s.check_params = ab::Json{{"chunk", 3}};  // several chunks, the last one partial, at N = 8
    s.cost = [](const ab::CostArgs& a) {
      const auto& p = *a.params;
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const double Dk = std::round(D * p.at("expand_k").get<double>()), Dv = std::round(D * p.at("expand_v").get<double>());
      const double dk = Dk / H, dv = Dv / H, r = double(p.at("gate_low_rank").get<int64_t>());
      const std::string form = p.at("form").get<std::string>();
      const double dirs = a.causal ? 1 : 2;
      const double mix = ab_gla_family::scan_flops(p, N, dk, dv);  // per (batch, head, direction)
      ab::Cost c;
      c.flops = 2 * B * N * (D * (2 * Dk + 2 * Dv) + Dv * D + D * r + r * Dk) + dirs * B * H * mix + 10 * B * N * (Dk + Dv);
      // Saved: q, k, the gates and the logsigmoid's input (4 B N Dk), the low-rank activations
      // (B N r), v, the output before and after the norm, the swish gate's input and output, the
      // gated output (6 B N Dv) and the norm's mean and variance (2 B N H).
      c.activation_bytes = 4 * (4 * B * N * Dk + B * N * r + 6 * B * N * Dv + 2 * B * N * H);
      c.state_bytes = 4 * B * H * dk * dv;
      // Peak in the scan's backward, per direction: dq, dk, the gates' and the log-sigmoid's
      // gradients (about 5 B N Dk, key-width), part of dv (B N Dv) on top of the saved tensors,
      // and the projections' gradients; parallel: also the [N, N] scores and their gradient of
      // each running (batch, head) task (two).
      c.peak_bytes = c.activation_bytes + 4 * dirs * (5 * B * N * Dk + 0.75 * B * N * Dv + D * D);
      if (form == "parallel") c.peak_bytes += 4 * 2 * N * N;
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    Proj p = project(x, ctx.key_mask);
    const ab::Var o = ab::gated_linear_attention_mix(p.q, p.k, p.v, p.log_alpha, opt_, ctx.causal);  // [B, H, N, dv]
    return output(o, p.gate);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<ab::GatedLinearState>(batch, heads_, dk_, dv_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    Proj p = project(ab::Var(x_t), nullptr);
    const ab::Tensor o = static_cast<ab::GatedLinearState&>(state).step(p.q.value(), p.k.value(), p.v.value(),
                                                                        p.log_alpha.value());
    return output(ab::Var(o), p.gate).value();
  }

 private:
  struct Proj {
    ab::Var q, k, v;   // [B, H, N, dk], [B, H, N, dk], [B, H, N, dv]
    ab::Var log_alpha;  // [B, H, N, dk]
    ab::Var gate;       // swish(x Wg) [B, N, H dv]
  };

  Proj project(const ab::Var& x, const ab::Tensor* key_mask) {
    const int64_t B = x.dim(0), N = x.dim(1);
    Proj p;
    p.q = ab::scale(heads(ab::linear(x, wq_), dk_), 1.0f / std::sqrt(static_cast<float>(dk_)));
    p.k = heads(ab::linear(x, wk_), dk_);
    p.v = heads(ab::linear(x, wv_), dv_);
    p.log_alpha = heads(ab::log_sigmoid(ab::linear(ab::linear(x, w1_), w2_, b_), inv_tau_), dk_);
    if (key_mask) {
      const ab::Var keep(ab::keep_flags(key_mask, {B, 1, N, 1}));
      p.k = ab::mul(p.k, keep);
      p.log_alpha = ab::mul(p.log_alpha, keep);
    }
    p.gate = ab::silu(ab::linear(x, wg_));
    return p;
  }

  // o: [B, H, N, dv], gate [B, N, H dv] -> [B, N, D]
  ab::Var output(const ab::Var& o, const ab::Var& gate) {
    return ab::linear(ab::mul(merged_norm(o), gate), wo_);
  }

  static ab_head_widths::HeadWidths widths(const ab::MixerConfig& cfg) { return ab_head_widths::head_widths(cfg, "gla"); }

  int64_t rank_ = 0;
  float inv_tau_ = 1.f / 16;
  ab::Var wg_, wo_, w1_, w2_, b_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Gla);
