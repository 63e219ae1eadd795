// fnet — Fourier token mixing: y = Re(FFT_seq(FFT_hidden(x))), no parameters.
// Lee-Thorp et al. 2021, "FNet: Mixing Tokens with Fourier Transforms".
// Time O(B N D (log N + log D)); memory: nothing saved for backward (the map is linear and its
// own adjoint), a transient complex [B, N, D/2+1] buffer per call.
// Capabilities: bidirectional only (a global DFT has no causal form); ignores the padding mask,
// since padded positions are mixed like every other position (declared padding_mask = false).
// Caveats: the paper's DFT is unnormalised, so the output is about sqrt(N D) times larger than the
// input; FNet's post-norm blocks absorb that, our pre-norm blocks add it to the residual stream.
// `normalize = ortho` divides by sqrt(N D) (then the map has spectral norm <= 1). Runs in fp32
// (FFTW single precision), as §3.8 of the reference notes (xformers disables autocast for it).
#include <cmath>
#include <stdexcept>
#include <string>

#include "attnbench/kernels/fft.hpp"
#include "attnbench/variant.hpp"

namespace {

class FNet final : public ab::Mixer {
 public:
  explicit FNet(const ab::MixerConfig& cfg) : ortho_(cfg.params.at("normalize").get<std::string>() == "ortho") {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "fnet", "fourier", "FNet: real part of the 2-D DFT over sequence and hidden axes, no parameters",
        "Lee-Thorp et al. 2021, FNet: Mixing Tokens with Fourier Transforms",
        {ab::enum_param("normalize", "none", {"none", "ortho"},
                        "none: the paper's unnormalised DFT; ortho: divide by sqrt(N D)")},
        {.causal = false, .bidirectional = true, .padding_mask = false});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model;
      ab::Cost c;
      // Real FFT over D (about 2.5 D log2 D per row) on B N rows, complex FFT over N (5 N log2 N)
      // on B (D/2 + 1) columns; the Hermitian mirror and the scaling are O(B N D).
      c.flops = B * N * 2.5 * D * std::log2(std::max(D, 2.0)) + B * (D / 2 + 1) * 5 * N * std::log2(std::max(N, 2.0)) +
                B * N * D;
      c.activation_bytes = 0;  // linear and self-adjoint: backward needs no saved values
      // Peak in backward: y, the complex spectrum of the 2-D FFT (B N (D/2 + 1) complex) and dx.
      c.peak_bytes = 4 * 2 * B * N * D + 8 * B * N * (D / 2 + 1);
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    if (ctx.causal) throw std::invalid_argument("fnet has no causal form");
    const double N = static_cast<double>(x.dim(1)), D = static_cast<double>(x.dim(2));
    return ab::fourier_mix(x, ortho_ ? static_cast<float>(1.0 / std::sqrt(N * D)) : 1.0f);
  }

 private:
  bool ortho_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(FNet);
