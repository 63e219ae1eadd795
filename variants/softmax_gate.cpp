// softmax_gate — gated attention: every head's softmax-attention output is scaled per token by
// sigmoid(G_h(x_h)), G_h a linear map d_head -> 1 of the head's slice of the input x (eq. 5 of
// Bondarenko, Nagel, Blankevoort 2023, "Quantizable Transformers: Removing Outliers by Helping
// Attention Heads Do Nothing", the "Linear" gate; qualcomm-ai-research/outlier-free-transformers).
// The gate lets a head switch itself off for a token instead of dumping its weight on a
// delimiter token (the mechanism behind activation outliers). Gate bias initialised to
// logit(pi_init) so that every gate starts near pi_init (the paper's pi_init; 0.25 here).
// Attention itself is the tiled exact kernel (as `softmax_tiled`): time O(B H N^2 d), memory O(B N D).
// Capabilities: bidirectional, causal, padding mask, decode (KV cache; the gate needs only x_t).
#include <cmath>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/flash_attention.hpp"
#include "attnbench/variant.hpp"
#include "kv_cache_attention.hpp"

namespace {

class SoftmaxGate final : public ab_kv_cache::KvCacheAttention {
 public:
  explicit SoftmaxGate(const ab::MixerConfig& cfg) : KvCacheAttention(cfg) {
    const double pi = cfg.params.at("pi_init").get<double>();
    // wg [H, d_head]: head h's gate reads x[..., h d_head : (h + 1) d_head]; bg [H].
    wg_ = add_param("wg", ab::init_xavier_uniform(heads_, head_dim_, ab::RngStream(cfg.seed, ab::Purpose::init,
                                                                                     1000 + cfg.layer, 10)));
    bg_ = add_param("bg", ab::Tensor::full({heads_}, static_cast<float>(std::log(pi / (1 - pi)))));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "softmax_gate", "dense",
        "softmax attention with a per-head, per-token sigmoid gate on its output (heads can do nothing)",
        "Bondarenko et al. 2023, Quantizable Transformers (gated attention)",
        {ab::num_param("pi_init", 0.25, "initial gate value sigmoid(bias)", 0.01, 0.99)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      // projections + QK^T + PV (as softmax_tiled) + the gate (2 B N D) and its product (B N D)
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * N * D + 3 * B * N * D;
      // Saved: as softmax_tiled (q, k, v, O, merged heads: 5 B N D; log-sum-exp B H N) plus the
      // sigmoid's output and the gate as the product's operand (2 B H N); x (the gate's input) and
      // the ungated output O are shared with tensors kept anyway.
      c.activation_bytes = 4 * (5 * B * N * D + 3 * B * H * N);
      c.state_bytes = 4 * 2 * B * N * D;  // the KV cache
      // Peak in the tiled backward: as softmax_tiled plus the gate's output and gradient.
      c.peak_bytes = 4 * (10 * B * N * D + 2 * B * H * N + D * D);
      return c;
    };
    return s;
  }

  // x [B, N, D] -> gate [B, H, N, 1]
  ab::Var gate(const ab::Var& x) const {
    const int64_t B = x.dim(0), N = x.dim(1);
    const ab::Var logits = ab::add(ab::sum_dim(ab::mul(ab::reshape(x, {B, N, heads_, head_dim_}), wg_), 3), bg_);
    return ab::reshape(ab::permute(ab::sigmoid(logits), {0, 2, 1}), {B, heads_, N, 1});
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    if (!input().defined())  // attend(q, k, v) called alone (bench --attend-only, --fidelity)
      throw ab::UsageError("softmax_gate: its gate reads the mixer input x, which attend(q, k, v) alone does not have; "
                           "measure it without --attend-only / --fidelity");
    return ab::mul(ab::flash_attention(q, k, v, score_scale(), ctx.causal, ctx.key_mask), gate(input()));
  }

  ab::Tensor attend_cache(const ab::Tensor& q, const ab::KvCache& cache) override {
    const ab::Tensor o = ab::softmax_attend_cached(q, cache, score_scale());
    return ab::mul(ab::Var(o), gate(input())).value();  // [B, H, 1, d] * [B, H, 1, 1]
  }

 private:
  ab::Var wg_, bg_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(SoftmaxGate);
