// sigmoid — sigmoid attention: O = sigmoid(Q K^T / sqrt(d) + b) V, no row normalisation.
// Ramapuram et al. 2025, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention" (ICLR).
// The scalar bias b = -log(n) makes the initial row sums about 1 (the paper's key stabiliser):
//   bias = max_length (default): n = MixerConfig::max_length, a constant of the instance, so the
//          token-by-token decode equals the causal forward at every length;
//   bias = length: n = the actual N of each forward call (decode then uses max_length: it equals
//          the forward only for sequences of max_length tokens);
//   bias = none: b = 0.
// Dense, with the N x N weights materialised (as `softmax`): time O(B H N^2 d), memory O(B H N^2)
// for the saved sigmoid output. Masked entries (causal, padded keys) get -inf before the sigmoid,
// i.e. weight exactly 0 and no gradient.
// Capabilities: bidirectional, causal, padding mask, decode (KV cache; O(t d) per token).
#include <cmath>


#include "attnbench/kernels/decode.hpp"
#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"
#include "kv_cache_attention.hpp"

namespace {

class Sigmoid final : public ab_kv_cache::KvCacheAttention {
 public:
  explicit Sigmoid(const ab::MixerConfig& cfg)
      : KvCacheAttention(cfg), mode_(cfg.params.at("bias").get<std::string>()), max_length_(std::max<int64_t>(1, cfg.max_length)) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "sigmoid", "dense", "sigmoid(QK^T/sqrt(d) - log n) V, dense N x N weights without normalisation",
        "Ramapuram et al. 2025, Theory, Analysis, and Best Practices for Sigmoid Self-Attention",
        {ab::enum_param("bias", "max_length", {"max_length", "length", "none"},
                        "scalar bias b = -log n: n = max_length (decode-exact), n = the actual length, or b = 0")},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * N * D + 4 * B * H * N * N;  // + bias and sigmoid
      // Saved: scaled q, k, v and the merged heads (4 B N D) and the sigmoid weights (B H N^2).
      c.activation_bytes = 4 * (4 * B * N * D + B * H * N * N);
      c.state_bytes = 4 * 2 * B * N * D;  // the KV cache
      // Peak at the sigmoid's backward: the weights, their gradient and the scores' gradient
      // (3 B H N^2), y, scaled q, k, the gradient of x and the gradients of Wo and Wv.
      c.peak_bytes = 4 * (3 * B * H * N * N + 4 * B * N * D + 2 * D * D);
      return c;
    };
    return s;
  }

  float bias_for(int64_t n) const {
    if (mode_ == "none") return 0.f;
    return -static_cast<float>(std::log(static_cast<double>(mode_ == "length" ? std::max<int64_t>(1, n) : max_length_)));
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    ab::Var scores = scaled_scores(q, k);  // [B, H, N, N]
    const ab::Tensor mask = ab::additive_mask(ctx, N);  // [B, 1, N, N], [N, N] or [B, 1, 1, N]
    if (mask.defined()) scores = ab::add(scores, ab::Var(mask));
    const float b = bias_for(N);
    if (b != 0.f) scores = ab::add_scalar(scores, b);
    return ab::matmul(ab::sigmoid(scores), v);
  }

  // q: [B, H, 1, d] -> [B, H, 1, d]: o = sum_j sigmoid(q . k_j / sqrt(d) + b) v_j over the cache.
  ab::Tensor attend_cache(const ab::Tensor& q, const ab::KvCache& cache) override {
    const float b = mode_ == "none" ? 0.f : -static_cast<float>(std::log(static_cast<double>(max_length_)));
    return ab::attend_cached(q, cache, score_scale(), [b](int64_t, float* w, int64_t L) {
      for (int64_t j = 0; j < L; ++j) w[j] = 1.f / (1.f + std::exp(-(w[j] + b)));
    });
  }

 private:
  std::string mode_;
  int64_t max_length_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Sigmoid);
