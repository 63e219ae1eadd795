// deltanet and gated_deltanet — linear attention with the delta rule: the state is corrected towards
// v_t along k_t instead of only accumulating k_t v_t^T; the gated form also decays the whole state.
// One file for the two registry entries: the layers differ only in the gate, the output gate and
// their defaults, and gated_deltanet with g = 0 is deltanet (one kernel, ab::delta_rule).
//
// deltanet: Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing Linear Transformers with the Delta
// Rule over Sequence Length" (NeurIPS); defaults of flash-linear-attention's DeltaNet layer
// (expand_k 1, expand_v 1, use_beta, short convolutions of 4 taps with SiLU on q, k and v,
// qk_norm l2, output norm, no output gate).
// gated_deltanet: Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with
// Delta Rule" (ICLR); defaults of fla's GatedDeltaNet layer (expand_v 2, the same short
// convolutions and L2 norms, output gate, A = U(0, 16), dt_bias from dt log-uniform in [1e-3, 1e-1]).
//   q, k, v = SiLU(causal short conv(x Wq | x Wk | x Wv))   (depthwise, no bias; fla's ShortConvolution)
//   q <- L2norm_head(q) dk^-1/2 (the kernels' default scale in fla), k <- L2norm_head(k),
//   beta = sigmoid(x Wb) [B, N, H],  gated: g = -exp(A_log) softplus(x Wa + dt_bias) <= 0 [B, N, H],
//   S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t  (g = 0: deltanet)
//   y = Norm_head(o) Wo,   gated: y = (Norm_head(o) * SiLU(x Wg)) Wo.
// The per-head norm is a LayerNorm over dv with an affine shared by the heads (fla: RMSNorm, fused
// with the swish gate in the gated layer); fla's unused D parameter of GatedDeltaNet is left out.
// Projections Xavier-uniform (fla: gain 2^-2.5), conv taps U(+-1/sqrt(taps)) (PyTorch's Conv1d).
// Kernel: the chunked WY form (`chunk` positions per chunk; decays relative to the chunk start, every
// exp <= 1), O(N C (dk + dv) + N dk dv) per head as batched GEMMs; it saves only its inputs.
// Capabilities: causal with decoding (state: S [B, H, dk, dv] and the last taps - 1 conv inputs of
// q, k, v); bidirectional = centred conv, then the causal plus the anti-causal scan summed (not in
// the papers; the token's own term counts twice); padding mask (padded inputs are zeroed and their
// beta and g set to 0, so they leave the state unchanged).
#include <cmath>
#include <functional>
#include <string>

#include "attnbench/kernels/delta_rule.hpp"
#include "attnbench/kernels/gated_linear_attention.hpp"  // softplus
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"
#include "delta_rule_layer.hpp"

namespace {

template <bool kGated>
class DeltaNetLayer final : public ab_delta_layer::DeltaRuleLayer {
  static constexpr const char* kName = kGated ? "gated_deltanet" : "deltanet";

 public:
  explicit DeltaNetLayer(const ab::MixerConfig& cfg) : DeltaRuleLayer(cfg, kName) {
    const auto& p = cfg.params;
    const int64_t D = d_model_, Dv = heads_ * dv_;
    if (!kGated) return;
    wa_ = add_param("wa", ab::init_xavier_uniform(D, heads_, stream(8)));
    wg_ = add_param("wg", ab::init_xavier_uniform(D, Dv, stream(9)));
    const double dt_min = p.at("dt_min").get<double>(), dt_max = p.at("dt_max").get<double>();
    const double a_max = p.at("a_init_max").get<double>();
    ab::Tensor dt_bias = ab::Tensor::empty({heads_}), a_log = ab::Tensor::empty({heads_});
    ab::RngStream r = stream(10);
    for (int64_t h = 0; h < heads_; ++h) {
      double dt = std::exp(std::log(dt_min) + r.uniform_double() * (std::log(dt_max) - std::log(dt_min)));
      dt = std::max(dt, 1e-4);
      dt_bias[h] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus^-1(dt)
      a_log[h] = static_cast<float>(std::log(std::max(1e-4, r.uniform_double() * a_max)));  // A = U(0, a_max)
    }
    dt_bias_ = add_param("dt_bias", dt_bias);
    a_log_ = add_param("A_log", a_log);
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s;
    s.name = kName;
    s.family = "recurrent";
    if (kGated) {
      s.summary = "Gated DeltaNet: the delta rule with a data-dependent scalar decay per head, output gate";
      s.reference = "Yang, Kautz & Hatamizadeh 2025, Gated Delta Networks: Improving Mamba2 with Delta Rule";
    } else {
      s.summary = "DeltaNet: linear attention with the delta-rule state update, chunked WY kernel, short convs";
      s.reference = "Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length";
    }
    const double ev = kGated ? 2.0 : 1.0;
    s.params = {
        ab::int_param("chunk", 64, "chunk length of the chunked WY form (fla: 64)", 1, 4096),
        ab::num_param("expand_k", 1.0, "key width as a fraction of d_model (fla: 1); expand_k D / heads must be whole",
                      0.0625, 4),
        ab::num_param("expand_v", ev,
                      std::string("value width as a fraction of d_model (fla: ") + (kGated ? "2" : "1") +
                          "); expand_v D / heads must be whole",
                      0.0625, 4),
        ab::int_param("conv_size", 4, "taps of the short convolutions on q, k and v (fla: 4)", 1, 8),
    };
    if (kGated) {
      s.params.push_back(ab::num_param("dt_min", 1e-3, "smallest initial step size", 1e-5, 1.0));
      s.params.push_back(ab::num_param("dt_max", 1e-1, "largest initial step size", 1e-5, 1.0));
      s.params.push_back(ab::num_param(
          "a_init_max", 16.0, "-A_h = exp(A_log_h) is initialised uniform in (0, a_init_max] (fla: 16)", 1e-3, 100.0));
    }
    s.caps = {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true};
    s.check_params = ab::Json{{"chunk", 3}};  // several chunks, the last one partial, at N = 8
    s.cost = cost;
    return s;
  }

  static ab::Cost cost(const ab::CostArgs& a) {
    if (!kGated) return ab_delta_layer::delta_layer_cost(a, ab_delta_layer::Decay::none, 0, 0);
    const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
    const double Dv = std::round(D * a.params->at("expand_v").get<double>());
    // x Wa and x Wg; saved: the gate's logits, softplus and decay (per head), x Wg and SiLU(x Wg)
    return ab_delta_layer::delta_layer_cost(a, ab_delta_layer::Decay::head, 2 * B * N * D * (Dv + H), 5 * H + 2 * Dv);
  }

 private:
  // g = -exp(A_log) softplus(x Wa + dt_bias): [B, H, N]; none for deltanet
  ab::Var decay(const ab::Var& x) const override {
    if (!kGated) return ab::Var();
    return ab::permute(ab::mul(ab::softplus(ab::linear(x, wa_, dt_bias_)), ab::scale(ab::exp(a_log_), -1.f)), {0, 2, 1});
  }
  ab::Var output_gate(const ab::Var& y, const ab::Var& x) const override {
    return kGated ? ab::mul(y, ab::silu(ab::linear(x, wg_))) : y;
  }

  ab::Var wa_, wg_, dt_bias_, a_log_;  // gated only
};

using DeltaNet = DeltaNetLayer<false>;
using GatedDeltaNet = DeltaNetLayer<true>;

}  // namespace

ATTNBENCH_REGISTER_VARIANT(DeltaNet);
ATTNBENCH_REGISTER_VARIANT(GatedDeltaNet);
