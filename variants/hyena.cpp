// hyena — the Hyena operator of order 2: gated long convolutions with implicit filters.
// Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Re 2023, "Hyena Hierarchy: Towards Larger
// Convolutional Language Models". Layer as in the reference HyenaOperator / HyenaFilter (safari):
//   z = x W_in + b_in                      [B, N, 3D]
//   z <- causal depthwise short conv (short_filter_order taps, with bias)  (ab::short_conv)
//   x0, x1, v = split(z)                   [B, N, D] each
//   u = x1 * v;  y = x0 * (h * u + bias * u);  out = y W_out + b_out
// with the implicit long filter h[c, l] = FFN(PosEmb(l))[c] * exp(-|delta_c| t_l):
//   PosEmb(l) = [t_l, cos(2 pi f_k l / L), -sin(2 pi f_k l / L)] (emb_dim = 1 + 2 bands, t_l = l / (L - 1),
//   f = linspace(1e-4, bands - 1, bands)), FFN = Linear(emb_dim, F) -> Sin -> (Linear(F, F) -> Sin) x
//   num_inner_mlps -> Linear(F, D, no bias), Sin(x) = sin(freq * x) with one trainable freq [F] (init w),
//   delta_c linearly spaced between log(target) / slow_decay_pct and log(target) / fast_decay_pct.
// The positional grid is that of L = max_length (the model's length), so a sequence of N <= L tokens
// uses the first N filter taps, in the forward pass and in decoding alike.
// Bidirectional mode: the FFN has 2D outputs, the second D giving an anti-causal filter summed with the
// causal one (k_fwd + conj(k_rev) in frequency, as M2); the short convolution stays causal as in M2.
// Time O(B N D^2) projections + O(B N log N D) FFT convolution + O(N F (F + D)) filter; memory
// O(B N D) (9 B N D floats) + O(N F) filter activations saved for backward.
// Decode: keeps the short-conv window and every past u = x1 * v (state O(B t D), declared), and applies
// the same filter (computed for max_length at begin_decode) directly: O(t D) per token.
// Capabilities: causal, bidirectional, decode; no padding mask (the convolution mixes padded tokens in).
#include <cmath>
#include <cstring>
#include <numbers>

#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

// y = sin(x), elementwise; saves x.
ab::Var sin_op(const ab::Var& x) {
  ab::Tensor y = ab::Tensor::empty(x.shape());
  const ab::Tensor xv = x.value();
  for (int64_t i = 0; i < y.numel(); ++i) y[i] = std::sin(xv[i]);
  const ab::GradSink gx = x.sink();
  return ab::make_op_result(std::move(y), {x}, [gx, xv](const ab::Tensor& g) {
    ab::Tensor dx = ab::Tensor::empty(g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) dx[i] = g[i] * std::cos(xv[i]);
    gx.accumulate(dx);
  });
}

class HyenaState final : public ab::DecodeState {
 public:
  HyenaState(int64_t batch, int64_t d_model, int64_t taps)
      : shift(batch, 3 * d_model, taps), batch_(batch), d_(d_model) {}
  // u_t: [B, D] appended to the history [B, capacity, D]
  void append(const ab::Tensor& u_t) {
    if (length_ == capacity_) {
      const int64_t cap = std::max<int64_t>(16, 2 * capacity_);
      ab::Tensor grown = ab::Tensor::empty({batch_, cap, d_});
      for (int64_t b = 0; b < batch_; ++b)
        if (length_ > 0)
          std::memcpy(grown.data() + b * cap * d_, hist_.data() + b * capacity_ * d_,
                      static_cast<size_t>(length_ * d_) * sizeof(float));
      hist_ = grown;
      capacity_ = cap;
    }
    for (int64_t b = 0; b < batch_; ++b)
      std::memcpy(hist_.data() + (b * capacity_ + length_) * d_, u_t.data() + b * d_, static_cast<size_t>(d_) * sizeof(float));
    ++length_;
  }
  const float* row(int64_t b, int64_t t) const { return hist_.data() + (b * capacity_ + t) * d_; }
  int64_t length() const { return length_; }
  int64_t bytes() const override { return shift.bytes() + batch_ * length_ * d_ * 4; }
  ab::ShortConvState shift;

 private:
  int64_t batch_, d_, length_ = 0, capacity_ = 0;
  ab::Tensor hist_;
};

class Hyena final : public ab::Mixer {
 public:
  explicit Hyena(const ab::MixerConfig& cfg)
      : D_(cfg.d_model),
        Lmax_(cfg.max_length),
        K_(cfg.params.at("short_filter_order").get<int64_t>()),
        F_(cfg.params.at("filter_order").get<int64_t>()),
        E_(cfg.params.at("emb_dim").get<int64_t>()) {
    if (E_ % 2 == 0) throw ab::UsageError("hyena: emb_dim must be odd (t plus cos/sin pairs)");
    const int inner = static_cast<int>(cfg.params.at("num_inner_mlps").get<int64_t>());
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    w_in_ = add_param("w_in", ab::init_xavier_uniform(D_, 3 * D_, stream(0)));
    b_in_ = add_param("b_in", ab::Tensor::zeros({3 * D_}));
    w_short_ = add_param("w_short", ab::init_uniform({3 * D_, K_}, static_cast<float>(1.0 / std::sqrt(double(K_))), stream(1)));
    b_short_ = add_param("b_short", ab::init_uniform({3 * D_}, static_cast<float>(1.0 / std::sqrt(double(K_))), stream(2)));
    w_out_ = add_param("w_out", ab::init_xavier_uniform(D_, D_, stream(3)));
    b_out_ = add_param("b_out", ab::Tensor::zeros({D_}));
    // Implicit filter FFN (PyTorch Linear default initialisation: U(+-1/sqrt(fan_in))).
    int64_t fan_in = E_;
    for (int i = 0; i <= inner; ++i) {
      const float bound = static_cast<float>(1.0 / std::sqrt(double(fan_in)));
      ffn_w_.push_back(add_param("filter_w" + std::to_string(i), ab::init_uniform({fan_in, F_}, bound, stream(10 + 2 * i))));
      ffn_b_.push_back(add_param("filter_b" + std::to_string(i), ab::init_uniform({F_}, bound, stream(11 + 2 * i))));
      fan_in = F_;
    }
    filter_out_ = add_param("filter_out", ab::init_uniform({F_, 2 * D_}, static_cast<float>(1.0 / std::sqrt(double(F_))), stream(4)));
    freq_ = add_param("freq", ab::Tensor::full({F_}, static_cast<float>(cfg.params.at("w").get<double>())));
    bias_ = add_param("bias", ab::init_normal({D_}, 1.0f, stream(5)));
    // Constant positional features [Lmax, E] and decay window [D, Lmax].
    const int64_t bands = (E_ - 1) / 2;
    emb_ = ab::Tensor::empty({Lmax_, E_});
    window_t_ = ab::Tensor::empty({D_, Lmax_});
    const double target = cfg.params.at("target").get<double>();
    const double max_decay = std::log(target) / cfg.params.at("fast_decay_pct").get<double>();
    const double min_decay = std::log(target) / cfg.params.at("slow_decay_pct").get<double>();
    const bool modulate = cfg.params.at("modulate").get<bool>();
    for (int64_t l = 0; l < Lmax_; ++l) {
      const double t = Lmax_ > 1 ? double(l) / double(Lmax_ - 1) : 0.0;
      const double w = 2 * std::numbers::pi * double(l) / double(Lmax_);
      emb_[l * E_] = static_cast<float>(t);
      for (int64_t k = 0; k < bands; ++k) {
        const double f = bands > 1 ? 1e-4 + (double(bands - 1) - 1e-4) * double(k) / double(bands - 1) : 1e-4;
        emb_[l * E_ + 1 + k] = static_cast<float>(std::cos(f * w));
        emb_[l * E_ + 1 + bands + k] = static_cast<float>(-std::sin(f * w));
      }
      for (int64_t c = 0; c < D_; ++c) {
        const double delta = D_ > 1 ? min_decay + (max_decay - min_decay) * double(c) / double(D_ - 1) : min_decay;
        window_t_[c * Lmax_ + l] = modulate ? static_cast<float>(std::exp(-t * std::fabs(delta))) : 1.0f;
      }
    }
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "hyena", "long-convolution",
        "Hyena order 2: short conv, implicit long filters (FFN of positions, decay window), FFT conv, gating",
        "Poli et al. 2023, Hyena Hierarchy: Towards Larger Convolutional Language Models",
        {
            ab::int_param("filter_order", 64, "width F of the implicit filter FFN (safari hyena: 64)", 1, 4096),
            ab::int_param("short_filter_order", 3, "taps of the causal short convolution on the projections", 1, 64),
            ab::int_param("emb_dim", 3, "positional features: t plus (emb_dim - 1) / 2 cos/sin bands (odd)", 3, 65),
            ab::int_param("num_inner_mlps", 2, "hidden F x F layers of the filter FFN", 0, 8),
            ab::num_param("w", 1.0, "initial frequency of the FFN's sin activations", 1e-3, 1e3),
            ab::num_param("fast_decay_pct", 0.3, "fastest decay of the modulation window", 1e-3, 100.0),
            ab::num_param("slow_decay_pct", 1.5, "slowest decay of the modulation window", 1e-3, 100.0),
            ab::num_param("target", 1e-2, "window value reached at the decay point", 1e-9, 0.999),
            ab::bool_param("modulate", true, "apply the exponential decay window to the filters"),
        },
        {.causal = true, .bidirectional = true, .padding_mask = false, .length_dependent = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model;
      const double K = a.params->at("short_filter_order").get<int64_t>(), F = a.params->at("filter_order").get<int64_t>();
      const double E = a.params->at("emb_dim").get<int64_t>(), I = a.params->at("num_inner_mlps").get<int64_t>();
      const double Dk = a.causal ? D : 2 * D;  // filter channels in use
      const double M = static_cast<double>(ab::fft_conv_length(a.length, a.length)), Mh = M / 2 + 1;
      const double fft = 2.5 * M * std::log2(M);
      ab::Cost c;
      c.flops = 2 * B * N * D * 3 * D + 2 * B * N * 3 * D * K          // in projection, short conv
                + 2 * N * (E * F + I * F * F + F * 2 * D) + 4 * N * F * (I + 1) + N * Dk  // filter
                + Dk * fft + B * D * (2 * fft + 6 * Mh)                 // FFT convolution
                + 2 * B * N * D * D + 5 * B * N * D;                    // out projection, gates, skip
      // Saved: the in-projection output (3 B N D), x0, x1, v, u, the gated sum and y (6 B N D); the
      // filter FFN's positional features, pre-activations, scaled inputs and sines ((I + 1) 3 N F + N E),
      // the decay window [Dk, N] and the kernel spectrum [M/2+1, D] complex.
      c.activation_bytes = 4 * (9 * B * N * D + 3 * (I + 1) * N * F + N * E + N * Dk + 2 * Mh * D);
      c.state_bytes = 4 * B * N * D + 4 * B * (K - 1) * 3 * D;  // u history + short-conv window
      // Peak in the FFT convolution's backward: the saved tensors, its per-sequence workspaces
      // (about 8 M D), y and du (2 B N D) and the out projection's gradient.
      c.peak_bytes = c.activation_bytes + 4 * (2 * B * N * D + 8 * M * D + D * D);
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t N = x.dim(1);
    if (N > Lmax_) throw ab::UsageError("hyena: sequence longer than max_length (the filter grid)");
    const ab::Var z = ab::short_conv(ab::linear(x, w_in_, b_in_), w_short_, b_short_, true);  // [B, N, 3D]
    const ab::Var x0 = ab::slice(z, 2, 0, D_), x1 = ab::slice(z, 2, D_, D_), v = ab::slice(z, 2, 2 * D_, D_);
    const ab::Var u = ab::mul(x1, v);  // [B, N, D]
    const ab::Var h = filter(N, !ctx.causal);  // [Dk, N]
    const ab::Var kf = ctx.causal ? h : ab::slice(h, 0, 0, D_);
    const ab::Var kb = ctx.causal ? ab::Var() : ab::slice(h, 0, D_, D_);
    const ab::Var conv = ab::add(ab::fft_conv(u, kf, kb), ab::mul(u, bias_));
    return ab::linear(ab::mul(x0, conv), w_out_, b_out_);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    ab::NoGrad ng;
    decode_filter_ = filter(Lmax_, false).value();  // [D, Lmax]
    return std::make_unique<HyenaState>(batch, D_, K_);
  }

  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<HyenaState&>(state);
    const int64_t B = x_t.dim(0), t = st.length();
    if (t >= Lmax_) throw ab::UsageError("hyena: decoding beyond max_length (the filter grid)");
    const ab::Tensor z =
        st.shift.step(ab::linear(ab::Var(x_t), w_in_, b_in_).value(), w_short_.value(), &b_short_.value());  // [B, 1, 3D]
    ab::Tensor u = ab::Tensor::empty({B, D_});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < D_; ++c) u[b * D_ + c] = z[b * 3 * D_ + D_ + c] * z[b * 3 * D_ + 2 * D_ + c];
    st.append(u);
    ab::Tensor y = ab::Tensor::empty({B, 1, D_});
    const float* hf = decode_filter_.data();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < D_; ++c) {
        // sum_{s <= t} h[c, t - s] u_s[c]
        double acc = static_cast<double>(bias_.value()[c]) * u[b * D_ + c];
        for (int64_t s = 0; s <= t; ++s) acc += static_cast<double>(hf[c * Lmax_ + t - s]) * st.row(b, s)[c];
        y[b * D_ + c] = z[b * 3 * D_ + c] * static_cast<float>(acc);
      }
    return ab::linear(ab::Var(y), w_out_, b_out_).value();
  }

 private:
  // The implicit filters for the first n positions: [D, n] (forward only) or [2D, n] (both).
  ab::Var filter(int64_t n, bool both) {
    ab::Tensor e = ab::Tensor::empty({n, E_});
    std::memcpy(e.data(), emb_.data(), static_cast<size_t>(n * E_) * sizeof(float));
    ab::Var a(e);
    for (size_t i = 0; i < ffn_w_.size(); ++i) a = sin_op(ab::mul(ab::linear(a, ffn_w_[i], ffn_b_[i]), freq_));  // [n, F]
    // Channel-major straight from the GEMM, h^T = filter_out^T a^T [2D, n] (transposed operands, no
    // copies), rather than transposing the [n, 2D] product (a generic permute of 2 D n floats each
    // way was 7% of hyena's fwd_bwd at N 4096).
    ab::Var h = ab::matmul(filter_out_, a, true, true);  // [2D, n]
    const int64_t dk = both ? 2 * D_ : D_;
    if (!both) h = ab::slice(h, 0, 0, D_);
    ab::Tensor w = ab::Tensor::empty({dk, n});
    for (int64_t c = 0; c < dk; ++c)
      std::memcpy(w.data() + c * n, window_t_.data() + (c % D_) * Lmax_, static_cast<size_t>(n) * sizeof(float));
    return ab::mul(h, ab::Var(w));  // [dk, n]
  }

  int64_t D_, Lmax_, K_, F_, E_;
  ab::Var w_in_, b_in_, w_short_, b_short_, w_out_, b_out_, filter_out_, freq_, bias_;
  std::vector<ab::Var> ffn_w_, ffn_b_;
  ab::Tensor emb_, window_t_;  // [Lmax, E], decay window [D, Lmax]
  ab::Tensor decode_filter_;  // [D, Lmax]
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Hyena);
