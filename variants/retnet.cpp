// retnet — multi-scale retention (RetNet's token mixer).
// Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models";
// the layout of flash-linear-attention's MultiScaleRetention (expand_k = 1, expand_v = 2).
//   q = x Wq, k = x Wk d^-1/2 (heads of d = D / H), v = x Wv (heads of dv = expand_v d),
//   S_t = gamma_h S_{t-1} + k_t v_t^T, o_t = S_t^T q_t, gamma_h = 1 - 2^(-5-h) (h = 0 .. H-1),
//   y = (GroupNorm_head(o) * swish(x Wg)) Wo.
// Simplified: no xPos / rotary embedding on q, k (the model adds its own positions); the per-head
// group norm is a LayerNorm over the head's dv channels with an affine shared by the heads (fla
// shares its RMSNorm weight the same way).
// Forms (parameter `form`, to compare their speed): chunked (default; O(N C d + N d dv) time),
// parallel (the masked quadratic form with the decay matrix gamma^(t-s), O(N^2 d), an N x N
// buffer per thread), recurrent (the sequential scan, O(N d dv)). All save only q, k, v for the
// recurrence (ab::gated_linear_attention), O(B N D) memory in every form.
// Capabilities: causal (native) with decoding (state S [B, H, d, dv], O(d dv) per token);
// bidirectional = the causal scan plus the anti-causal scan summed (the token's own term counts
// twice; not in the paper); padding mask (padded keys are zeroed and do not decay the state).
#include <cmath>

#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class RetNet final : public ab::Mixer {
 public:
  explicit RetNet(const ab::MixerConfig& cfg)
      : d_model_(cfg.d_model),
        heads_(cfg.heads),
        dk_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0),
        dv_(dk_ * cfg.params.at("expand_v").get<int64_t>()) {
    if (heads_ <= 0 || d_model_ % heads_ != 0)
      throw ab::UsageError("retnet: model.d_model must be a multiple of model.heads");
    opt_.form = ab::gla_form_from_string(cfg.params.at("form").get<std::string>());
    opt_.chunk = cfg.params.at("chunk").get<int64_t>();
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    const int64_t D = d_model_, Dv = heads_ * dv_;
    wq_ = add_param("wq", ab::init_xavier_uniform(D, D, stream(0)));
    wk_ = add_param("wk", ab::init_xavier_uniform(D, D, stream(1)));
    wv_ = add_param("wv", ab::init_xavier_uniform(D, Dv, stream(2)));
    wg_ = add_param("wg", ab::init_xavier_uniform(D, Dv, stream(3)));
    wo_ = add_param("wo", ab::init_xavier_uniform(Dv, D, stream(4)));
    norm_w_ = add_param("norm_weight", ab::Tensor::full({dv_}, 1.f));
    norm_b_ = add_param("norm_bias", ab::Tensor::zeros({dv_}));
    for (int64_t h = 0; h < heads_; ++h) log_gamma_.push_back(std::log1p(-std::exp2(-5.0 - double(h))));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "retnet", "recurrent",
        "multi-scale retention: fixed per-head decay 1 - 2^(-5-h), chunked | parallel | recurrent forms",
        "Sun et al. 2023, Retentive Network: A Successor to Transformer for Large Language Models",
        {
            ab::enum_param("form", "chunked", {"chunked", "parallel", "recurrent"},
                           "computation of the retention: chunked (production), parallel (N x N decay matrix), "
                           "recurrent (sequential scan); equal results"),
            ab::int_param("chunk", 64, "chunk length of the chunked form", 1, 4096),
            ab::int_param("expand_v", 2, "value / output head size as a multiple of d_model / heads (fla: 2)", 1, 4),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.check_params = ab::Json{{"chunk", 3}};  // several chunks, the last one partial, at N = 8
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double dv = d * a.params->at("expand_v").get<int64_t>(), Dv = H * dv;
      const std::string form = a.params->at("form").get<std::string>();
      const double C = std::min<double>(N, double(a.params->at("chunk").get<int64_t>()));
      const double dirs = a.causal ? 1 : 2;
      // Mixing per (batch, head, direction): parallel = scores and weighted values over the N^2 / 2
      // visible pairs; recurrent = state update and readout per position; chunked = both, the
      // pairs only inside chunks.
      double mix = 0;
      if (form == "parallel") mix = N * N * (d + dv);
      else if (form == "recurrent") mix = 4 * N * d * dv;
      else mix = N * C * (d + dv) + 4 * N * d * dv;
      ab::Cost c;
      c.flops = 2 * B * N * D * (2 * D + 2 * Dv) + 2 * B * N * Dv * D + dirs * B * H * mix + 10 * B * N * Dv;
      // Saved: q, k (B N D each), v, the permuted output before the norm, the normalised output,
      // the gate's input and output, the gated output (6 B N Dv), the norm's mean and variance
      // (2 B N H) and the log decays (B H N).
      c.activation_bytes = 4 * (2 * B * N * D + 6 * B * N * Dv + 3 * B * N * H);
      c.state_bytes = 4 * B * H * d * dv;
      // Peak in the retention backward: the saved tensors, the gradients of the value-width tensors
      // (2.5 B N Dv causal, 4 bidirectional: both directions' partial gradients) and the gradients
      // of the value-width projections.
      c.peak_bytes = c.activation_bytes + 4 * ((a.causal ? 2.5 : 4.0) * B * N * Dv + dirs * D * Dv);
      // parallel: the [N, N] scores and their gradient of each running (batch, head) task (two).
      if (form == "parallel") c.peak_bytes += 4 * 2 * N * N;
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1);
    Proj p = project(x, ctx.key_mask);
    const ab::Var o = ab::gated_linear_attention_mix(p.q, p.k, p.v, ab::Var(log_decay(B, N, ctx.key_mask)), opt_,
                                                     ctx.causal);  // [B, H, N, dv]
    return output(o, p.gate);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<ab::GatedLinearState>(batch, heads_, dk_, dv_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    const int64_t B = x_t.dim(0);
    Proj p = project(ab::Var(x_t), nullptr);
    const ab::Tensor o = static_cast<ab::GatedLinearState&>(state).step(p.q.value(), p.k.value(), p.v.value(),
                                                                        log_decay(B, 1, nullptr));
    return output(ab::Var(o), p.gate).value();
  }

 private:
  struct Proj {
    ab::Var q, k, v;  // [B, H, N, d], [B, H, N, d], [B, H, N, dv]
    ab::Var gate;     // swish(x Wg) [B, N, H dv]
  };

  Proj project(const ab::Var& x, const ab::Tensor* key_mask) {
    const int64_t B = x.dim(0), N = x.dim(1);
    auto heads = [&](const ab::Var& w, int64_t d) {
      return ab::permute(ab::reshape(ab::linear(x, w), {B, N, heads_, d}), {0, 2, 1, 3});
    };
    Proj p;
    p.q = heads(wq_, dk_);
    p.k = ab::scale(heads(wk_, dk_), 1.0f / std::sqrt(static_cast<float>(dk_)));
    if (key_mask) p.k = ab::mul(p.k, ab::Var(ab::keep_flags(key_mask, {B, 1, N, 1})));
    p.v = heads(wv_, dv_);
    p.gate = ab::silu(ab::linear(x, wg_));
    return p;
  }

  // log gamma_h per position [B, H, N]; 0 at padded positions (no decay).
  ab::Tensor log_decay(int64_t B, int64_t N, const ab::Tensor* key_mask) const {
    ab::Tensor g = ab::Tensor::empty({B, heads_, N});
    const ab::Tensor keep = ab::keep_flags(key_mask, {B, N});  // undefined: no mask
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < heads_; ++h)
        for (int64_t n = 0; n < N; ++n)
          g[(b * heads_ + h) * N + n] = (keep.defined() ? keep[b * N + n] : 1.f) * static_cast<float>(log_gamma_[h]);
    return g;
  }

  // o: [B, H, N, dv], gate [B, N, H dv] -> [B, N, D]
  ab::Var output(const ab::Var& o, const ab::Var& gate) {
    const int64_t B = o.dim(0), N = o.dim(2);
    const ab::Var on = ab::layer_norm(ab::permute(o, {0, 2, 1, 3}), norm_w_, norm_b_);  // [B, N, H, dv]
    return ab::linear(ab::mul(ab::reshape(on, {B, N, heads_ * dv_}), gate), wo_);
  }

  int64_t d_model_, heads_, dk_, dv_;
  ab::GatedLinearAttentionOptions opt_;
  std::vector<double> log_gamma_;
  ab::Var wq_, wk_, wv_, wg_, wo_, norm_w_, norm_b_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(RetNet);
