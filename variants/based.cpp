// based — linear attention with the 2nd-order Taylor feature map, after a short convolution.
// Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
// tradeoff" (Based); zoology `based.Based` / fla `BasedLinearAttention` (feature_dim 16, taylor_exp).
//   phi(x) = [1, x / f^{1/4}, vec(x x^T) / (sqrt(2) sqrt(f))]      (1 + f + f^2 features)
//   so phi(q) . phi(k) = 1 + q.k / sqrt(f) + (q.k)^2 / (2 f) > 0 (the exp Taylor series to 2nd order)
// The mixer around phi (short conv, projections, normalised linear attention, decode) is the Based
// family's (variants/based_family.hpp), shared with rebased.
// What is included: the Taylor linear attention and a short depthwise convolution on the mixer's
// input (Based's BaseConv/short-conv local mixing, folded into the same mixer as a residual
// branch feeding the projections). NOT included: Based's sliding-window softmax layers (use a
// `local_window` layer for that in a hybrid model).
// Time O(B N D^2) projections + O(B H N f^2 d) attention; memory O(B H N f^2) saved (the features
// of q and k; the full f x f outer product, not the symmetric half).
// Capabilities: bidirectional (centred conv), causal (causal conv + prefix scan), padding mask
// (padded tokens are zeroed before the convolution and padded keys are masked), decode (the
// [1 + f + f^2, d] linear-attention state and the last conv_taps - 1 inputs).
#include <cmath>

#include "based_family.hpp"

namespace {

class Based final : public ab_based::BasedFamilyMixer {
 public:
  explicit Based(const ab::MixerConfig& cfg) : BasedFamilyMixer(cfg, "based") {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "based", "kernel", "2nd-order Taylor linear attention (1 + q.k + (q.k)^2/2) after a short depthwise conv",
        "Arora et al. 2024, Simple linear attention language models balance the recall-throughput tradeoff",
        ab_based::common_params(1e-6, "added to the normaliser"),
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double f = static_cast<double>(a.params->at("feature_dim").get<int64_t>());
      return ab_based::family_cost(a, {1 + f + f * f, f * f, 0});
    };
    return s;
  }

  int64_t feature_count() const override { return 1 + f_ + f_ * f_; }

  // x: [B, H, N, f] -> [B, H, N, 1 + f + f^2]
  ab::Var feature_map(const ab::Var& x) const override {
    const int64_t B = x.dim(0), H = x.dim(1), N = x.dim(2);
    const ab::Var xs = ab::scale(x, std::pow(static_cast<float>(f_), -0.25f));
    const ab::Var quad = ab_based::outer_features(xs, 1.0f / std::sqrt(2.0f));
    return ab::concat({ab::Var(ab::Tensor::full({B, H, N, 1}, 1.f)), xs, quad}, 3);
  }
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Based);
