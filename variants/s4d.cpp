// s4d — diagonal structured state-space model (S4D) as a token mixer, one SSM per channel.
// Gu, Gupta, Goel, Re 2022, "On the Parameterization and Initialization of Diagonal State Space
// Models" (S4D); the block follows the reference `s4d.py` of state-spaces/s4 (standalone S4D):
//   K[c, l] = 2 Re(sum_n C_n Bbar_n Abar_n^l),  Abar = exp(dt A), Bbar = (Abar - 1) / A (ZOH, B = 1)
//   y = GLU(W_out GELU(K * x + D x) + b_out)   (* = causal long convolution along the sequence)
// over the d_model channels of x (no Q/K/V projections, no heads). A_n = -exp(log_a_re) + i a_im with
// S4D-Lin (a_im = pi n) or S4D-Inv (a_im = (n_s / pi)(n_s / (2n + 1) - 1)) initialisation, Re(A)
// = -1/2; dt log-uniform in [dt_min, dt_max] per channel; C complex normal (variance 1); D normal.
// Bidirectional: a second C (shared A and dt) gives the anti-causal kernel, summed with the causal
// one (lag 0 counted twice, as in S4's bidirectional kernels); unused in causal mode.
// Time O(B N log N D) for the FFT convolution + O(D n_s N) for the kernel + O(B N D^2) for the output
// linear; memory O(B N D) saved for backward plus the kernel spectrum O(N D).
// Decode: the recurrent form x_t = Abar x_{t-1} + Bbar u_t, y_t = 2 Re(C x_t) + D u_t with a complex
// state [B, D, n_s / 2]; O(D n_s) per token, constant state.
// Capabilities: causal, bidirectional, decode. No padding mask (the convolution mixes padded
// positions in, as the reference does). SSM parameters are stored as vectors (rank 1) so that the
// trainer's weight decay (matrices only) leaves A and dt alone, as S4 recommends.
#include <cmath>
#include <numbers>

#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/variant.hpp"
#include "conv_glu_block.hpp"

namespace {

class S4d final : public ab_conv_glu::ConvGluMixer {
 public:
  explicit S4d(const ab::MixerConfig& cfg) : ConvGluMixer(cfg.d_model), n_(cfg.params.at("d_state").get<int64_t>() / 2) {
    const double dt_min = cfg.params.at("dt_min").get<double>(), dt_max = cfg.params.at("dt_max").get<double>();
    if (dt_max < dt_min) throw ab::UsageError("s4d: dt_max must be >= dt_min");
    if (cfg.params.at("d_state").get<int64_t>() % 2 != 0) throw ab::UsageError("s4d: d_state must be even");
    const bool inv = cfg.params.at("init").get<std::string>() == "inv";
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    ab::Tensor log_dt = ab::Tensor::empty({d_});
    {
      ab::RngStream r = stream(0);
      for (int64_t c = 0; c < d_; ++c)
        log_dt[c] = static_cast<float>(std::log(dt_min) + r.uniform_double() * (std::log(dt_max) - std::log(dt_min)));
    }
    ab::Tensor lar = ab::Tensor::full({d_ * n_}, static_cast<float>(std::log(0.5)));
    ab::Tensor aim = ab::Tensor::empty({d_ * n_});
    const double ns = static_cast<double>(2 * n_), pi = std::numbers::pi;
    for (int64_t c = 0; c < d_; ++c)
      for (int64_t m = 0; m < n_; ++m)
        aim[c * n_ + m] = static_cast<float>(inv ? ns / pi * (ns / (2.0 * m + 1.0) - 1.0) : pi * m);
    log_dt_ = add_param("log_dt", log_dt, Decay::none);
    log_a_re_ = add_param("log_a_re", lar, Decay::none);
    a_im_ = add_param("a_im", aim, Decay::none);
    // Complex normal with variance 1: real and imaginary parts N(0, 1/2).
    c_fwd_ = add_param("c_fwd", ab::init_normal({d_, n_, 2}, static_cast<float>(std::sqrt(0.5)), stream(1)));
    c_bwd_ = add_param("c_bwd", ab::init_normal({d_, n_, 2}, static_cast<float>(std::sqrt(0.5)), stream(2)));
    add_output_params(stream(3), stream(4));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "s4d", "state-space",
        "diagonal SSM per channel (S4D), kernel by Vandermonde sums, FFT convolution, GELU + GLU output",
        "Gu et al. 2022, On the Parameterization and Initialization of Diagonal State Space Models (S4D)",
        {
            ab::int_param("d_state", 64, "state size n_s per channel (n_s / 2 complex modes; even)", 2, 4096),
            ab::num_param("dt_min", 1e-3, "smallest initial step dt (log-uniform in [dt_min, dt_max])", 1e-6, 10.0),
            ab::num_param("dt_max", 1e-1, "largest initial step dt", 1e-6, 10.0),
            ab::enum_param("init", "lin", {"lin", "inv"}, "imaginary parts of A: S4D-Lin (pi n) or S4D-Inv"),
        },
        {.causal = true, .bidirectional = true, .padding_mask = false, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, n = a.params->at("d_state").get<int64_t>() / 2;
      const double M = static_cast<double>(ab::fft_conv_length(a.length, a.length)), Mh = M / 2 + 1;
      const double kernels = a.causal ? 1 : 2;
      const double fft = 2.5 * M * std::log2(M);  // one real transform of length M
      ab::Cost c;
      c.flops = kernels * 8 * D * n * N            // Vandermonde kernel sums
                + kernels * D * fft                 // kernel spectra
                + B * D * (2 * fft + 6 * Mh)        // forward + inverse transform, spectrum product
                + 2 * B * N * D * (2 * D) + 6 * B * N * D;  // output linear, skip, GELU, GLU
      // Saved: the GELU input and output, the GLU's linear half and sigmoid (4 B N D floats), and the
      // kernel spectrum [M/2+1, D] complex.
      c.activation_bytes = 4 * (4 * B * N * D + 2 * Mh * D);
      c.state_bytes = 8 * B * D * n;  // complex state
      // Peak in the FFT convolution's backward: its per-sequence workspaces (padded signal, the
      // gradient's and input's spectra, the kernel-gradient accumulator, the inverse output, the
      // reduction: about 8 M D) and the saved spectrum (M D), with the saved GELU/GLU tensors, y,
      // du (4 B N D) and the output linear's gradient (2 D^2).
      c.peak_bytes = 4 * (4 * B * N * D + 9 * M * D + 2 * D * D);
      return c;
    };
    // Finite differences in log dt (step 1e-2) are only accurate while the phase l dt Im(A) of the
    // kernel stays moderate over the N = 8 lags of the conformance sizes: fewer modes, smaller steps.
    s.check_params = {{"d_state", 8}, {"dt_max", 0.02}};
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t N = x.dim(1);
    const ab::Var lar = ab::reshape(log_a_re_, {d_, n_}), aim = ab::reshape(a_im_, {d_, n_});
    const ab::Var kf = ab::ssm_diag_kernel(log_dt_, lar, aim, c_fwd_, N);                               // [D, N]
    const ab::Var kb = ctx.causal ? ab::Var() : ab::ssm_diag_kernel(log_dt_, lar, aim, c_bwd_, N);  // [D, N]
    return output(ab::fft_conv(x, kf, kb), x);  // [B, N, D]
  }

  // The recurrent form, one token at a time.
  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    modes_ = ab::diag_ssm_modes(log_dt_.value(), log_a_re_.value(), a_im_.value(), c_fwd_.value());
    return std::make_unique<ab::DiagSsmState>(batch, d_, n_);
  }
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    const int64_t B = x_t.dim(0);
    ab::Tensor y = static_cast<ab::DiagSsmState&>(state).step(x_t, modes_);  // [B, D]
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < d_; ++c) y[b * d_ + c] += skip_.value()[c] * x_t[b * d_ + c];
    return glu_out(ab::gelu(ab::Var(y.reshape({B, 1, d_})))).value();
  }

 private:
  int64_t n_;
  ab::Var log_dt_, log_a_re_, a_im_, c_fwd_, c_bwd_;
  ab::DiagSsmModes modes_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(S4d);
