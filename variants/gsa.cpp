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
// The value memory is gated linear attention as ab::gated_linear_attention has it (query = the
// slot weights, key = s, decay per key channel = per slot). The key memory decays its value side
// (the slots), which that kernel does not have; it is ab::gated_slot_memory, a sequential scan
// over the [m, dk] state (4 N m dk flops per head and direction: no q . k product is formed, unlike
// fla's chunked kernel or a slots-as-heads run of the GLA kernel, which forms each m times).
// The `form` parameter picks the value memory's form; the key memory has the one (exact) scan.
// Deliberate differences: the per-head norm is a LayerNorm over dv with an affine shared by the
// heads (fla: RMSNorm); fla's optional norm of the input (norm_first) is left to the block's own norm.
// Capabilities: causal with decoding (states K~ and V~); bidirectional = both passes as causal plus
// anti-causal scans summed (not in the paper); padding mask (padded positions write nothing, s = 0,
// and do not decay, g = 0).
#include <cmath>
#include <string>

#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/kernels/gated_slot_memory.hpp"
#include "attnbench/variant.hpp"
#include "gla_family.hpp"
#include "head_widths.hpp"

namespace {

class GsaState final : public ab::DecodeState {
 public:
  GsaState(int64_t batch, int64_t heads, int64_t slots, int64_t dk, int64_t dv)
      : keys(batch, heads, slots, dk), values(batch, heads, slots, dv) {}
  int64_t bytes() const override { return keys.bytes() + values.bytes(); }
  ab::GatedSlotMemoryState keys;  // K~ [B, H, m, dk]
  ab::GatedLinearState values;    // V~ [B, H, m, dv]
};

class Gsa final : public ab_gla_family::Layer {
 public:
  explicit Gsa(const ab::MixerConfig& cfg) : Layer(cfg, widths(cfg).dk, widths(cfg).dv) {
    const auto& p = cfg.params;
    const int64_t D = d_model_, Dv = heads_ * dv_;
    slots_ = p.at("num_slots").get<int64_t>();
    inv_tau_ = ab_gla_family::inverse_gate_normalizer(p);
    add_qkv();
    wf_ = add_weight("wf", D, heads_ * slots_, 3);
    wo_ = add_weight("wo", Dv, D, 4);
    add_head_norm();
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab_gla_family::family_spec(
        "gsa",
        "Gated Slot Attention: gated key and value memories of m slots, softmax read over the slots",
        "Zhang et al. 2024, Gated Slot Attention for Efficient Linear-Time Sequence Modeling",
        "the value memory (the key memory is always its scan)",
        ab_gla_family::with_widths(
            {ab::int_param("num_slots", 64, "memory slots per head (fla: 64)", 1, 1024)}, 1.0, 1.0,
            {ab::num_param("gate_normalizer", 8.0, "tau: log alpha = logsigmoid(x Wf) / tau (fla: 8)", 1.0, 1024.0)}));
    s.check_params = ab::Json{{"chunk", 3}, {"num_slots", 4}};
    s.cost = [](const ab::CostArgs& a) {
      const auto& p = *a.params;
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const double Dk = std::round(D * p.at("expand_k").get<double>()), Dv = std::round(D * p.at("expand_v").get<double>());
      const double dk = Dk / H, dv = Dv / H, m = double(p.at("num_slots").get<int64_t>());
      const std::string form = p.at("form").get<std::string>();
      const double dirs = a.causal ? 1 : 2;
      // per (batch, head, direction): the key memory's scan (4 N dk m), the value memory as gla
      // with key width m and value width dv
      const double mix = 4 * N * dk * m + ab_gla_family::scan_flops(p, N, m, dv);
      ab::Cost c;
      c.flops = 2 * B * N * D * (2 * Dk + Dv + H * m) + 2 * B * N * Dv * D + dirs * B * H * mix +
                10 * B * N * (2 * Dk + Dv + 3 * H * m);
      // Saved (measured by the conformance suite's trace): q and k and their pieces (4 B N Dk), v
      // and the output before and after the norm (3 B N Dv), per slot the gate's input, g, exp(g),
      // s, the softmax's input and output and the key memory's output per direction
      // ((5 + dirs) B N H m), the norm's statistics (2 B N H).
      c.activation_bytes = 4 * (4 * B * N * Dk + 3 * B * N * Dv + (5 + dirs) * B * N * H * m + 2 * B * N * H);
      c.state_bytes = 4 * B * H * m * (dk + dv);
      // Peak, per direction: the key memory's dq, dk, ds and dg (2 B N Dk + 2 B N H m), the value
      // memory's slot-width gradients (about 2 B N H m) and part of dv.
      c.peak_bytes = c.activation_bytes + 4 * dirs * (2 * B * N * Dk + 4 * B * N * H * m + 0.75 * B * N * Dv + D * D);
      if (form == "parallel") c.peak_bytes += 4 * 2 * N * N;
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const Proj p = project(x, ctx.key_mask);
    // key memory: slot scores [B, H, N, m], read with a softmax over the slots
    const ab::Var w = ab::softmax(ab::gated_slot_memory_mix(p.q, p.k, p.s, p.g, ctx.causal));
    // value memory: query = slot weights, key = s, decay per slot
    return output(ab::gated_linear_attention_mix(w, p.s, p.v, p.g, opt_, ctx.causal));
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<GsaState>(batch, heads_, slots_, dk_, dv_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    const Proj p = project(ab::Var(x_t), nullptr);
    auto& st = static_cast<GsaState&>(state);
    const ab::Tensor sc = st.keys.step(p.q.value(), p.k.value(), p.s.value(), p.g.value());
    const ab::Var w = ab::softmax(ab::Var(sc));
    return output(ab::Var(st.values.step(w.value(), p.s.value(), p.v.value(), p.g.value()))).value();
  }

 private:
  struct Proj {
    ab::Var q, k, v;  // [B, H, N, dk] x2 (q scaled), [B, H, N, dv]
    ab::Var g, s;     // log decay and write strength 1 - exp(g), [B, H, N, m]
  };

  Proj project(const ab::Var& x, const ab::Tensor* key_mask) {
    const int64_t B = x.dim(0), N = x.dim(1);
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
  ab::Var output(const ab::Var& o) { return ab::linear(merged_norm(o), wo_); }

  static ab_head_widths::HeadWidths widths(const ab::MixerConfig& cfg) { return ab_head_widths::head_widths(cfg, "gsa"); }

  int64_t slots_ = 64;
  float inv_tau_ = 1.f / 8;
  ab::Var wf_, wo_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Gsa);
