// linear_elu — kernelised linear attention with the feature map phi(x) = elu(x) + 1.
// Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear
// Attention"; the LRA `linear_transformer` (phi = elu + 1, eps = 1e-6, no attention dropout).
//   out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps), j over every
//   key (bidirectional) or j <= i (causal). No 1/sqrt(d) scaling (as in the paper and LRA).
// Time O(B H N d^2); memory O(B N D) saved for backward (q, k, v and the merged heads) plus the
// [d, d] state per head (bidirectional); causal runs as a sequential prefix-sum scan per
// (batch, head) with no per-position state (ab::linear_attention), backward by the reverse scan.
// Capabilities: bidirectional, causal, padding mask (phi(k) is zeroed at padded keys, so they
// enter neither the state nor the normaliser).
#include <cmath>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class LinearElu final : public ab::AttentionMixer {
 public:
  explicit LinearElu(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), eps_(static_cast<float>(cfg.params.at("eps").get<double>())) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "linear_elu", "kernel", "linear attention with phi = elu + 1; causal by prefix sums",
        "Katharopoulos et al. 2020, Transformers are RNNs (Linear Transformer)",
        {ab::num_param("eps", 1e-6, "added to the normaliser phi(q) . sum phi(k) (LRA: 1e-6)", 0.0, 1.0)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      ab::Cost c;
      // projections + state (phi(K)^T V) + readout (phi(Q) S) + normaliser
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * D * d + 2 * B * N * D;
      // Saved: q, k, v and the merged heads (4 B N D floats); bidirectional also S [B H d d] and z.
      c.activation_bytes = 4 * (4 * B * N * D + (a.causal ? 0 : B * H * (d * d + d)));
      c.state_bytes = 4 * B * H * (d * d + d);  // S and z; constant in the length
      // Peak at the end of the op's backward: y, q, k, v, the upstream gradient per head, dq, dk, dv
      // (8 B N D), and bidirectional also the recomputed features phi(q), phi(k) and G = g / den
      // (3 B N D; causal: the per-row scan needs G only); 1 / den and c (2 B H N); dWo.
      c.peak_bytes = 4 * ((a.causal ? 10 : 11) * B * N * D + 2 * B * H * N + D * D);
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    ab::LinearAttentionOptions opt;
    opt.feature = ab::FeatureMap::elu_plus_one;
    opt.causal = ctx.causal;
    opt.eps = eps_;
    opt.key_mask = ctx.key_mask;
    return ab::linear_attention(q, k, v, opt);
  }

  // Decoding: the causal scan's running S and z, O(d^2) per token.
  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<ab::LinearAttentionState>(batch, heads_, head_dim_, head_dim_);
  }
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto phi = [](const ab::Tensor& x) {
      ab::Tensor f = ab::Tensor::empty(x.shape());
      for (int64_t i = 0; i < x.numel(); ++i) f[i] = x[i] > 0.f ? x[i] + 1.f : std::exp(x[i]);
      return f;
    };
    return static_cast<ab::LinearAttentionState&>(state).step(phi(q), phi(k), v, eps_);
  }

 private:
  float eps_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(LinearElu);
