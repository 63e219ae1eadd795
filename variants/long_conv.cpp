// long_conv — an explicit long convolution: every channel has a learned kernel as long as the
// longest sequence, applied by FFT, with safari's squash regulariser and optional smoothing.
// Fu, Epstein, Nguyen, Thomas, Zhang, Dao, Rudra, Re 2023, "Simple Hardware-Efficient Long
// Convolutions for Sequence Modeling"; follows HazyResearch/safari@bf27ebe src/models/sequence/
// long_conv.py (LongConv) and long_conv_kernel.py (LongConvKernel):
//   k = squash(smooth(K)),  squash(k) = relu(|k| - lam) sign(k)   (soft threshold, lam = 0.002)
//   smooth = moving average over ma_window lags (AvgPool1d, zero padded, divided by the window;
//            off by default as in LongConvKernel)
//   y = GLU(W_out GELU(k * u + D u) + b_out)       (* = causal convolution along the sequence)
// over the d_model channels (no projections in front, no heads). Bidirectional: a second kernel
// for the anti-causal part, starting at lag 1 (safari pads the flipped second kernel by L, so
// lag 0 belongs to the causal kernel only). Kernel init randn * 0.002 (weight_init "random"),
// D randn. Kernel dropout (safari's LRA configs: 0.2) is a parameter, 0 by default here.
// The kernels are [D, max_length] parameters: a sequence of N <= max_length uses lags < N.
// Time O(B D M log M) with M ~ 2N (ab::fft_conv) + O(B N D^2) for the output linear.
// Decode: y_t = sum_{l <= t} k[l] u_{t - l} from the inputs so far (the kernel is explicit, so the
// state is the whole history, B t D floats).
// Capabilities: causal, bidirectional, padding mask (padded inputs are zeroed, as safari's
// `lengths` mask does), decode.
#include <fmt/format.h>

#include <cmath>

#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"
#include "conv_glu_block.hpp"

namespace {

// The inputs seen so far, [B, t, D], in a buffer of max_length rows.
struct LongConvState final : ab::DecodeState {
  LongConvState(int64_t batch, int64_t max_length, int64_t d) : u(ab::Tensor::zeros({batch, max_length, d})) {}
  ab::Tensor u;
  int64_t length = 0;
  int64_t bytes() const override { return u.dim(0) * length * u.dim(2) * 4; }
};

class LongConv final : public ab_conv_glu::ConvGluMixer {
 public:
  explicit LongConv(const ab::MixerConfig& cfg)
      : ConvGluMixer(cfg.d_model),
        max_length_(cfg.max_length),
        window_(cfg.params.at("ma_window").get<int64_t>()),
        lam_(static_cast<float>(cfg.params.at("lam").get<double>())),
        dropout_(static_cast<float>(cfg.params.at("kernel_dropout").get<double>())) {
    if (window_ > 0 && window_ % 2 == 0)
      throw ab::UsageError(fmt::format("long_conv: ma_window must be odd (or 0 = off); nearest valid: {}", window_ + 1));
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    k_fwd_ = add_param("kernel_fwd", ab::init_normal({d_, max_length_}, 0.002f, stream(0)), Decay::none);
    k_bwd_ = add_param("kernel_bwd", ab::init_normal({d_, max_length_}, 0.002f, stream(1)), Decay::none);
    add_output_params(stream(2), stream(3));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "long_conv", "state-space",
        "explicit learned length-N convolution kernel per channel (safari long conv), squash + FFT",
        "Fu et al. 2023, Simple Hardware-Efficient Long Convolutions for Sequence Modeling",
        {
            ab::num_param("lam", 0.002, "squash threshold: k <- relu(|k| - lam) sign(k) (safari LRA: 0.002)", 0.0, 1.0),
            ab::int_param("ma_window", 0, "moving-average smoothing of the kernel over this many lags (odd; 0 = off)",
                          0, 63),
            ab::num_param("kernel_dropout", 0.0, "dropout on the kernel taps in training (safari LRA: 0.2)", 0.0, 0.95),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .length_dependent = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, L = N;  // taps used (max_length when smoothing)
      const double M = static_cast<double>(ab::fft_conv_length(a.length, a.length)), Mh = M / 2 + 1;
      const double kernels = a.causal ? 1 : 2;
      const double W = static_cast<double>(a.params->at("ma_window").get<int64_t>());
      const double fft = 2.5 * M * std::log2(M);
      ab::Cost c;
      c.flops = kernels * D * L * (3 + 2 * W)            // smoothing and squash of the taps
                + kernels * D * fft                       // kernel spectra
                + B * D * (2 * fft + 6 * Mh)              // forward + inverse transform, product
                + 2 * B * N * D * (2 * D) + 6 * B * N * D;  // output linear, skip, GELU, GLU
      // Saved: the convolution's input, the GELU input and output, the GLU halves (5 B N D), the
      // kernel spectrum [M/2+1, D] complex and the squashed kernels' inputs (kernels D L).
      c.activation_bytes = 4 * (5 * B * N * D + 2 * Mh * D + kernels * D * L);
      c.state_bytes = 4 * B * N * D;  // the inputs so far
      c.peak_bytes = 4 * (5 * B * N * D + 8 * M * D + 2 * D * D + 3 * kernels * D * L);
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1);
    if (N > max_length_)
      throw ab::UsageError(fmt::format("long_conv: sequence length {} exceeds the model's max_length {}", N, max_length_));
    const ab::Var u = ctx.key_mask ? ab::mul(x, ab::Var(ab::keep_flags(ctx.key_mask, {B, N, 1}))) : x;
    const ab::Var kf = kernel(k_fwd_, N, ctx, 0);  // [D, N]
    ab::Var kb;
    if (!ctx.causal && N > 1) {  // lags 1..N-1 of the anti-causal side: shift the taps by one
      const ab::Var k1 = kernel(k_bwd_, N - 1, ctx, 1);
      kb = ab::concat({ab::Var(ab::Tensor::zeros({d_, 1})), k1}, 1);  // [D, N]
    }
    return output(ab::fft_conv(u, kf, kb), u);  // [B, N, D]
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    ab::NoGrad ng;
    ab::MixerContext causal;
    causal.causal = true;
    taps_ = kernel(k_fwd_, max_length_, causal, 0).value();  // [D, max_length]
    return std::make_unique<LongConvState>(batch, max_length_, d_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<LongConvState&>(state);
    if (st.length >= max_length_)
      throw ab::UsageError(fmt::format("long_conv: decoding past the model's max_length {}", max_length_));
    const int64_t B = x_t.dim(0), t = st.length++;
    ab::Tensor y = ab::Tensor::empty({B, 1, d_});
    for (int64_t b = 0; b < B; ++b) {
      float* hist = st.u.data() + b * max_length_ * d_;
      for (int64_t c = 0; c < d_; ++c) hist[t * d_ + c] = x_t[b * d_ + c];
      for (int64_t c = 0; c < d_; ++c) {
        const float* k = taps_.data() + c * max_length_;
        double acc = skip_.value()[c] * hist[t * d_ + c];
        for (int64_t l = 0; l <= t; ++l) acc += double(k[l]) * hist[(t - l) * d_ + c];
        y[b * d_ + c] = static_cast<float>(acc);
      }
    }
    return glu_out(ab::gelu(ab::Var(y))).value();
  }

 private:
  // The first `length` taps of one kernel after smoothing, squash and dropout: [D, length].
  ab::Var kernel(const ab::Var& raw, int64_t length, const ab::MixerContext& ctx, uint64_t which) const {
    ab::Var k = raw;
    if (window_ > 0) {  // a centred average over the lags: the lags as the sequence axis of short_conv
      const ab::Tensor w = ab::Tensor::full({d_, window_}, 1.0f / static_cast<float>(window_));
      const ab::Var kt = ab::reshape(ab::transpose(k, 0, 1), {1, max_length_, d_});
      k = ab::transpose(ab::reshape(ab::short_conv(kt, ab::Var(w), ab::Var(), false), {max_length_, d_}), 0, 1);
    }
    k = ab::slice(k, 1, 0, length);
    if (lam_ > 0.f)  // relu(|k| - lam) sign(k) = relu(k - lam) - relu(-k - lam)
      k = ab::sub(ab::relu(ab::add_scalar(k, -lam_)), ab::relu(ab::add_scalar(ab::scale(k, -1.f), -lam_)));
    if (dropout_ > 0.f)
      k = ab::dropout(k, dropout_, ab::RngStream(ctx.seed, ab::Purpose::dropout, ctx.step, ctx.layer, 1 + which),
                      ctx.training);
    return k;
  }

  int64_t max_length_, window_;
  float lam_, dropout_;
  ab::Var k_fwd_, k_bwd_;
  ab::Tensor taps_;  // decode: the causal kernel [D, max_length]
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(LongConv);
