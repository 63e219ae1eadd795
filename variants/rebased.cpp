// rebased — Based with a learnable quadratic kernel. Aksenov et al. 2024, "Linear Transformers with
// Learnable Kernel Functions are Better In-Context Learners" (ReBased); follows fla
// `ReBasedLinearAttention` / `RebasedFeatureMap` (fla-org/flash-linear-attention, from
// corl-team/rebased `rebased_fast.py`; feature_dim 16, use_gamma = use_beta = normalize = True,
// eps 1e-5):
//   x' = gamma * LayerNorm(x) + beta            (over the f projected dims; gamma, beta [f] shared by
//                                                q and k and by all heads, init 1 and 0)
//   phi(x) = vec(x' x'^T) / sqrt(f)              (f^2 features)
//   so phi(q) . phi(k) = (q' . k')^2 / f >= 0 (Based's 1 + s + s^2/2 Taylor kernel replaced by the
//   square of a learnable affine-normalised projection)
//   out_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps)
// The mixer around phi (short conv, projections, normalised linear attention, decode) is the Based
// family's (variants/based_family.hpp), shared with based, so the two differ only in phi.
// Deliberate differences: fla keeps the symmetric half (f (f + 1) / 2 features with sqrt(2) on the
// off-diagonal); the full outer product here gives the same kernel. fla's layer has no convolution
// (corl-team's model puts BaseConv layers beside it); here the short convolution of based is kept
// (conv_taps, 0 = none) so that based and rebased compare like for like.
// Time O(B N D^2) projections + O(B H N f^2 d) attention; memory O(B H N f^2) saved.
// Capabilities: bidirectional, causal, padding mask, decode ([f^2, d] state + conv inputs).
#include <cmath>

#include "based_family.hpp"

namespace {

class Rebased final : public ab_based::BasedFamilyMixer {
 public:
  explicit Rebased(const ab::MixerConfig& cfg) : BasedFamilyMixer(cfg, "rebased") {
    gamma_ = add_param("fm.gamma", ab::Tensor::full({f_}, 1.f));
    beta_ = add_param("fm.beta", ab::Tensor::zeros({f_}));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "rebased", "kernel", "Based with the learnable quadratic kernel (gamma LN(q) + beta . gamma LN(k) + beta)^2",
        "Aksenov et al. 2024, Linear Transformers with Learnable Kernel Functions are Better In-Context Learners",
        ab_based::common_params(1e-5, "added to the normaliser (fla ReBased 1e-5)"),
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    // The conformance checks run at N 8 with random weights, where a row whose scores (q' . k')^2
    // are all near 0 makes the normalised output ill-conditioned for fp32 finite differences
    // (the quadratic kernel has no constant term, unlike based's). A normaliser eps of 1 keeps every
    // row well-conditioned; the gradient code is the same for any eps.
    s.check_params = ab::Json{{"eps", 1.0}};
    s.cost = [](const ab::CostArgs& a) {
      const double f = static_cast<double>(a.params->at("feature_dim").get<int64_t>());
      // LayerNorm (about 8 f) + the outer product (f^2); LayerNorm saves its output x' (f) and two
      // floats per row, for q and k.
      return ab_based::family_cost(a, {f * f, f * f + 8 * f, 2 * (f + 2)});
    };
    return s;
  }

  int64_t feature_count() const override { return f_ * f_; }

  // x: [B, H, N, f] -> [B, H, N, f^2]
  ab::Var feature_map(const ab::Var& x) const override {
    return ab_based::outer_features(ab::layer_norm(x, gamma_, beta_, 1e-5f), 1.0f / std::sqrt(static_cast<float>(f_)));
  }

 private:
  ab::Var gamma_, beta_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Rebased);
