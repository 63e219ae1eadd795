// m2 — Monarch Mixer sequence mixer (the M2-BERT gated long convolution, FFT realised by Monarch matrices).
// Fu et al. 2023, "Monarch Mixer: A Simple Sub-Quadratic GEMM-Based Architecture" (NeurIPS 2023);
// reference code HazyResearch/m2, bert/src/mm/monarch_mixer_sequence_mixer.py.
//
//   u = x W_in + b_in                                   [B, N, 3D]
//   u = ShortConv_3(u)   (depthwise, taps t-2..t: M2's Conv1d(padding=2)[..., :N])
//   x1, x2, v = split(u)                               3 x [B, N, D]
//   v = v * x1
//   y = LongConv(v; k_fwd, k_rev) + bias_D * v          (bidirectional: k_fwd for s <= t, k_rev for s >= t)
//   y = y * x2;  out = y W_out + b_out
// The filters are implicit (Hyena): k(t) = MLP(PosEmb(t)) * exp(-|delta_c| t), an MLP with sine
// activations sin(freq * .) (freq learned, initialised to sin_freq) over the features
// [t, cos(f w_t), -sin(f w_t)] of the grid t = j / (max_length - 1); one MLP per direction.
// The long convolution is M^-1 diag(M h) M with M the Monarch DFT of size n = m1 * m2 >= 2N (order-2
// Monarch, m1 ~ m2 ~ sqrt(2N); zero padding makes it linear, not circular): ab::monarch_long_conv.
//
// Complexity: time O(B N D (D + sqrt(N))) (order-2 Monarch: O(N^{3/2}) per channel, not O(N log N));
// memory O(B N D) saved for backward (the spectra are recomputed in backward).
// Capabilities: bidirectional (M2-BERT); causal (M2-GPT's causal convolution: k_rev dropped, the short
// convolution is causal anyway); padding mask (padded positions are zeroed before the short and the long
// convolution, so they contribute nothing to real positions); decode (causal form, one token at a time:
// the state keeps every gated value v, the short-convolution history and the filter taps; O(t D) per
// token, the direct form of the causal long convolution).
// Simplifications vs the reference: the optional residual long convolution of the raw input
// (residual_long_conv) and dropout are not implemented; complex Monarch factors are fixed DFT
// factors (not learned); the dimension mixer (Monarch MLP) belongs to the model's MLP, not this mixer.
// Parameters do not depend on N; the filter grid is set by max_length (longer inputs extrapolate t > 1).
#include <cmath>
#include <map>
#include <numbers>

#include "attnbench/kernels/monarch.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

// y = sin(x), elementwise; saves x.
ab::Var sin_op(const ab::Var& x) {
  ab::Tensor y = ab::Tensor::empty(x.shape());
  const ab::Tensor xv = x.value();
  for (int64_t i = 0; i < y.numel(); ++i) y[i] = std::sin(xv[i]);
  return ab::make_op_result(std::move(y), {x}, [gx = x.sink(), xv](const ab::Tensor& g) {
    ab::Tensor d = ab::Tensor::empty(g.shape());
    for (int64_t i = 0; i < d.numel(); ++i) d[i] = g[i] * std::cos(xv[i]);
    gx.accumulate(d);
  });
}

// Causal decoding: the short-convolution history, every gated value v so far and the filter taps.
class M2State final : public ab::DecodeState {
 public:
  M2State(int64_t batch, int64_t d, int64_t taps) : conv(batch, 3 * d, taps), batch_(batch), d_(d) {}
  // v_t [B, D] appended as position `length`.
  void append(const float* v_t) {
    if (length == capacity) {
      const int64_t cap = std::max<int64_t>(16, 2 * capacity);
      ab::Tensor grown = ab::Tensor::zeros({batch_, cap, d_});
      for (int64_t b = 0; b < batch_; ++b)
        for (int64_t i = 0; i < length * d_; ++i) grown[b * cap * d_ + i] = hist[b * capacity * d_ + i];
      hist = grown, capacity = cap;
    }
    for (int64_t b = 0; b < batch_; ++b)
      for (int64_t c = 0; c < d_; ++c) hist[(b * capacity + length) * d_ + c] = v_t[b * d_ + c];
    ++length;
  }
  int64_t bytes() const override { return conv.bytes() + batch_ * length * d_ * 4 + taps.bytes(); }

  ab::ShortConvState conv;
  ab::Tensor hist;  // [B, capacity, D]
  ab::Tensor taps;  // [L, D] the forward filter k for lags 0 .. L-1
  int64_t length = 0, capacity = 0;

 private:
  int64_t batch_, d_;
};

constexpr double kFastDecay = 0.3, kSlowDecay = 1.5, kDecayTarget = 1e-2;  // Hyena's ExponentialModulation

class M2 final : public ab::Mixer {
 public:
  explicit M2(const ab::MixerConfig& cfg)
      : d_(cfg.d_model),
        max_length_(cfg.max_length),
        order_(cfg.params.at("filter_order").get<int64_t>()),
        inner_(cfg.params.at("filter_layers").get<int64_t>()),
        emb_dim_(cfg.params.at("emb_dim").get<int64_t>()),
        taps_(cfg.params.at("short_conv").get<int64_t>()) {
    if (emb_dim_ % 2 == 0) throw ab::UsageError("m2: emb_dim must be odd (t plus cos/sin pairs)");
    const float freq = static_cast<float>(cfg.params.at("sin_freq").get<double>());
    uint64_t tag = 0;
    auto stream = [&] { return ab::RngStream(cfg.seed, ab::Purpose::init, static_cast<uint64_t>(cfg.layer), 700 + tag++); };
    auto torch_linear = [&](const std::string& name, int64_t in, int64_t out, bool bias) {
      const float bound = 1.0f / std::sqrt(static_cast<float>(in));
      add_param(name + ".w", ab::init_uniform({in, out}, bound, stream()));
      if (bias) add_param(name + ".b", ab::init_uniform({out}, bound, stream()));
    };
    torch_linear("in", d_, 3 * d_, true);
    add_param("short.w", ab::init_uniform({3 * d_, taps_}, 1.0f / std::sqrt(static_cast<float>(taps_)), stream()));
    add_param("short.b", ab::init_uniform({3 * d_}, 1.0f / std::sqrt(static_cast<float>(taps_)), stream()));
    for (const char* dir : {"fwd", "rev"}) {
      const std::string p = std::string("filter_") + dir;
      torch_linear(p + ".l0", emb_dim_, order_, true);
      add_param(p + ".freq0", ab::Tensor::full({order_}, freq));
      for (int64_t l = 1; l <= inner_; ++l) {
        torch_linear(p + ".l" + std::to_string(l), order_, order_, true);
        add_param(p + ".freq" + std::to_string(l), ab::Tensor::full({order_}, freq));
      }
      torch_linear(p + ".out", order_, d_, false);
    }
    add_param("bias_d", ab::init_normal({d_}, 1.0f, stream()));
    torch_linear("out", d_, d_, true);
    for (auto& [name, v] : parameters()) params_[name] = v;
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "m2", "long-convolution",
        "Monarch Mixer: gated short + implicit long convolution, the FFT done by Monarch (DFT) matrices",
        "Fu et al. 2023, Monarch Mixer: A Simple Sub-Quadratic GEMM-Based Architecture",
        {
            ab::int_param("filter_order", 16, "width of the implicit-filter MLP (hyena_filter_order)", 2, 512),
            ab::int_param("filter_layers", 2, "inner (order x order) layers of the filter MLP (num_inner_mlps)", 0, 8),
            ab::int_param("emb_dim", 3, "positional features of the filter MLP: t and (emb_dim-1)/2 cos/sin bands; odd",
                          3, 65),
            ab::num_param("sin_freq", 10.0, "initial frequency of the sine activations (hyena_w)", 0.01, 1000.0),
            ab::int_param("short_conv", 3, "taps of the depthwise short convolution", 1, 16),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    // Three chained sin(10 x) layers make the filter so wiggly in its first-layer weights that a 1e-2
    // central difference is off by O(10%) (the error falls as step^2, so the backward is right); the
    // conformance gradient check uses frequency 1, where it agrees to 1e-5.
    s.check_params = {{"sin_freq", 1.0}};
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model;
      const double order = a.params->at("filter_order").get<int64_t>();
      const double inner = a.params->at("filter_layers").get<int64_t>();
      const double emb = a.params->at("emb_dim").get<int64_t>();
      const double K = a.params->at("short_conv").get<int64_t>();
      const double dirs = a.causal ? 1 : 2;
      ab::Cost c;
      const double filter_flops = dirs * N * 2 * (emb * order + inner * order * order + order * D);
      c.flops = 2 * B * N * D * 3 * D + 2 * B * N * 3 * D * K + 4 * B * N * D + 2 * B * N * D * D + filter_flops +
                ab::monarch_long_conv_flops(a.batch, a.length, a.d_model, !a.causal);
      // Saved for backward: the in-projection output (short conv input, 3BND), x1 and v (2BND), v*x1
      // (BND, shared by the long conv and the skip), the long-conv sum and x2 (2BND), the gated output
      // (BND, out-projection input): 9 BND. Filters, per direction: three [N, order] tensors per sine
      // layer and the modulated filter [N, D] (kept by the long convolution); shared: the positional
      // features and the decay [N, D].
      // Decoding: the gated values of every token (B N D), the short-convolution history
      // (B (K-1) 3D) and the filter taps (N D).
      c.state_bytes = 4 * (B * N * D + B * (K - 1) * 3 * D + N * D);
      c.activation_bytes = 4 * (9 * B * N * D + dirs * ((1 + inner) * 3 * N * order + N * D) + N * emb + N * D);
      // Peak in the Monarch long convolution's backward: the saved tensors, its padded (2N) complex
      // workspaces and gradients (about 20 B N D), the filters' gradients (3 N D) and dWout.
      c.peak_bytes = c.activation_bytes + 4 * (20 * B * N * D + 3 * N * D + D * D);
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1), D = d_;
    const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {B, N, 1});  // 1 real, 0 padded; undefined: no mask
    ab::Var u = ab::linear(x, p("in.w"), p("in.b"));  // [B, N, 3D]
    if (keep.defined()) u = ab::mul(u, ab::Var(keep));
    u = ab::short_conv(u, p("short.w"), p("short.b"), /*causal=*/true);
    const ab::Var x1 = ab::slice(u, 2, 0, D), x2 = ab::slice(u, 2, D, D);
    ab::Var v = ab::mul(ab::slice(u, 2, 2 * D, D), x1);  // [B, N, D]
    if (keep.defined()) v = ab::mul(v, ab::Var(keep));
    // Filters [N, D], evaluated on the max_length grid.
    ab::Tensor z, decay;
    filter_inputs(N, z, decay);
    const ab::Var k = filter("filter_fwd", z, decay);
    const ab::Var k_rev = ctx.causal ? ab::Var() : filter("filter_rev", z, decay);
    ab::Var y = ab::add(ab::monarch_long_conv(v, k, k_rev), ab::mul(v, p("bias_d")));
    y = ab::mul(y, x2);
    return ab::linear(y, p("out.w"), p("out.b"));
  }

  // Causal decoding, O(t D) per token after t tokens (the direct form of the causal long convolution).
  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    auto st = std::make_unique<M2State>(batch, d_, taps_);
    st->taps = causal_taps(std::max<int64_t>(max_length_, 1));
    return st;
  }

  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<M2State&>(state);
    const int64_t B = x_t.dim(0), D = d_, t = st.length;
    if (t >= st.taps.dim(0)) st.taps = causal_taps(2 * st.taps.dim(0));
    const ab::Tensor u = ab::linear(ab::Var(x_t), p("in.w"), p("in.b")).value();  // [B, 1, 3D]
    const ab::Tensor sb = p("short.b").value();
    const ab::Tensor uc = st.conv.step(u, p("short.w").value(), &sb);  // [B, 1, 3D]
    std::vector<float> v(static_cast<size_t>(B * D));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < D; ++c) v[b * D + c] = uc[b * 3 * D + 2 * D + c] * uc[b * 3 * D + c];
    st.append(v.data());
    ab::Tensor y = ab::Tensor::empty({B, 1, D});
    const ab::Tensor bias = p("bias_d").value();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < D; ++c) {
        double s = double(bias[c]) * v[b * D + c];
        for (int64_t j = 0; j <= t; ++j) s += double(st.taps[j * D + c]) * st.hist[(b * st.capacity + t - j) * D + c];
        y[b * D + c] = static_cast<float>(s) * uc[b * 3 * D + D + c];
      }
    return ab::linear(ab::Var(y), p("out.w"), p("out.b")).value();
  }

 private:
  // The forward filter k for lags 0 .. L-1 [L, D], without a tape.
  ab::Tensor causal_taps(int64_t L) const {
    ab::NoGrad ng;
    ab::Tensor z, decay;
    filter_inputs(L, z, decay);
    return filter("filter_fwd", z, decay).value().clone();
  }

  const ab::Var& p(const std::string& name) const { return params_.at(name); }

  // z [N, emb_dim]: [t, cos(f_b w), -sin(f_b w)] (Hyena's PositionalEmbedding); decay [N, D]: exp(-|delta_c| t).
  void filter_inputs(int64_t N, ab::Tensor& z, ab::Tensor& decay) const {
    const int64_t grid = std::max<int64_t>(max_length_, 2), bands = (emb_dim_ - 1) / 2;
    z = ab::Tensor::empty({N, emb_dim_});
    decay = ab::Tensor::empty({N, d_});
    const double max_decay = std::log(kDecayTarget) / kFastDecay, min_decay = std::log(kDecayTarget) / kSlowDecay;
    for (int64_t j = 0; j < N; ++j) {
      const double t = static_cast<double>(j) / static_cast<double>(grid - 1);
      const double w = 2 * std::numbers::pi * static_cast<double>(j) / static_cast<double>(grid);
      z[j * emb_dim_] = static_cast<float>(t);
      for (int64_t b = 0; b < bands; ++b) {
        const double f = bands == 1 ? 1e-4 : 1e-4 + (bands - 1 - 1e-4) * static_cast<double>(b) / (bands - 1);
        z[j * emb_dim_ + 1 + b] = static_cast<float>(std::cos(f * w));
        z[j * emb_dim_ + 1 + bands + b] = static_cast<float>(-std::sin(f * w));
      }
      for (int64_t c = 0; c < d_; ++c) {
        const double delta = d_ == 1 ? min_decay : min_decay + (max_decay - min_decay) * c / static_cast<double>(d_ - 1);
        decay[j * d_ + c] = static_cast<float>(std::exp(-t * std::fabs(delta)));
      }
    }
  }

  // The implicit filter of one direction: [N, emb] -> [N, D].
  ab::Var filter(const std::string& pre, const ab::Tensor& z, const ab::Tensor& decay) const {
    ab::Var h = ab::Var(z);
    for (int64_t l = 0; l <= inner_; ++l) {
      const std::string s = std::to_string(l);
      h = ab::linear(h, p(pre + ".l" + s + ".w"), p(pre + ".l" + s + ".b"));
      h = sin_op(ab::mul(h, p(pre + ".freq" + s)));
    }
    h = ab::linear(h, p(pre + ".out.w"));
    return ab::mul(h, ab::Var(decay));
  }

  int64_t d_, max_length_, order_, inner_, emb_dim_, taps_;
  std::map<std::string, ab::Var> params_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(M2);
