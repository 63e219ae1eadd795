// gsa — Gated Slot Attention: a bounded memory of m slots per head, written with a gate and read
// with a softmax over the slots; two passes of gated linear attention with the softmax between.
// Zhang, Yang, Zhu, Zhang, Cui, Wang, Wang, Shi, Wang, Bi, Zhou & Fu 2024, "Gated Slot Attention
// for Efficient Linear-Time Sequence Modeling" (NeurIPS), eq. 8-10; layer as flash-linear-attention's
// fla/layers/gsa.py (defaults: 64 slots, swish feature map on q and k, gate_logit_normalizer 8,
// output norm, no output gate; read for facts, not copied):
//   q, k = SiLU(x Wq), SiLU(x Wk) [.., dk],  v = x Wv [.., dv],
//   g_t = logsigmoid(x Wf) / tau [.., m],  alpha_t = exp(g_t),  s_t = 1 - alpha_t,
//   K~_t = diag(alpha_t) K~_{t-1} + s_t k_t^T   [m, dk]   V~_t = diag(alpha_t) V~_{t-1} + s_t v_t^T   [m, dv]
//   o_t = V~_t^T softmax(K~_t q_t dk^-1/2),   y = Norm_head(o) Wo.
// Both memories are gated linear attention (ab::gated_linear_attention). The second pass is the
// kernel as it stands (query = the slot weights, key = s, decay per key channel = per slot). The
// first pass decays the value side (the slots), which the kernel does not have; it is run with the
// slots as heads: for each slot j, score_t[j] = sum_{s<=t} (q_t . k_s) s_s[j] exp(G_t[j] - G_s[j])
// is a scalar-decay GLA over (batch * head) x m "heads" with q and k shared by them (the kernel's
// Hq = Hk = 1 case) and a value of width 1. It costs m times the q . k products of fla's fused
// kernel (O(N C dk m) instead of O(N C dk + N dk m)); the result is the same.
// Deliberate differences: the per-head norm is a LayerNorm over dv with an affine shared by the
// heads (fla: RMSNorm); fla's optional norm of the input (norm_first) is left to the block's own norm.
// Capabilities: causal with decoding (states K~ and V~); bidirectional = both passes as causal plus
// anti-causal scans summed (not in the paper); padding mask (padded positions write nothing, s = 0,
// and do not decay, g = 0).
#include <cmath>
#include <string>

#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/variant.hpp"
#include "gla_family.hpp"
#include "head_widths.hpp"

namespace {

class GsaState final : public ab::DecodeState {
 public:
  GsaState(int64_t batch, int64_t heads, int64_t slots, int64_t dk, int64_t dv)
      : keys(batch * heads, slots, dk, 1), values(batch, heads, slots, dv) {}
  int64_t bytes() const override { return keys.bytes() + values.bytes(); }
  ab::GatedLinearState keys;    // K~ as [B H, m, dk, 1] (slots as heads)
  ab::GatedLinearState values;  // V~ [B, H, m, dv]
};

class Gsa final : public ab::Mixer {
 public:
  explicit Gsa(const ab::MixerConfig& cfg) : d_model_(cfg.d_model), heads_(cfg.heads) {
    const auto& p = cfg.params;
    const int64_t D = d_model_;
    const ab_head_widths::HeadWidths w = ab_head_widths::head_widths(cfg, "gsa");
    dk_ = w.dk;
    dv_ = w.dv;
    const int64_t Dk = heads_ * dk_, Dv = heads_ * dv_;
    slots_ = p.at("num_slots").get<int64_t>();
    inv_tau_ = static_cast<float>(1.0 / p.at("gate_normalizer").get<double>());
    opt_ = ab_gla_family::options(p);
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    wq_ = add_param("wq", ab::init_xavier_uniform(D, Dk, stream(0)));
    wk_ = add_param("wk", ab::init_xavier_uniform(D, Dk, stream(1)));
    wv_ = add_param("wv", ab::init_xavier_uniform(D, Dv, stream(2)));
    wf_ = add_param("wf", ab::init_xavier_uniform(D, heads_ * slots_, stream(3)));
    wo_ = add_param("wo", ab::init_xavier_uniform(Dv, D, stream(4)));
    norm_w_ = add_param("norm_weight", ab::Tensor::full({dv_}, 1.f));
    norm_b_ = add_param("norm_bias", ab::Tensor::zeros({dv_}));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "gsa", "recurrent",
        "Gated Slot Attention: gated key and value memories of m slots, softmax read over the slots",
        "Zhang et al. 2024, Gated Slot Attention for Efficient Linear-Time Sequence Modeling",
        ab_gla_family::with_form_params(
            "both passes",
            {
                ab::int_param("num_slots", 64, "memory slots per head (fla: 64)", 1, 1024),
                ab::num_param("expand_k", 1.0,
                              "key width as a fraction of d_model (fla: 1); expand_k D / heads must be whole", 0.0625,
                              4),
                ab::num_param("expand_v", 1.0,
                              "value width as a fraction of d_model (fla: 1); expand_v D / heads must be whole", 0.0625,
                              4),
                ab::num_param("gate_normalizer", 8.0, "tau: log alpha = logsigmoid(x Wf) / tau (fla: 8)", 1.0, 1024.0),
            }),
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.check_params = ab::Json{{"chunk", 3}, {"num_slots", 4}};
    s.cost = [](const ab::CostArgs& a) {
      const auto& p = *a.params;
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const double Dk = std::round(D * p.at("expand_k").get<double>()), Dv = std::round(D * p.at("expand_v").get<double>());
      const double dk = Dk / H, dv = Dv / H, m = double(p.at("num_slots").get<int64_t>());
      const std::string form = p.at("form").get<std::string>();
      const double dirs = a.causal ? 1 : 2;
      // per (batch, head, direction): pass 1 as m heads of key width dk and value width 1, pass 2
      // one head of key width m and value width dv
      const double mix = m * ab_gla_family::scan_flops(p, N, dk, 1) + ab_gla_family::scan_flops(p, N, m, dv);
      ab::Cost c;
      c.flops = 2 * B * N * D * (2 * Dk + Dv + H * m) + 2 * B * N * Dv * D + dirs * B * H * mix +
                10 * B * N * (2 * Dk + Dv + 3 * H * m);
      // Saved (measured by the conformance suite's trace): q and k and their pieces (4 B N Dk), v
      // and the output before and after the norm (3 B N Dv), per slot the gate, s, their
      // slot-major copies, the scores and the softmax (7 B N H m), the norm's statistics (2 B N H).
      c.activation_bytes = 4 * (4 * B * N * Dk + 3 * B * N * Dv + 7 * B * N * H * m + 2 * B * N * H);
      c.state_bytes = 4 * B * H * m * (dk + dv);
      // Peak, per direction: the first pass's q and k gradients per slot before they are summed
      // over the slots (B N H m dk), the slot-width gradients (about 4 B N H m) and part of dv.
      c.peak_bytes = c.activation_bytes + 4 * dirs * (B * N * H * m * dk + 4 * B * N * H * m + 0.75 * B * N * Dv + D * D);
      if (form == "parallel") c.peak_bytes += 4 * 2 * N * N;
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1), H = heads_, m = slots_;
    const Proj p = project(x, ctx.key_mask);
    const bool causal = ctx.causal;
    // pass 1, slots as heads: [B H, 1, N, dk] q and k, [B H, m, N, 1] s, [B H, m, N] g
    auto slot_major = [&](const ab::Var& t) { return ab::permute(t, {0, 1, 3, 2}); };  // [B,H,N,m] -> [B,H,m,N]
    const ab::Var scores = ab::gated_linear_attention_mix(
        ab::reshape(p.q, {B * H, 1, N, dk_}), ab::reshape(p.k, {B * H, 1, N, dk_}),
        ab::reshape(slot_major(p.s), {B * H, m, N, 1}), ab::reshape(slot_major(p.g), {B * H, m, N}), opt_, causal);
    const ab::Var w = ab::softmax(slot_major(ab::reshape(scores, {B, H, m, N})));  // [B, H, N, m]
    // pass 2: query = slot weights, key = s, decay per slot
    ab::GatedLinearAttentionOptions o2 = opt_;
    return output(ab::gated_linear_attention_mix(w, p.s, p.v, p.g, o2, causal));
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<GsaState>(batch, heads_, slots_, dk_, dv_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    const int64_t B = x_t.dim(0), H = heads_, m = slots_;
    const Proj p = project(ab::Var(x_t), nullptr);
    auto& st = static_cast<GsaState&>(state);
    const ab::Tensor sc = st.keys.step(p.q.value().reshape({B * H, 1, 1, dk_}), p.k.value().reshape({B * H, 1, 1, dk_}),
                                       p.s.value().reshape({B * H, m, 1, 1}), p.g.value().reshape({B * H, m, 1}));
    const ab::Var w = ab::softmax(ab::Var(sc.reshape({B, H, 1, m})));
    return output(ab::Var(st.values.step(w.value(), p.s.value(), p.v.value(), p.g.value()))).value();
  }

 private:
  struct Proj {
    ab::Var q, k, v;  // [B, H, N, dk] x2 (q scaled), [B, H, N, dv]
    ab::Var g, s;     // log decay and write strength 1 - exp(g), [B, H, N, m]
  };

  Proj project(const ab::Var& x, const ab::Tensor* key_mask) {
    const int64_t B = x.dim(0), N = x.dim(1);
    auto heads = [&](const ab::Var& t, int64_t d) {  // [B, N, H d] -> [B, H, N, d]
      return ab::permute(ab::reshape(t, {B, N, heads_, d}), {0, 2, 1, 3});
    };
    Proj p;
    p.q = ab::scale(heads(ab::silu(ab::linear(x, wq_)), dk_), 1.0f / std::sqrt(static_cast<float>(dk_)));
    p.k = heads(ab::silu(ab::linear(x, wk_)), dk_);
    p.v = heads(ab::linear(x, wv_), dv_);
    p.g = heads(ab::log_sigmoid(ab::linear(x, wf_), inv_tau_), slots_);
    if (key_mask) p.g = ab::mul(p.g, ab::Var(ab::keep_flags(key_mask, {B, 1, N, 1})));
    p.s = ab::add_scalar(ab::scale(ab::exp(p.g), -1.f), 1.f);  // 0 where masked (g = 0)
    return p;
  }

  // o: [B, H, N, dv] -> [B, N, D]
  ab::Var output(const ab::Var& o) {
    const int64_t B = o.dim(0), N = o.dim(2);
    const ab::Var on = ab::layer_norm(ab::permute(o, {0, 2, 1, 3}), norm_w_, norm_b_);  // [B, N, H, dv]
    return ab::linear(ab::reshape(on, {B, N, heads_ * dv_}), wo_);
  }

  int64_t d_model_, heads_, dk_ = 0, dv_ = 0, slots_ = 64;
  float inv_tau_ = 1.f / 8;
  ab::GatedLinearAttentionOptions opt_;
  ab::Var wq_, wk_, wv_, wf_, wo_, norm_w_, norm_b_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Gsa);
