// kernel_rpe_fft — kernelised attention with relative positional encoding, the Toeplitz RPE matrix
// applied by FFT. Luo, Li, Cai, He, Zheng, Ke, Wang, Liu 2021, "Stable, Fast and Accurate:
// Kernelized Attention with Relative Positional Encoding" (NeurIPS), Sec. 3:
//   out_i = sum_j C_ij phi(q_i)^T phi(k_j) v_j / sum_j C_ij phi(q_i)^T phi(k_j),  C_ij = exp(b_{i-j})
// with positive random features phi (Performer's PRF: phi(x) = m^-1/2 exp(W x^ - |x^|^2 / 2 - c),
// x^ = x d^-1/4, ab::favor_features). Since C is Toeplitz, sum_j C_ij phi(k_j) [v_j, 1]^T is a 1-D
// convolution along the sequence of the m x (d + 1) matrices phi(k_j) [v_j, 1]^T with the kernel
// exp(b), read out by phi(q_i): ab::fft_toeplitz_attention, which builds, convolves and reads out
// the H m (d + 1) channels a block at a time (never materialising them), one kernel per head.
// b: a learned bias per head and lag, zero-initialised (C = 1: plain Performer at init), lags
// -(max_length - 1) .. max_length - 1; causal = the lags >= 0 only (b_{<0} = -inf).
// Deliberate differences: W [m, d] is i.i.d. Gaussian, drawn once per layer at construction and
// never redrawn (the paper inherits Performer's orthogonal features and redraws); the additive
// stabiliser of the keys is 0 so that their per-(batch, head) maximum cancels exactly in the ratio.
// Time O(B H N log N m d) (the paper's); memory O(B N H (m + d)): the per-position outer products
// and their convolution exist only a block of channels at a time.
// Capabilities: bidirectional, causal, padding mask (phi(k) zeroed at padded keys). No decode: the
// keys' stabilising maximum spans the whole sequence, and a general Toeplitz C has no finite state.
#include <fmt/format.h>

#include <cmath>

#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class KernelRpeFft final : public ab::AttentionMixer {
 public:
  explicit KernelRpeFft(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), m_(cfg.params.at("num_features").get<int64_t>()), max_length_(cfg.max_length) {
    w_ = ab::init_normal({m_, head_dim_}, 1.0f, ab::RngStream(cfg.seed, ab::Purpose::mixer, cfg.layer, 0));
    // lag l >= 0 in rpe_fwd[:, l]; lag -l (l >= 1) in rpe_bwd[:, l - 1]
    b_fwd_ = add_param("rpe_fwd", ab::Tensor::zeros({heads_, max_length_}), Decay::none);
    b_bwd_ = add_param("rpe_bwd", ab::Tensor::zeros({heads_, max_length_}), Decay::none);
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "kernel_rpe_fft", "kernel", "positive random features with a Toeplitz RPE exp(b_{i-j}), the RPE product by FFT",
        "Luo et al. 2021, Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding",
        {ab::int_param("num_features", 32, "random features m per head", 1, 4096)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .length_dependent = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double m = static_cast<double>(a.params->at("num_features").get<int64_t>());
      const double C = H * m * (d + 1);  // FFT channels per sequence
      const double M = static_cast<double>(ab::fft_conv_length(a.length, a.length)), Mh = M / 2 + 1;
      const double fft = 2.5 * M * std::log2(M);
      ab::Cost c;
      c.flops = 2 * B * N * D * D * 4          // projections
                + 2 * 2 * B * N * H * m * d     // features of q and k
                + B * N * C                      // outer products
                + B * C * (2 * fft + 6 * Mh)     // forward + inverse transform, product
                + 2 * B * N * C + B * N * D;     // readout phi(q)^T S, division
      // Saved: q, k, v and the merged heads (4 B N D); phi(q), phi(k) (2 B H N m); the fused
      // op's channel-major copies of phi(q), phi(k) and [v, 1] (B H N (2 m + d + 1)) and the
      // kernel spectra (H (M/2+1) complex); the numerator and denominator (B H N (d + 1)).
      c.activation_bytes =
          4 * (4 * B * N * D + 2 * B * H * N * m + B * H * N * (2 * m + d + 1) + 2 * H * Mh + B * H * N * (d + 1));
      // Backward: the gradients of those copies, channel-major and back (2 B H N (2 m + d + 1)),
      // and the rows of a block of channels (16 real rows, two spectra) per running task (two).
      c.peak_bytes = c.activation_bytes + 4 * (2 * B * H * N * (2 * m + d + 1) + 2 * 16 * (M + 4 * Mh));
      // No c.bytes: the products and their convolution stay in cache (the default traffic).
      return c;
    };
    s.check_params = {{"num_features", 8}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), H = heads_, N = q.dim(2), d = head_dim_;
    if (N > max_length_)
      throw ab::UsageError(
          fmt::format("kernel_rpe_fft: sequence length {} exceeds the model's max_length {}", N, max_length_));
    ab::FavorOptions fo;
    fo.kernel = ab::FavorKernel::softmax_positive;
    fo.is_query = true;
    const ab::Var fq = ab::favor_features(q, w_, fo);  // [B, H, N, m]
    fo.is_query = false;
    fo.stabilizer = 0.f;
    fo.key_mask = ctx.key_mask;
    ab::Var fk = ab::favor_features(k, w_, fo);  // [B, H, N, m]
    if (ctx.key_mask) fk = ab::mul(fk, ab::Var(ab::keep_flags(ctx.key_mask, {B, 1, N, 1})));
    const ab::Var v1 = ab::concat({v, ab::Var(ab::Tensor::full({B, H, N, 1}, 1.f))}, 3);  // [B, H, N, d + 1]
    const ab::Var kf = ab::exp(ab::slice(b_fwd_, 1, 0, N));  // [H, N], lag 0 ..
    ab::Var kb;
    if (!ctx.causal && N > 1)  // lags -1 .. -(N - 1); lag 0 is the causal kernel's
      kb = ab::concat({ab::Var(ab::Tensor::zeros({H, 1})), ab::exp(ab::slice(b_bwd_, 1, 0, N - 1))}, 1);
    // r_i = sum_j C_ij phi(q_i)^T phi(k_j) [v_j, 1]: [B, H, N, d + 1]
    const ab::Var r = ab::fft_toeplitz_attention(fq, fk, v1, kf, kb);
    const ab::Var den = ab::add_scalar(ab::slice(r, 3, d, 1), 1e-30f);  // > 0 unless every visible key is padded
    return ab::div(ab::slice(r, 3, 0, d), den);
  }

 private:
  int64_t m_, max_length_;
  ab::Tensor w_;  // [m, d] random projections, a constant
  ab::Var b_fwd_, b_bwd_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(KernelRpeFft);
