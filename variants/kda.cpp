// kda — Kimi Delta Attention: the gated delta rule with a decay per key dimension (channel-wise)
// instead of one per head. Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Hybrid
// Architecture" (arXiv 2510.26692), eq. 1; layer as flash-linear-attention's fla/layers/kda.py
// (KimiDeltaAttention; read for facts, not copied):
//   q, k, v = SiLU(causal short conv(x Wq | x Wk | x Wv))   (depthwise, no bias; 4 taps)
//   q <- L2norm_head(q) dk^-1/2, k <- L2norm_head(k),  beta = sigmoid(x Wb) [B, N, H]
//   g = -exp(A_log_h) softplus(x Wf1 Wf2 + dt_bias) [B, N, H, dk]   (low-rank f_proj, rank dv)
//   S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t
//   y = (Norm_head(o) * sigmoid(x Wg1 Wg2 + bg)) Wo                  (low-rank output gate, rank dv)
// A = U(1, 16) (fla), dt_bias per key channel from dt log-uniform in [1e-3, 1e-1].
// Deliberate differences: the per-head norm is a LayerNorm over dv with an affine shared by the
// heads (fla: a gated RMSNorm), as in this registry's gated_deltanet; fla's gate lower bound (an
// optional clamp for its tensor-core kernel) is left out.
// Kernel: ab::delta_rule with log_alpha [B, H, N, dk] — the chunked WY form whose K K^T and Q K^T
// blocks carry the per-dimension decays (O(N C dk) exps and multiply-adds per head), hand-written
// backward, saves only its inputs. Decay equal across channels = gated_deltanet's kernel (tested).
// Capabilities: causal with decoding (state S [B, H, dk, dv] plus the conv tails); bidirectional =
// centred conv, causal plus anti-causal scan summed (not in the paper); padding mask (padded
// inputs zeroed, beta and g set to 0 so they leave the state unchanged).
#include <cmath>
#include <functional>
#include <string>

#include "attnbench/kernels/delta_rule.hpp"
#include "attnbench/kernels/gated_linear_attention.hpp"  // softplus
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"
#include "delta_rule_layer.hpp"

namespace {

class Kda final : public ab_delta_layer::DeltaRuleLayer {
 public:
  explicit Kda(const ab::MixerConfig& cfg) : DeltaRuleLayer(cfg, "kda") {
    const auto& p = cfg.params;
    const int64_t D = d_model_, Dk = heads_ * dk_, Dv = heads_ * dv_;
    wf1_ = add_param("wf1", ab::init_xavier_uniform(D, dv_, stream(8)));
    wf2_ = add_param("wf2", ab::init_xavier_uniform(dv_, Dk, stream(9)));
    wg1_ = add_param("wg1", ab::init_xavier_uniform(D, dv_, stream(10)));
    wg2_ = add_param("wg2", ab::init_xavier_uniform(dv_, Dv, stream(11)));
    bg_ = add_param("bg", ab::Tensor::zeros({Dv}));
    const double dt_min = p.at("dt_min").get<double>(), dt_max = p.at("dt_max").get<double>();
    ab::Tensor dt_bias = ab::Tensor::empty({heads_, dk_}), a_log = ab::Tensor::empty({heads_, 1});
    ab::RngStream r = stream(12);
    for (int64_t i = 0; i < Dk; ++i) {
      double dt = std::exp(std::log(dt_min) + r.uniform_double() * (std::log(dt_max) - std::log(dt_min)));
      dt = std::max(dt, 1e-4);
      dt_bias[i] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus^-1(dt)
    }
    for (int64_t h = 0; h < heads_; ++h) a_log[h] = static_cast<float>(std::log(1.0 + 15.0 * r.uniform_double()));
    dt_bias_ = add_param("dt_bias", dt_bias);
    a_log_ = add_param("A_log", a_log);
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "kda", "recurrent", "Kimi Delta Attention: the gated delta rule with a decay per key channel, low-rank gates",
        "Kimi Team 2025, Kimi Linear: An Expressive, Efficient Hybrid Architecture (arXiv 2510.26692)",
        {
            ab::int_param("chunk", 64, "chunk length of the chunked WY form (fla: 64)", 1, 4096),
            ab::num_param("expand_k", 1.0, "key width as a fraction of d_model; expand_k D / heads must be whole",
                          0.0625, 4),
            ab::num_param("expand_v", 1.0,
                          "value width as a fraction of d_model (fla: 1); expand_v D / heads must be whole", 0.0625, 4),
            ab::int_param("conv_size", 4, "taps of the short convolutions on q, k and v (fla: 4)", 1, 8),
            ab::num_param("dt_min", 1e-3, "smallest initial step size", 1e-5, 1.0),
            ab::num_param("dt_max", 1e-1, "largest initial step size", 1e-5, 1.0),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.check_params = ab::Json{{"chunk", 3}};  // several chunks, the last one partial, at N = 8
    s.cost = cost;
    return s;
  }

  static ab::Cost cost(const ab::CostArgs& a) {
    const auto& p = *a.params;
    const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
    const double Dk = std::round(D * p.at("expand_k").get<double>()), Dv = std::round(D * p.at("expand_v").get<double>());
    const double dv = Dv / H;
    // The low-rank decay and output gate (x Wf1 Wf2, x Wg1 Wg2) and their element-wise ops; saved:
    // the gate path (low-rank hidden, logits, softplus, g: 3 Dk + dv) and the output gate
    // (hidden, logits, sigmoid: 2 Dv + dv).
    const double gate_flops = 2 * B * N * dv * (2 * D + Dk + Dv) + 10 * B * N * (Dk + Dv);
    return ab_delta_layer::delta_layer_cost(a, ab_delta_layer::Decay::channel, gate_flops, 3 * Dk + 2 * Dv + 2 * dv);
  }

 private:
  // g = -exp(A_log_h) softplus(x Wf1 Wf2 + dt_bias): [B, N, H, dk] -> [B, H, N, dk]
  ab::Var decay(const ab::Var& x) const override {
    const int64_t B = x.dim(0), N = x.dim(1);
    const ab::Var f = ab::linear(x, wf1_);  // [B, N, dv]
    const ab::Var logits = ab::add(ab::reshape(ab::linear(f, wf2_), {B, N, heads_, dk_}), dt_bias_);
    return ab::permute(ab::mul(ab::softplus(logits), ab::scale(ab::exp(a_log_), -1.f)), {0, 2, 1, 3});
  }
  // y * sigmoid(x Wg1 Wg2 + bg)
  ab::Var output_gate(const ab::Var& y, const ab::Var& x) const override {
    return ab::mul(y, ab::sigmoid(ab::linear(ab::linear(x, wg1_), wg2_, bg_)));
  }

  ab::Var wf1_, wf2_, wg1_, wg2_, bg_, dt_bias_, a_log_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Kda);
