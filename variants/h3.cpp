// h3 — Hungry Hungry Hippos: a shift SSM on the keys and a diagonal SSM on the key-value products,
// read out by the queries.
// Dao, Fu, Saab, Thomas, Rudra, Re 2023, "Hungry Hungry Hippos: Towards Language Modeling with State
// Space Models" (ICLR). Layer as in the reference H3 module (safari / H3 repositories):
//   q, k, v = x W_{q,k,v} + b                               [B, N, D]
//   k <- SSM_shift(k)  = causal depthwise convolution with d_state taps (the shift SSM's kernel is
//                        its C vector; its D skip is tap 0) — ab::short_conv
//   per head h (H = D / head_dim heads of size d = head_dim), per position:
//   kv[h, i, j] = k[h, i] v[h, j]                           [B, N, H, d, d]
//   s = SSM_diag(kv) + D_h kv   (S4D kernel per head, shared by its d x d channels; FFT convolution)
//   y[h, j] = sum_i q[h, i] s[h, i, j];   out = y W_o + b_o
// head_dim = 1 (the reference default) is the elementwise form q * SSM_diag(SSM_shift(k) * v);
// head_dim = 0 takes d = d_model / (the model's heads), the paper's multi-head outer-product form.
// Bidirectional mode adds an anti-causal diagonal-SSM kernel (second C, shared A and dt); the shift
// SSM stays causal.
// Time O(B N D^2) projections + O(B N D K) shift + O(B N log N D d) FFT convolution; memory
// O(B N D d) saved for backward. Decode: the shift buffer (K - 1 tokens) and the complex diagonal-SSM
// state [B, H, d, d, n_s / 2], O(D (K + d n_s)) per token.
// Capabilities: causal, bidirectional, decode; no padding mask. SSM A and dt are stored as vectors
// (rank 1) so the trainer's weight decay leaves them alone.
#include <cmath>
#include <numbers>

#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

class H3State final : public ab::DecodeState {
 public:
  H3State(int64_t batch, int64_t d_model, int64_t taps, int64_t channels, int64_t modes)
      : shift(batch, d_model, taps), ssm(batch, channels, modes) {}
  int64_t bytes() const override { return shift.bytes() + ssm.bytes(); }
  ab::ShortConvState shift;
  ab::DiagSsmState ssm;
};

class H3 final : public ab::Mixer {
 public:
  explicit H3(const ab::MixerConfig& cfg)
      : D_(cfg.d_model), K_(cfg.params.at("d_state").get<int64_t>()), n_(K_ / 2) {
    const int64_t hd = cfg.params.at("head_dim").get<int64_t>();
    d_ = hd > 0 ? hd : D_ / cfg.heads;
    if (d_ < 1 || D_ % d_ != 0)
      throw ab::UsageError("h3: head_dim " + std::to_string(d_) + " must divide d_model " + std::to_string(D_));
    if (K_ % 2 != 0) throw ab::UsageError("h3: d_state must be even");
    H_ = D_ / d_;
    const double dt_min = cfg.params.at("dt_min").get<double>(), dt_max = cfg.params.at("dt_max").get<double>();
    if (dt_max < dt_min) throw ab::UsageError("h3: dt_max must be >= dt_min");
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    wq_ = add_param("wq", ab::init_xavier_uniform(D_, D_, stream(0)));
    wk_ = add_param("wk", ab::init_xavier_uniform(D_, D_, stream(1)));
    wv_ = add_param("wv", ab::init_xavier_uniform(D_, D_, stream(2)));
    wo_ = add_param("wo", ab::init_xavier_uniform(D_, D_, stream(3)));
    bq_ = add_param("bq", ab::Tensor::zeros({D_}));
    bk_ = add_param("bk", ab::Tensor::zeros({D_}));
    bv_ = add_param("bv", ab::Tensor::zeros({D_}));
    bo_ = add_param("bo", ab::Tensor::zeros({D_}));
    // Shift SSM: its C (and D as tap 0), normal with stddev 1/sqrt(K) so the output keeps the scale.
    w_shift_ = add_param("w_shift", ab::init_normal({D_, K_}, static_cast<float>(1.0 / std::sqrt(double(K_))), stream(4)));
    // Diagonal SSM per head, S4D-Lin initialisation.
    ab::Tensor log_dt = ab::Tensor::empty({H_});
    {
      ab::RngStream r = stream(5);
      for (int64_t h = 0; h < H_; ++h)
        log_dt[h] = static_cast<float>(std::log(dt_min) + r.uniform_double() * (std::log(dt_max) - std::log(dt_min)));
    }
    ab::Tensor aim = ab::Tensor::empty({H_ * n_});
    for (int64_t h = 0; h < H_; ++h)
      for (int64_t m = 0; m < n_; ++m) aim[h * n_ + m] = static_cast<float>(std::numbers::pi * m);
    log_dt_ = add_param("log_dt", log_dt, Decay::none);
    log_a_re_ = add_param("log_a_re", ab::Tensor::full({H_ * n_}, static_cast<float>(std::log(0.5))), Decay::none);
    a_im_ = add_param("a_im", aim, Decay::none);
    c_fwd_ = add_param("c_fwd", ab::init_normal({H_, n_, 2}, static_cast<float>(std::sqrt(0.5)), stream(6)));
    c_bwd_ = add_param("c_bwd", ab::init_normal({H_, n_, 2}, static_cast<float>(std::sqrt(0.5)), stream(7)));
    skip_ = add_param("skip", ab::init_normal({H_}, 1.0f, stream(8)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "h3", "state-space", "H3: shift SSM on k, diagonal SSM on k v^T per head, read out by q (FFT convolution)",
        "Dao, Fu et al. 2023, Hungry Hungry Hippos: Towards Language Modeling with State Space Models",
        {
            ab::int_param("d_state", 64,
                          "state size: taps of the shift SSM and n_s of the diagonal SSM (n_s / 2 complex "
                          "modes; even)",
                          2, 4096),
            ab::int_param("head_dim", 1, "head size d (1 = reference default, elementwise; 0 = d_model / model heads)",
                          0, 4096),
            ab::num_param("dt_min", 1e-3, "smallest initial diagonal-SSM step (log-uniform in [dt_min, dt_max])", 1e-6,
                          10.0),
            ab::num_param("dt_max", 1e-1, "largest initial diagonal-SSM step", 1e-6, 10.0),
        },
        {.causal = true, .bidirectional = true, .padding_mask = false, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, K = a.params->at("d_state").get<int64_t>(), n = K / 2;
      const int64_t hd = a.params->at("head_dim").get<int64_t>();
      const double d = hd > 0 ? hd : a.d_model / a.heads, H = D / d;
      const double M = static_cast<double>(ab::fft_conv_length(a.length, a.length)), Mh = M / 2 + 1;
      const double kernels = a.causal ? 1 : 2, fft = 2.5 * M * std::log2(M);
      ab::Cost c;
      c.flops = 2 * B * N * D * D * 4 + 2 * B * N * D * K  // projections, shift convolution
                + kernels * (8 * H * n * N + H * fft)       // diagonal-SSM kernels and spectra
                + B * D * d * (2 * fft + 6 * Mh)            // FFT convolution of the d x d channels per head
                + 6 * B * N * D * d;                        // outer product, skip, readout
      // Saved: the key projection (shift-conv input), the shifted keys, v, q and the readout y
      // (5 B N D floats), kv and the SSM output s (2 B N D d floats), the kernel spectrum [M/2+1, H].
      c.activation_bytes = 4 * (5 * B * N * D + 2 * B * N * D * d + 2 * Mh * H);
      c.state_bytes = 4 * B * (K - 1) * D + 8 * B * D * d * n;
      // Peak in the FFT convolution's backward: the saved tensors, its channel-major workspaces
      // (padded rows, the gradient's and input's spectra, the kernel-gradient accumulator) and the
      // gradients of kv and s around it (about 6 M channels of D d), y and du (2 B N D) and one
      // projection's gradient.
      c.peak_bytes = c.activation_bytes + 4 * (2 * B * N * D + 6 * M * D * d + D * D);
      return c;
    };
    // Finite differences in log dt (step 1e-2) are only accurate while the phase l dt Im(A) of the
    // kernel stays moderate over the N = 8 lags of the conformance sizes: fewer modes, smaller steps.
    s.check_params = {{"d_state", 8}, {"dt_max", 0.02}};
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1);
    const ab::Var q = ab::linear(x, wq_, bq_), v = ab::linear(x, wv_, bv_);
    const ab::Var k = ab::short_conv(ab::linear(x, wk_, bk_), w_shift_, ab::Var(), true);  // SSM_shift, [B, N, D]
    const ab::Var lar = ab::reshape(log_a_re_, {H_, n_}), aim = ab::reshape(a_im_, {H_, n_});
    const ab::Var kf = ab::ssm_diag_kernel(log_dt_, lar, aim, c_fwd_, N);                               // [H, N]
    const ab::Var kb = ctx.causal ? ab::Var() : ab::ssm_diag_kernel(log_dt_, lar, aim, c_bwd_, N);  // [H, N]
    if (d_ == 1) {  // elementwise: H = D channels
      const ab::Var kv = ab::mul(k, v);  // [B, N, D]
      const ab::Var s = ab::add(ab::fft_conv(kv, kf, kb), ab::mul(kv, skip_));
      return ab::linear(ab::mul(q, s), wo_, bo_);
    }
    // kv[b, t, h, i, j] = k[b, t, h, i] v[b, t, h, j] -> [B, N, H * d * d]
    const ab::Var kv = ab::reshape(ab::mul(ab::reshape(k, {B, N, H_, d_, 1}), ab::reshape(v, {B, N, H_, 1, d_})),
                                   {B, N, H_ * d_ * d_});
    const ab::Var conv = ab::reshape(ab::fft_conv(kv, kf, kb), {B, N, H_, d_ * d_});
    const ab::Var s = ab::add(conv, ab::mul(ab::reshape(kv, {B, N, H_, d_ * d_}), ab::reshape(skip_, {H_, 1})));
    // y[b, t, h, j] = sum_i q[b, t, h, i] s[b, t, h, i, j]
    const ab::Var y = ab::sum_dim(ab::mul(ab::reshape(q, {B, N, H_, d_, 1}), ab::reshape(s, {B, N, H_, d_, d_})), 3);
    return ab::linear(ab::reshape(y, {B, N, D_}), wo_, bo_);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    modes_ = ab::diag_ssm_modes(log_dt_.value(), log_a_re_.value(), a_im_.value(), c_fwd_.value());
    return std::make_unique<H3State>(batch, D_, K_, H_ * d_ * d_, n_);
  }

  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<H3State&>(state);
    const int64_t B = x_t.dim(0), dd = d_ * d_;
    const ab::Var xv(x_t);
    const ab::Tensor q = ab::linear(xv, wq_, bq_).value(), v = ab::linear(xv, wv_, bv_).value();
    const ab::Tensor k = st.shift.step(ab::linear(xv, wk_, bk_).value(), w_shift_.value(), nullptr);  // [B, 1, D]
    ab::Tensor kv = ab::Tensor::empty({B, H_ * dd});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H_; ++h)
        for (int64_t i = 0; i < d_; ++i)
          for (int64_t j = 0; j < d_; ++j)
            kv[(b * H_ + h) * dd + i * d_ + j] = k[b * D_ + h * d_ + i] * v[b * D_ + h * d_ + j];
    const ab::Tensor s = st.ssm.step(kv, modes_);  // [B, H * d * d]
    ab::Tensor y = ab::Tensor::zeros({B, 1, D_});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H_; ++h)
        for (int64_t i = 0; i < d_; ++i) {
          const float qi = q[b * D_ + h * d_ + i];
          for (int64_t j = 0; j < d_; ++j) {
            const int64_t at = (b * H_ + h) * dd + i * d_ + j;
            y[b * D_ + h * d_ + j] += qi * (s[at] + skip_.value()[h] * kv[at]);
          }
        }
    return ab::linear(ab::Var(y), wo_, bo_).value();
  }

 private:
  int64_t D_, K_, n_, d_ = 1, H_ = 1;
  ab::Var wq_, wk_, wv_, wo_, bq_, bk_, bv_, bo_, w_shift_, log_dt_, log_a_re_, a_im_, c_fwd_, c_bwd_, skip_;
  ab::DiagSsmModes modes_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(H3);
