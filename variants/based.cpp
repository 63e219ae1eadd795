// based — linear attention with the 2nd-order Taylor feature map, after a short convolution.
// Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
// tradeoff" (Based); zoology `based.Based` / fla `BasedLinearAttention` (feature_dim 16, taylor_exp).
//   u = x + short_conv(x)                     (depthwise, conv_taps taps; causal or centred)
//   q = u W_q, k = u W_k  [B, H, N, f],  v = u W_v  [B, H, N, d]
//   phi(x) = [1, x / f^{1/4}, vec(x x^T) / (sqrt(2) sqrt(f))]      (1 + f + f^2 features)
//   so phi(q) . phi(k) = 1 + q.k / sqrt(f) + (q.k)^2 / (2 f) > 0 (the exp Taylor series to 2nd order)
//   out_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps)   (ab::linear_attention)
// What is included: the Taylor linear attention and a short depthwise convolution on the mixer's
// input (Based's BaseConv/short-conv local mixing, folded into the same mixer as a residual
// branch feeding the projections). NOT included: Based's sliding-window softmax layers (use a
// `local_window` layer for that in a hybrid model).
// Time O(B N D^2) projections + O(B H N f^2 d) attention; memory O(B H N f^2) saved (the features
// of q and k; the full f x f outer product, not the symmetric half).
// Capabilities: bidirectional (centred conv), causal (causal conv + prefix scan), padding mask
// (padded tokens are zeroed before the convolution and padded keys are masked), decode (the
// [1 + f + f^2, d] linear-attention state and the last conv_taps - 1 inputs).
#include <cmath>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

class BasedState final : public ab::DecodeState {
 public:
  BasedState(int64_t batch, int64_t heads, int64_t features, int64_t d, int64_t channels, int64_t taps)
      : attn(batch, heads, features, d) {
    if (taps > 0) conv = std::make_unique<ab::ShortConvState>(batch, channels, taps);
  }
  int64_t bytes() const override { return attn.bytes() + (conv ? conv->bytes() : 0); }
  ab::LinearAttentionState attn;
  std::unique_ptr<ab::ShortConvState> conv;
};

class Based final : public ab::Mixer {
 public:
  explicit Based(const ab::MixerConfig& cfg)
      : d_model_(cfg.d_model),
        heads_(cfg.heads),
        head_dim_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0),
        f_(cfg.params.at("feature_dim").get<int64_t>()),
        taps_(cfg.params.at("conv_taps").get<int64_t>()),
        eps_(static_cast<float>(cfg.params.at("eps").get<double>())) {
    if (heads_ <= 0 || d_model_ % heads_ != 0)
      throw ab::UsageError("based: model.d_model must be a multiple of model.heads");
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

  static int64_t features(int64_t f) { return 1 + f + f * f; }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "based", "kernel", "2nd-order Taylor linear attention (1 + q.k + (q.k)^2/2) after a short depthwise conv",
        "Arora et al. 2024, Simple linear attention language models balance the recall-throughput tradeoff",
        {ab::int_param("feature_dim", 16, "projected q/k dimension f per head (1 + f + f^2 Taylor features)", 1, 64),
         ab::int_param("conv_taps", 3, "taps of the short depthwise convolution (0 = no convolution)", 0, 64),
         ab::num_param("eps", 1e-6, "added to the normaliser", 0.0, 1.0)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double f = static_cast<double>(a.params->at("feature_dim").get<int64_t>());
      const double K = static_cast<double>(a.params->at("conv_taps").get<int64_t>());
      const double F = 1 + f + f * f;
      ab::Cost c;
      // conv + projections (q, k to H f; v, o) + features + state and readout + normaliser
      c.flops = 2 * B * N * D * K + 2 * B * N * D * (2 * H * f + 2 * D) + 2 * B * H * N * f * f +
                4 * B * H * N * F * d + 4 * B * H * N * F;
      // Saved: the projections' input u (B N D, when the conv is on), the scaled q and k
      // (2 B H N f) and their features (2 B H N F), v and the merged heads (2 B N D); bidirectional
      // also S [F, d] and z [F] per head.
      c.activation_bytes =
          4 * ((K > 0 ? 1 : 0) * B * N * D + 2 * B * H * N * f + 2 * B * H * N * F + 2 * B * N * D +
               (a.causal ? 0 : B * H * (F * d + F)));
      c.state_bytes = 4 * (B * H * (F * d + F) + (K > 0 ? B * (K - 1) * D : 0));
      // Peak at the end of the linear-attention backward: the Taylor features of q and k, dq~ and
      // dk~ (4 B H N F), y, u, v, the upstream gradient per head, G, dv (6 B N D; 5 without the
      // conv), the scaled q, k (2 B H N f), 1 / den and c (2 B H N) and dWo.
      c.peak_bytes = 4 * (4 * B * H * N * F + (K > 0 ? 6 : 5) * B * N * D + 2 * B * H * N * f + 2 * B * H * N + D * D);
      return c;
    };
    return s;
  }

  // x: [B, H, N, f] -> [B, H, N, 1 + f + f^2]
  ab::Var taylor(const ab::Var& x) const {
    const int64_t B = x.dim(0), H = x.dim(1), N = x.dim(2);
    const ab::Var xs = ab::scale(x, std::pow(static_cast<float>(f_), -0.25f));
    const ab::Var outer = ab::mul(ab::reshape(xs, {B, H, N, f_, 1}), ab::reshape(xs, {B, H, N, 1, f_}));
    const ab::Var quad = ab::reshape(ab::scale(outer, 1.0f / std::sqrt(2.0f)), {B, H, N, f_ * f_});
    return ab::concat({ab::Var(ab::Tensor::full({B, H, N, 1}, 1.f)), xs, quad}, 3);
  }

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
    const ab::Var o = ab::linear_attention(taylor(heads(wq_, f_)), taylor(heads(wk_, f_)), heads(wv_, head_dim_), opt);
    return ab::linear(ab::reshape(ab::permute(o, {0, 2, 1, 3}), {B, N, d_model_}), wo_);  // [B, N, D]
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<BasedState>(batch, heads_, features(f_), head_dim_, d_model_, taps_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<BasedState&>(state);
    const int64_t B = x_t.dim(0);
    ab::Var u(x_t);
    if (taps_ > 0) {
      const ab::Tensor b = conv_b_.value();
      u = ab::add(u, ab::Var(st.conv->step(x_t, conv_w_.value(), &b)));
    }
    // With one position, [B, 1, H, w] is already the [B, H, 1, w] layout.
    auto heads = [&](const ab::Var& w, int64_t width) { return ab::reshape(ab::linear(u, w), {B, heads_, 1, width}); };
    const ab::Tensor o = st.attn.step(taylor(heads(wq_, f_)).value(), taylor(heads(wk_, f_)).value(),
                                      heads(wv_, head_dim_).value(), eps_);  // [B, H, 1, d]
    return ab::linear(ab::Var(o.reshape({B, 1, d_model_})), wo_).value();
  }

 private:
  int64_t d_model_, heads_, head_dim_, f_, taps_;
  float eps_;
  ab::Var wq_, wk_, wv_, wo_, conv_w_, conv_b_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Based);
