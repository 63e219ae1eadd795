// linformer — softmax attention over k learned projections of the keys and values along the
// sequence. Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity".
//   K_ = E K, V_ = F V (E, F: [k, max_length], shared by the heads: the paper's headwise sharing,
//   as in LRA and lucidrains), out = softmax(Q K_^T / sqrt(d)) V_  [N, k] scores per head.
// Storage: the parameters are held transposed, e, f: [max_length, k] (row = position). A sequence
// shorter than max_length uses the first N rows, which is the same as zero-padding it to
// max_length (LRA pads); a longer one is an error. With share_kv, F = E (one parameter).
// Padding mask: padded keys and values are zeroed before the projection (so padded tokens do not
// leak into K_, V_: the variant notes' "mask the columns of E/F"); the k projected keys are all
// attended, so outputs depend on the number of real tokens but not on the padded values.
// Init: E, F ~ N(0, 1/k) (variants.md; lucidrains uses U(-1/sqrt(k), 1/sqrt(k))).
// Time O(B N D k) beyond the projections; memory O(B H N k) for the probabilities plus O(B N D).
// Capabilities: bidirectional, padding mask, length-dependent parameters. Not causal (E mixes
// future positions).
#include <cmath>

#include <fmt/format.h>

#include "attnbench/variant.hpp"

namespace {

class Linformer final : public ab::AttentionMixer {
 public:
  explicit Linformer(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        k_(cfg.params.at("k").get<int64_t>()),
        share_kv_(cfg.params.at("share_kv").get<bool>()),
        max_length_(cfg.max_length) {
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 2000 + cfg.layer, which); };
    const float stddev = 1.f / std::sqrt(static_cast<float>(k_));
    e_ = add_param("e", ab::init_normal({max_length_, k_}, stddev, stream(0)));
    if (!share_kv_) f_ = add_param("f", ab::init_normal({max_length_, k_}, stddev, stream(1)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "linformer", "low-rank", "softmax attention over k learned sequence projections of keys and values",
        "Wang et al. 2020, Linformer: Self-Attention with Linear Complexity",
        {ab::int_param("k", 256, "projected length (paper, lucidrains, mlpen LRA: 256; LRA JAX: 16, text 32)", 1,
                       65536),
         ab::bool_param("share_kv", false, "one projection for keys and values (F = E)")},
        {.causal = false, .bidirectional = true, .padding_mask = true, .length_dependent = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const double k = static_cast<double>(a.params->at("k").get<int64_t>());
      ab::Cost c;
      // projections + E K, F V + Q K_^T + P V_
      c.flops = 2 * B * N * D * D * 4 + 2 * 2 * B * N * D * k + 2 * 2 * B * N * k * D;
      // Saved: q scaled, k and v transposed (inputs of the projections), merged heads (4 B N D);
      // K_, V_ [B H d k] each; probabilities [B H N k].
      c.activation_bytes = 4 * (4 * B * N * D + 2 * B * D * k + B * H * N * k);
      // Peak at the softmax backward: P, dP, dS (3 B H N k), y, scaled q, the transposed k (input
      // of E), dx from the value branch (4 B N D), K_ and dV_ (B D k), dF [N, k], dWo and dWv.
      // For a small k the forward peaks instead: q, k, v heads (held by the attention frame until
      // it returns), the transposed k and v, the output heads, merged heads and y (about 9 B N D).
      c.peak_bytes = std::max(4 * (3 * B * H * N * k + 4 * B * N * D + B * D * k + N * k + 2 * D * D),
                              4 * (9 * B * N * D + 2 * D * D));
      return c;
    };
    s.check_params = {{"k", 4}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), N = q.dim(2);
    if (N > max_length_)
      throw ab::UsageError(fmt::format("linformer: sequence length {} exceeds the model's max_length {}", N, max_length_));
    ab::Var kk = k, vv = v;
    if (ctx.key_mask) {  // zero padded keys and values
      const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {B, 1, N, 1});
      kk = ab::mul(kk, ab::Var(keep));
      vv = ab::mul(vv, ab::Var(keep));
    }
    const ab::Var e = N == max_length_ ? e_ : ab::slice(e_, 0, 0, N);  // [N, k]
    const ab::Var f = share_kv_ ? e : N == max_length_ ? f_ : ab::slice(f_, 0, 0, N);
    // [B, H, N, d] -> [B, H, d, N] -> (x) [N, k] -> [B, H, d, k] (= K_^T, V_^T)
    const ab::Var kt = ab::linear(ab::transpose(kk, 2, 3), e);
    const ab::Var vt = ab::linear(ab::transpose(vv, 2, 3), f);
    const ab::Var qs = ab::scale(q, 1.0f / std::sqrt(static_cast<float>(head_dim_)));
    const ab::Var p = ab::softmax(ab::matmul(qs, kt));  // [B, H, N, k]
    return ab::matmul(p, vt, false, true);               // [B, H, N, d]
  }

 private:
  int64_t k_;
  bool share_kv_;
  int64_t max_length_;
  ab::Var e_, f_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Linformer);
