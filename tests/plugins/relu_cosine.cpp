// relu_cosine: attention whose weights are relu(scale * cos(q_i, k_j)), each query's row divided
// by its sum + eps; the plugin of issue 19's "done when", written against the installed headers
// from SDK ops only (l2_normalize, matmul, relu, sum_dim, div; no hand-written backward). Its memory
// cost model is left to python_plugin, which pastes what `check --trace-memory` prints at the marker.
// Two planted bugs, off by default: detach_keys (a gradient bug) and declared_saved_factor.
#include <algorithm>
#include <cmath>

#include "attnbench/variant.hpp"

namespace {

class ReluCosine final : public ab::AttentionMixer {
 public:
  explicit ReluCosine(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        scale_(static_cast<float>(cfg.params.at("scale").get<double>())),
        eps_(static_cast<float>(cfg.params.at("eps").get<double>())),
        detach_keys_(cfg.params.at("detach_keys").get<bool>()) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "relu_cosine", "dense", "relu(scale * cosine similarity), normalised per query row",
        "issue 19 (a new user's plugin)",
        {ab::num_param("scale", 4.0, "multiplies the cosine similarity", 0.1, 100.0),
         ab::num_param("eps", 1e-3, "added to each row's sum before dividing", 1e-9, 1.0),
         ab::bool_param("detach_keys", false, "planted bug: no gradient flows through the keys"),
         ab::num_param("declared_saved_factor", 1.0, "planted bug: scales the declared saved bytes", 0.1, 10.0)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * N * D + 6 * B * H * N * N;  // projections, QK^T, PV, weights
      // @MEMORY@: the test pastes the two lines `attnbench check --trace-memory` prints here
      c.activation_bytes *= a.params->at("declared_saved_factor").get<double>();
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const ab::Var qn = ab::l2_normalize(q);
    ab::Var kn = ab::l2_normalize(k);
    if (detach_keys_) kn = ab::Var(kn.value());  // the planted bug: same forward, keys get no gradient
    ab::Var scores = ab::scale(ab::matmul(qn, kn, false, true), scale_);  // [B, H, N, N]
    // Masked scores go to -inf before the relu, which makes their weight (and its gradient) 0.
    if (ctx.causal) scores = ab::add(scores, ab::Var(ab::causal_mask(q.dim(2))));
    if (ctx.key_mask) scores = ab::add(scores, ab::Var(*ctx.key_mask));
    const ab::Var w = ab::relu(scores);
    const ab::Var rows = ab::add_scalar(ab::sum_dim(w, -1, /*keepdim=*/true), eps_);  // [B, H, N, 1]
    return ab::matmul(ab::div(w, rows), v);
  }

 private:
  float scale_, eps_;
  bool detach_keys_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(ReluCosine);
