// performer — FAVOR+ (fast attention via positive orthogonal random features), or LRA's
// deterministic ReLU kernel. Choromanski et al. 2021, "Rethinking Attention with Performers".
//   kernel = softmax (default): phi(x) = m^-1/2 (exp(W x^ - |x^|^2/2 - c) + stabilizer), x^ = x d^-1/4,
//     so E[phi(q) . phi(k)] = exp(q . k / sqrt(d)) up to the constant c (cancels in the ratio);
//   kernel = softmax_hyp: the hyperbolic form [exp(+W x^ ...), exp(-W x^ ...)] / sqrt(2m) (2m features);
//   kernel = relu_random: phi(x) = ReLU(W x^) + kernel_eps;
//   kernel = relu: phi(x) = ReLU(x) + kernel_eps, no random projection — what the official LRA
//     "Performer" ran (performer_attention.py: generalized attention, features_type='deterministic',
//     kernel_fn=relu, kernel_epsilon=1e-3); `num_features` and `redraw_interval` are then unused.
//   out = linear attention with these features (ab::linear_attention): bidirectional through the
//   [m, d] state; causal by a prefix-sum scan (no B x N x m x d buffer).
// W [m, d]: m = num_features Gaussian rows, orthogonalised in blocks of d (modified Gram-Schmidt in
// double on d x d Gaussian draws, i.e. QR with a positive R diagonal: Haar-distributed), each row
// rescaled to the norm of an independent d-dimensional Gaussian (chi_d), as in FAVOR+ `scaling=0`.
// One W per layer, shared by the heads, drawn from RngStream(seed, Purpose::mixer, layer, redraw)
// where redraw = step / redraw_interval (0 = never redraw). Evaluation (training = false) uses the
// draw of the last training step this instance saw (0 before any), since the harness evaluates with
// step 0. The stabilising max c is per query row and per (batch, head) over the unpadded keys, and
// is a constant in backward (as in the reference code; the gradient is exact when stabilizer = 0).
// The keys' c spans the whole sequence, so in causal mode the keys get no additive stabiliser: c
// then cancels exactly and the causal form is exact (a prefix whose key features all underflow
// gives a zero output row instead).
// Time O(B H N m d); memory: q, k, v, merged heads (4 B N D) + features phi(q), phi(k) (2 B H N m')
// + the [m', d] state per head (bidirectional), m' = m (2m for softmax_hyp; d for relu).
// Capabilities: bidirectional, causal, padding mask (phi(k) zeroed at padded keys), stochastic.
// Caveats: the numerator and denominator are unbiased estimates, their ratio is not; the error of the
// softmax estimate falls like 1/sqrt(m) (tests/test_lowrank_kernel.cpp). The ReLU kernels have kinks,
// so finite-difference checks of them need inputs away from 0.
#include <cmath>
#include <vector>

#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/variant.hpp"
#include "favor_projections.hpp"

namespace {

enum class Kernel { softmax, softmax_hyp, relu, relu_random };

Kernel parse_kernel(const std::string& s) {
  if (s == "softmax_hyp") return Kernel::softmax_hyp;
  if (s == "relu") return Kernel::relu;
  if (s == "relu_random") return Kernel::relu_random;
  return Kernel::softmax;
}

class Performer final : public ab::AttentionMixer {
 public:
  explicit Performer(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        kernel_(parse_kernel(cfg.params.at("kernel").get<std::string>())),
        m_(cfg.params.at("num_features").get<int64_t>()),
        redraw_interval_(cfg.params.at("redraw_interval").get<int64_t>()),
        orthogonal_(cfg.params.at("orthogonal").get<bool>()),
        stabilizer_(static_cast<float>(cfg.params.at("stabilizer").get<double>())),
        kernel_eps_(static_cast<float>(cfg.params.at("kernel_eps").get<double>())) {}

  static int64_t feature_dim(const ab::Json& p, int64_t d) {
    const Kernel k = parse_kernel(p.at("kernel").get<std::string>());
    const int64_t m = p.at("num_features").get<int64_t>();
    return k == Kernel::relu ? d : k == Kernel::softmax_hyp ? 2 * m : m;
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "performer", "kernel", "FAVOR+ positive orthogonal random features (or LRA's deterministic ReLU kernel)",
        "Choromanski et al. 2021, Rethinking Attention with Performers",
        {ab::enum_param("kernel", "softmax", {"softmax", "softmax_hyp", "relu", "relu_random"},
                        "softmax: FAVOR+ positive random features; softmax_hyp: hyperbolic (2m features); "
                        "relu: LRA's deterministic ReLU(x) + kernel_eps (no projection, the LRA leaderboard "
                        "model); relu_random: ReLU(W x) + kernel_eps"),
         ab::int_param("num_features", 256, "random features m (LRA, xformers LRA config: 256)", 1, 65536),
         ab::int_param("redraw_interval", 1000, "redraw the projections every this many training steps (0 = never)", 0,
                       1e9),
         ab::bool_param("orthogonal", true, "orthogonal blocks with chi_d row norms (false: i.i.d. Gaussian rows)"),
         ab::num_param("stabilizer", 1e-6, "added to the exponential features (paper/LRA 1e-6, lucidrains 1e-4)", 0.0,
                       1.0),
         ab::num_param("kernel_eps", 1e-3, "added to the ReLU features (LRA 1e-3)", 0.0, 1.0)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .stochastic = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const bool relu = a.params->at("kernel").get<std::string>() == "relu";
      const double m = static_cast<double>(a.params->at("num_features").get<int64_t>());
      const double mf = static_cast<double>(feature_dim(*a.params, static_cast<int64_t>(d)));
      ab::Cost c;
      // projections + random features for q and k (2 GEMMs) + state + readout
      c.flops = 2 * B * N * D * D * 4 + (relu ? 0 : 2 * 2 * B * H * N * m * d) + 4 * B * H * N * mf * d;
      // Saved: q, k, v, merged heads; phi(q), phi(k) (not for relu: the op maps q, k itself);
      // bidirectional: the state S [B H m' d] and z [B H m'].
      c.activation_bytes =
          4 * (4 * B * N * D + (relu ? 0 : 2 * B * H * N * mf) + (a.causal ? 0 : B * H * (mf * d + mf)));
      // Peak in the key features' backward: phi(q), phi(k), their gradients and the FAVOR+ scratch
      // t (5 B H N m'), and y, q, k, v, dv, dx (6 B N D); relu: like linear attention (11 B N D).
      c.peak_bytes = relu ? 4 * (11 * B * N * D + 2 * B * H * N + D * D) : 4 * (5 * B * H * N * mf + 6 * B * N * D + D * D);
      return c;
    };
    s.check_params = {{"num_features", 16}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    ab::LinearAttentionOptions opt;
    opt.causal = ctx.causal;
    opt.key_mask = ctx.key_mask;
    opt.eps = 0.f;  // positive features; a row with no visible key gives 0
    if (kernel_ == Kernel::relu) {
      opt.feature = ab::FeatureMap::relu_plus_eps;
      opt.feature_eps = kernel_eps_;
      return ab::linear_attention(q, k, v, opt);
    }
    const ab::Tensor& w = projections(ctx);  // [m, d]
    ab::FavorOptions fo;
    fo.kernel = kernel_ == Kernel::softmax       ? ab::FavorKernel::softmax_positive
                : kernel_ == Kernel::softmax_hyp ? ab::FavorKernel::softmax_hyperbolic
                                                 : ab::FavorKernel::relu;
    fo.stabilizer = stabilizer_;
    fo.relu_eps = kernel_eps_;
    fo.is_query = true;
    const ab::Var fq = ab::favor_features(q, w, fo);  // [B, H, N, m']
    fo.is_query = false;
    fo.key_mask = ctx.key_mask;
    // Causal: no additive stabiliser on the keys, so that their per-sequence maximum cancels
    // exactly and future keys cannot change past outputs.
    if (ctx.causal) fo.stabilizer = 0.f;
    const ab::Var fk = ab::favor_features(k, w, fo);  // [B, H, N, m']
    return ab::linear_attention(fq, fk, v, opt);
  }

  // The projections of the current redraw period (exposed for tests).
  const ab::Tensor& projections(const ab::MixerContext& ctx) {
    if (ctx.training) period_ = redraw_interval_ > 0 ? static_cast<uint64_t>(ctx.step / redraw_interval_) : 0;
    if (!w_.defined() || drawn_period_ != period_ || drawn_seed_ != ctx.seed || drawn_layer_ != ctx.layer) {
      w_ = ab_favor::draw_projections(m_, head_dim_, orthogonal_,
                            ab::RngStream(ctx.seed, ab::Purpose::mixer, static_cast<uint64_t>(ctx.layer), period_));
      drawn_period_ = period_;
      drawn_seed_ = ctx.seed;
      drawn_layer_ = ctx.layer;
    }
    return w_;
  }

 private:
  Kernel kernel_;
  int64_t m_, redraw_interval_;
  bool orthogonal_;
  float stabilizer_, kernel_eps_;
  ab::Tensor w_;  // a buffer, not a parameter
  uint64_t period_ = 0, drawn_period_ = 0, drawn_seed_ = 0;
  int drawn_layer_ = 0;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Performer);
