// my_variant — softmax attention with a tunable temperature: a starting point for your mixer.
// Replace attend() with your algorithm, keep the spec honest (capabilities, cost model), then run
//   attnbench check --plugin build/my_variant.so --variant my_variant
// which checks shapes, determinism, causality and padding where declared, gradients by finite
// differences, and the cost model's saved-for-backward and peak bytes against the tracking allocator.
// Time O(B H N^2 d); memory O(B H N^2) for the saved probabilities.
#include <cmath>

#include "attnbench/variant.hpp"

namespace {

class MyVariant final : public ab::AttentionMixer {
 public:
  explicit MyVariant(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), temperature_(static_cast<float>(cfg.params.at("temperature").get<double>())) {}

  static ab::VariantSpec spec() {
    // Name, family, one-line summary, paper; the parameters (each with a default, a doc string and
    // a valid range; unknown keys are errors); the capabilities (declare only what the conformance
    // checks confirm).
    ab::VariantSpec s = ab::variant_spec(
        "my_variant", "dense", "softmax attention with a temperature (plugin template)", "your paper here",
        {ab::num_param("temperature", 1.0, "divides the scores q.k / sqrt(d)", 0.01, 100.0)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * N * D;  // projections + QK^T + PV
      // The two memory lines are what `attnbench check --plugin build/my_variant.so --variant
      // my_variant --trace-memory` prints for this attend(); re-run it after changing attend() and
      // paste its lines over these.
      // Saved for backward: scaled q, k, v and the merged heads (4 B N D floats) and the
      // probabilities (B H N^2 floats).
      c.activation_bytes = 4 * (4 * B * N * D + B * H * N * N);
      // Peak of forward + backward (checked the same way, at two lengths): at the softmax backward
      // the probabilities, their gradient and the scores' gradient (3 B H N^2 floats) are alive
      // with y, scaled q, k, the gradient of x and two weight gradients.
      c.peak_bytes = 4 * (3 * B * H * N * N + 4 * B * N * D + 2 * D * D);
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    const ab::Var qs = ab::scale(q, 1.0f / (temperature_ * std::sqrt(static_cast<float>(head_dim_))));
    const ab::Var scores = ab::matmul(qs, k, false, true);  // [B, H, N, N]
    const ab::Tensor mask = ab::additive_mask(ctx, N);  // additive: 0 keep, -inf drop
    return ab::matmul(ab::softmax(scores, mask.defined() ? &mask : nullptr), v);
  }

 private:
  float temperature_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(MyVariant);
