// hgrn2 — HGRN2: a gated linear RNN whose state is expanded by an outer product, so that it is
// gated linear attention with the forget gate f as the decay and 1 - f as the key.
// Qin, Yang, Sun, Shen, Li, Sun & Zhong 2024, "HGRN2: Gated Linear RNNs with State Expansion"
// (COLM), eq. 4-5; layer as flash-linear-attention's fla/layers/hgrn2.py (HGRN2Attention; read for
// facts, not copied): per head, the forget width dk = expand_ratio (fla: 128), the input width
// dv = D / H,
//   q = SiLU(x Wq),  f = lb + (1 - lb) sigmoid(x Wf) (per key channel),  i = x Wi,
//   S_t = diag(f_t) S_{t-1} + (1 - f_t) i_t^T,  o_t = S_t^T q_t dk^-1/2,   y = Norm_head(o) Wo.
// lb is the layer's forget-gate lower bound; fla's HGRN2 model learns one per layer as a
// cumulative softmax over the depth (0 in the first layer). A mixer here does not see the others,
// so lb is a fixed parameter (`lower_bound`, default 0 = fla's first layer). log f is computed as
// logsigmoid(z) + softplus(log lb - z) (the same value, no log of a sum) and 1 - f = (1 - lb) sigmoid(-z).
// The per-head norm is a LayerNorm over dv with an affine shared by the heads (fla: RMSNorm).
// Kernel: ab::gated_linear_attention with the decay per key dimension (chunked: O(N C dk + N dk dv)
// per head, sub-blocks for the decays; parallel and recurrent forms for checking); saves its inputs.
// Capabilities: causal with decoding (state S [B, H, dk, dv]); bidirectional = causal plus
// anti-causal scan summed (not in the paper); padding mask (padded keys zeroed, decay 1).
#include <cmath>
#include <string>

#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/variant.hpp"
#include "gla_family.hpp"

namespace {

class Hgrn2 final : public ab_gla_family::Layer {
 public:
  explicit Hgrn2(const ab::MixerConfig& cfg)
      : Layer(cfg, cfg.params.at("expand_ratio").get<int64_t>(), input_width(cfg.d_model, cfg.heads)) {
    const int64_t D = d_model_, Dk = heads_ * dk_;
    lower_bound_ = static_cast<float>(cfg.params.at("lower_bound").get<double>());
    wq_ = add_weight("wq", D, Dk, 0);
    wf_ = add_weight("wf", D, Dk, 1);
    wi_ = add_weight("wi", D, D, 2);
    wo_ = add_weight("wo", D, D, 3);
    add_head_norm();
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab_gla_family::family_spec(
        "hgrn2",
        "HGRN2: gated linear RNN with outer-product state expansion (forget gate as decay, 1 - f as key)",
        "Qin et al. 2024, HGRN2: Gated Linear RNNs with State Expansion",
        "the recurrence",
        {
            ab::int_param("expand_ratio", 128,
                          "forget (key) width per head: the state is expand_ratio x d_model/heads (fla: 128)", 1,
                          1024),
            ab::num_param("lower_bound", 0.0,
                          "lower bound of the forget gate (fla learns one per layer; 0 in the first)", 0.0, 0.99),
        });
    s.check_params = ab::Json{{"chunk", 3}, {"expand_ratio", 4}, {"lower_bound", 0.3}};
    s.cost = [](const ab::CostArgs& a) {
      const auto& p = *a.params;
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const double dk = double(p.at("expand_ratio").get<int64_t>()), dv = D / H, Dk = H * dk;
      const std::string form = p.at("form").get<std::string>();
      const double dirs = a.causal ? 1 : 2;
      const double mix = ab_gla_family::scan_flops(p, N, dk, dv);  // per (batch, head, direction), as gla
      ab::Cost c;
      c.flops = 2 * B * N * D * (2 * Dk + 2 * D) + dirs * B * H * mix + 12 * B * N * Dk + 10 * B * N * D;
      // Saved: x Wq, SiLU(q), the scaled head-major q, x Wf, the gate and k in head-major copies:
      // 6 B N Dk (measured by the conformance suite's trace); i, the output before and after the
      // norm (3 B N D) and the norm's statistics (2 B N H).
      c.activation_bytes = 4 * (6 * B * N * Dk + 3 * B * N * D + 2 * B * N * H);
      c.state_bytes = 4 * B * H * dk * dv;
      // Peak: the gate's transient pieces (about 3 B N Dk) and, per direction, the scan's dq, dk
      // and gate gradients (about 5 B N Dk), part of dv and the projections' gradients.
      c.peak_bytes = c.activation_bytes + 4 * 3 * B * N * Dk + 4 * dirs * (5 * B * N * Dk + 0.75 * B * N * D + D * D);
      if (form == "parallel") c.peak_bytes += 4 * 2 * N * N;
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const Proj p = project(x, ctx.key_mask);
    return output(ab::gated_linear_attention_mix(p.q, p.k, p.v, p.log_f, opt_, ctx.causal));
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<ab::GatedLinearState>(batch, heads_, dk_, dv_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    const Proj p = project(ab::Var(x_t), nullptr);
    auto& st = static_cast<ab::GatedLinearState&>(state);
    return output(ab::Var(st.step(p.q.value(), p.k.value(), p.v.value(), p.log_f.value()))).value();
  }

 private:
  struct Proj {
    ab::Var q, k, v;  // [B, H, N, dk], [B, H, N, dk], [B, H, N, dv]
    ab::Var log_f;    // [B, H, N, dk]
  };

  Proj project(const ab::Var& x, const ab::Tensor* key_mask) {
    const int64_t B = x.dim(0), N = x.dim(1);
    const ab::Var z = ab::linear(x, wf_);
    ab::Var log_f = ab::log_sigmoid(z);
    if (lower_bound_ > 0.f)  // log(lb + (1 - lb) sigmoid(z)) = logsigmoid(z) + softplus(log lb - z)
      log_f = ab::add(log_f, ab::softplus(ab::add_scalar(ab::scale(z, -1.f), std::log(lower_bound_))));
    Proj p;
    p.q = ab::scale(heads(ab::silu(ab::linear(x, wq_)), dk_), 1.0f / std::sqrt(static_cast<float>(dk_)));
    p.k = heads(ab::scale(ab::sigmoid(ab::scale(z, -1.f)), 1.f - lower_bound_), dk_);  // 1 - f
    p.v = heads(ab::linear(x, wi_), dv_);
    p.log_f = heads(log_f, dk_);
    if (key_mask) {
      const ab::Var keep(ab::keep_flags(key_mask, {B, 1, N, 1}));
      p.k = ab::mul(p.k, keep);
      p.log_f = ab::mul(p.log_f, keep);
    }
    return p;
  }

  // o: [B, H, N, dv] -> [B, N, D]
  ab::Var output(const ab::Var& o) { return ab::linear(merged_norm(o), wo_); }

  // The input (value) width per head, d_model / heads.
  static int64_t input_width(int64_t D, int64_t H) {
    if (H <= 0 || D % H != 0) {
      throw ab::UsageError("hgrn2: d_model = " + std::to_string(D) + " must be a multiple of model.heads = " +
                           std::to_string(H) + " (the input width per head is d_model / heads)");
    }
    return D / H;
  }

  float lower_bound_ = 0.f;
  ab::Var wf_, wi_, wo_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Hgrn2);
