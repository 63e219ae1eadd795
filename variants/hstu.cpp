// hstu — pointwise SiLU attention with a gate (Hierarchical Sequential Transduction Unit).
// Zhai et al. 2024, "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
// Generative Recommendations" (ICML), eqs. 1-3; as facebookresearch/generative-recommenders' HSTU:
//   U, V, Q, K = SiLU(f1(X))                       (here: four projections Wu, Wv, Wq, Wk of x)
//   A V        = SiLU(Q K^T) V / n                 (no softmax, no row normalisation; masked pairs 0)
//   Y          = f2(LayerNorm(A V) * U)            (LayerNorm over the D merged heads, no affine)
// n = the normaliser of the attention weights: MixerConfig::max_length by default (a constant of the
// instance, so the token-by-token decode equals the causal forward), or the actual N of each call.
// Deliberate differences: no relative position / time bias rab (the model adds positions), no
// dropout; Wu is a separate d_model x d_model projection (f1's U slice).
// Dense, N x N weights materialised: time O(B H N^2 d), memory O(B H N^2) for the saved SiLU input.
// Capabilities: bidirectional, causal, padding mask, decode (KV cache; O(t d) per token).
#include <algorithm>
#include <cmath>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"

namespace {

class Hstu final : public ab::AttentionMixer {
 public:
  explicit Hstu(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        by_length_(cfg.params.at("norm").get<std::string>() == "length"),
        max_length_(std::max<int64_t>(1, cfg.max_length)) {
    wu_ = add_param("wu", ab::init_xavier_uniform(d_model_, d_model_,
                                                  ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, 10)));
    ones_ = ab::Var(ab::Tensor::full({d_model_}, 1.f));
    zeros_ = ab::Var(ab::Tensor::zeros({d_model_}));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "hstu", "dense", "pointwise SiLU(QK^T)/n V attention, layer-normed and gated by SiLU(U x) (HSTU)",
        "Zhai et al. 2024, Actions Speak Louder than Words (HSTU)",
        {ab::enum_param("norm", "max_length", {"max_length", "length"},
                        "n dividing the weights: max_length (decode-exact) or the actual length")},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      // five projections + QK^T + AV + SiLU and mask (5 per pair) + layer norm and gate (~10 per value)
      c.flops = 2 * B * N * D * D * 5 + 4 * B * N * N * D + 5 * B * H * N * N + 10 * B * N * D;
      // Saved: SiLU inputs of q, k, v, u and their outputs q, k, v, u (8 B N D), the scores (SiLU
      // input) and the masked, scaled weights (2 B H N^2), A V and its norm (2 B N D; the merged
      // gated heads for the output projection, B N D) and the norm's statistics.
      c.activation_bytes = 4 * (11 * B * N * D + 2 * B * H * N * N + 2 * B * N);
      c.state_bytes = 4 * 2 * B * N * D;  // the KV cache
      // Peak at the SiLU backward: scores, weights, their gradients (4 B H N^2), plus the saved
      // B N D tensors and the weight gradients.
      c.peak_bytes = 4 * (4 * B * H * N * N + 12 * B * N * D + 3 * D * D);
      return c;
    };
    return s;
  }

  float inv_n(int64_t N) const { return 1.f / static_cast<float>(by_length_ ? std::max<int64_t>(1, N) : max_length_); }

  // a: [B, H, N, d] (A V) -> LayerNorm over merged heads * SiLU(x Wu), back to [B, H, N, d]
  ab::Var norm_gate(const ab::Var& a, const ab::Var& x) const {
    const int64_t B = a.dim(0), N = a.dim(2);
    const ab::Var merged = ab::reshape(ab::permute(a, {0, 2, 1, 3}), {B, N, d_model_});
    const ab::Var y = ab::mul(ab::layer_norm(merged, ones_, zeros_), ab::silu(ab::linear(x, wu_)));
    return ab::permute(ab::reshape(y, {B, N, heads_, head_dim_}), {0, 2, 1, 3});
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    if (!input().defined())  // attend(q, k, v) called alone (bench --attend-only, --fidelity)
      throw ab::UsageError("hstu: its gate reads the mixer input x, which attend(q, k, v) alone does not have; "
                           "measure it without --attend-only / --fidelity");
    const int64_t B = q.dim(0), N = q.dim(2);
    const ab::Var scores = ab::matmul(ab::silu(q), ab::silu(k), false, true);  // [B, H, N, N]
    // Keep flags [B or 1, 1, N, N]: 1 where query i may see key j (causality and padding).
    const bool pad = ctx.key_mask != nullptr;
    ab::Tensor keep = ab::Tensor::empty({pad ? B : 1, 1, N, N});
    for (int64_t b = 0; b < keep.dim(0); ++b)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j)
          keep[(b * N + i) * N + j] =
              (ctx.causal && j > i) || (pad && ab::is_padded_key((*ctx.key_mask)[b * N + j])) ? 0.f : inv_n(N);
    const ab::Var w = ab::mul(ab::silu(scores), ab::Var(keep));
    return norm_gate(ab::matmul(w, ab::silu(v)), input());
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<ab::KvCache>(batch, heads_, head_dim_);
  }
  // q, k, v: [B, H, 1, d] (before SiLU) -> [B, H, 1, d]; the cache holds SiLU(k), SiLU(v).
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& cache = static_cast<ab::KvCache&>(state);
    cache.append(ab::silu(ab::Var(k)).value(), ab::silu(ab::Var(v)).value());
    const ab::Tensor qs = ab::silu(ab::Var(q)).value();
    const float inv = 1.f / static_cast<float>(max_length_);  // decode: n = max_length in both modes
    // SiLU(q . k_j) / n
    const ab::Tensor a = ab::attend_cached(qs, cache, 1.f, [inv](int64_t, float* w, int64_t L) {
      for (int64_t j = 0; j < L; ++j) w[j] = w[j] / (1.f + std::exp(-w[j])) * inv;
    });
    return norm_gate(ab::Var(a), input()).value();
  }

 private:
  bool by_length_;
  int64_t max_length_;
  ab::Var wu_, ones_, zeros_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Hstu);
