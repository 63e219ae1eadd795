// synthesizer — attention weights synthesised without query-key dot products.
// Tay et al. 2021, "Synthesizer: Rethinking Self-Attention in Transformer Models"; LRA
// `synthesizer_attention.py` (mode random for image/pathfinder, factorized_random k = 32 for text).
//   random:            logits_h = R_h                    R: [H, L, L] learned (or fixed: `fixed`)
//   factorized_random: logits_h = R1_h R2_h^T            R1, R2: [H, L, k]
//   dense:             logits_h(x_i) = W2_h ReLU(W1 x_i + b1)_h + b2_h
//                      W1: [D, D], b1: [D] (head h reads its d-slice), W2: [H, d, L], b2: [H, 1, L]
//   out = softmax(logits[:N, :N] + masks) V, then the output projection. L = max_length; a shorter
//   sequence uses the leading N x N block (columns 0..N-1 in dense mode).
// Owns its value and output projections (Xavier-uniform, no bias, like ab::AttentionMixer) and
// has no query/key projections. R, R1, R2 ~ U(-sqrt(3/L), sqrt(3/L)) (Xavier-uniform for an
// L x L map); W1 Xavier-uniform; W2 ~ N(0, 1/d); biases 0.
// The random modes' probabilities are input-independent: without a padding mask they are computed
// once per head ([H, N, N]) and shared by the batch; with a padding mask they are per example
// ([B, H, N, N]), as in dense mode.
// Time O(B N^2 D) (+ O(B N D^2) dense); memory O(H N^2) (random, no padding mask) or O(B H N^2).
// Capabilities: bidirectional, causal (masked logits), padding mask, length-dependent parameters.
#include <cmath>

#include <fmt/format.h>

#include "attnbench/variant.hpp"

namespace {

enum class Mode { random, factorized_random, dense };

Mode parse_mode(const std::string& s) {
  if (s == "factorized_random") return Mode::factorized_random;
  if (s == "dense") return Mode::dense;
  return Mode::random;
}

class Synthesizer final : public ab::Mixer {
 public:
  explicit Synthesizer(const ab::MixerConfig& cfg)
      : mode_(parse_mode(cfg.params.at("mode").get<std::string>())),
        d_model_(cfg.d_model),
        heads_(cfg.heads),
        head_dim_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0),
        max_length_(cfg.max_length) {
    if (heads_ <= 0 || d_model_ % heads_ != 0)
      throw ab::UsageError(fmt::format("model.d_model = {} must be a multiple of model.heads = {}", d_model_, heads_));
    auto init = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    auto extra = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 3000 + cfg.layer, which); };
    const int64_t L = max_length_, H = heads_;
    const float r_bound = std::sqrt(3.f / static_cast<float>(L));
    switch (mode_) {
      case Mode::random:
        if (cfg.params.at("fixed").get<bool>()) r_ = ab::Var(ab::init_uniform({H, L, L}, r_bound, extra(0)));
        else r_ = add_param("r", ab::init_uniform({H, L, L}, r_bound, extra(0)));
        break;
      case Mode::factorized_random: {
        const int64_t k = cfg.params.at("k").get<int64_t>();
        // Entries of R1 R2^T then have variance k s^4 = 1/L, like R's: s = (L k)^-1/4.
        const float b = std::sqrt(3.f) * std::pow(static_cast<float>(L * k), -0.25f);
        const bool fixed = cfg.params.at("fixed").get<bool>();
        ab::Tensor r1 = ab::init_uniform({H, L, k}, b, extra(1));
        ab::Tensor r2 = ab::init_uniform({H, L, k}, b, extra(2));
        if (fixed) r1_ = ab::Var(r1), r2_ = ab::Var(r2);
        else r1_ = add_param("r1", r1), r2_ = add_param("r2", r2);
        break;
      }
      case Mode::dense:
        w1_ = add_param("w1", ab::init_xavier_uniform(d_model_, d_model_, extra(3)));
        b1_ = add_param("b1", ab::Tensor::zeros({d_model_}));
        w2_ = add_param("w2", ab::init_normal({H, head_dim_, L}, 1.f / std::sqrt(static_cast<float>(head_dim_)), extra(4)));
        b2_ = add_param("b2", ab::Tensor::zeros({H, 1, L}));
        break;
    }
    wv_ = add_param("wv", ab::init_xavier_uniform(d_model_, d_model_, init(2)));
    wo_ = add_param("wo", ab::init_xavier_uniform(d_model_, d_model_, init(3)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "synthesizer", "dense",
        "synthesised attention weights: learned random, factorised random or dense (MLP) logits",
        "Tay et al. 2021, Synthesizer: Rethinking Self-Attention in Transformer Models",
        {ab::enum_param("mode", "random", {"random", "factorized_random", "dense"},
                        "random: learned [N, N] logits per head; factorized_random: R1 R2^T of rank k; "
                        "dense: per-token MLP logits (LRA: random for image/pathfinder, "
                        "factorized_random with k = 32 for text)"),
         ab::int_param("k", 32, "rank of factorized_random (LRA text: 32)", 1, 65536),
         ab::bool_param("fixed", false, "random modes: keep the random logits fixed (not trained)")},
        {.causal = true, .bidirectional = true, .padding_mask = true, .length_dependent = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const Mode mode = parse_mode(a.params->at("mode").get<std::string>());
      const double k = static_cast<double>(a.params->at("k").get<int64_t>());
      ab::Cost c;
      // value + output projections + P V
      c.flops = 2 * B * N * D * D * 2 + 2 * B * N * N * D;
      if (mode == Mode::factorized_random) c.flops += 2 * H * N * N * k;
      if (mode == Mode::dense) c.flops += 2 * B * N * D * D + 2 * B * N * N * D;
      // Saved: values and merged heads (2 B N D) and the probabilities: per head (random modes,
      // no padding mask, as measured) or per example (dense). Dense also keeps its hidden layer
      // (the ReLU's and the W2 product's inputs, [B N D] each). The random modes keep nothing else
      // at N = max_length (R1, R2 or R are parameters; shorter sequences add their slices).
      if (mode == Mode::dense) c.activation_bytes = 4 * (4 * B * N * D + B * H * N * N);
      else c.activation_bytes = 4 * (2 * B * N * D + H * N * N);
      // Peak at the softmax backward: the weights, their gradient and the logits' gradient
      // (3 H N^2 for the random modes, shared by the batch; 3 B H N^2 dense), y and dx (dense also
      // q, k) and two weight gradients.
      // Fixed random logits: the weights are a constant (one H N^2 buffer, no gradient of their
      // own), and y, the value branch's tensors and gradients dominate the rest (5 B N D).
      if (mode == Mode::dense) c.peak_bytes = 4 * (3 * B * H * N * N + 4 * B * N * D + 2 * D * D);
      else if (a.params->at("fixed").get<bool>()) c.peak_bytes = 4 * (H * N * N + 5 * B * N * D + 4 * D * D);
      else c.peak_bytes = 4 * (3 * H * N * N + 2 * B * N * D + 2 * D * D);
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1), H = heads_, d = head_dim_, D = d_model_;
    if (N > max_length_)
      throw ab::UsageError(fmt::format("synthesizer: sequence length {} exceeds the model's max_length {}", N, max_length_));
    const bool full = N == max_length_;
    ab::Var logits;  // [H, N, N] (input-independent) or [B, H, N, N]
    switch (mode_) {
      case Mode::random:
        logits = full ? r_ : ab::slice(ab::slice(r_, 1, 0, N), 2, 0, N);
        break;
      case Mode::factorized_random: {
        const ab::Var r1 = full ? r1_ : ab::slice(r1_, 1, 0, N), r2 = full ? r2_ : ab::slice(r2_, 1, 0, N);
        logits = ab::matmul(r1, r2, false, true);
        break;
      }
      case Mode::dense: {
        // hidden [B, N, D] -> [H, B N, d] -> (x) W2 [H, d, N] (+ b2) -> [H, B, N, N] -> [B, H, N, N]
        const ab::Var hid = ab::relu(ab::linear(x, w1_, b1_));
        const ab::Var hh = ab::reshape(ab::permute(ab::reshape(hid, {B, N, H, d}), {2, 0, 1, 3}), {H, B * N, d});
        const ab::Var w2 = full ? w2_ : ab::slice(w2_, 2, 0, N), b2 = full ? b2_ : ab::slice(b2_, 2, 0, N);
        logits = ab::permute(ab::reshape(ab::add(ab::matmul(hh, w2), b2), {H, B, N, N}), {1, 0, 2, 3});
        break;
      }
    }
    const bool shared = logits.rank() == 3 && !ctx.key_mask;
    if (logits.rank() == 3 && ctx.key_mask)  // per example: [1, H, N, N] + [B, 1, 1, N]
      logits = ab::add(ab::reshape(logits, {1, H, N, N}), ab::Var(*ctx.key_mask));
    ab::MixerContext masks = ctx;  // the key mask joins the causal one in dense mode only
    if (mode_ != Mode::dense) masks.key_mask = nullptr;
    const ab::Tensor mask = ab::additive_mask(masks, N);
    const ab::Var p = ab::softmax(logits, mask.defined() ? &mask : nullptr);
    const ab::Var vals = ab::reshape(ab::linear(x, wv_), {B, N, H, d});
    ab::Var merged;  // [B, N, D]
    if (shared) {
      // values [B, N, H, d] -> [H, N, B d]; P [H, N, N] (x) -> [H, N, B d] -> [B, N, H, d]
      const ab::Var vh = ab::reshape(ab::permute(vals, {2, 1, 0, 3}), {H, N, B * d});
      merged = ab::reshape(ab::permute(ab::reshape(ab::matmul(p, vh), {H, N, B, d}), {2, 1, 0, 3}), {B, N, D});
    } else {
      const ab::Var vh = ab::permute(vals, {0, 2, 1, 3});  // [B, H, N, d]
      merged = ab::reshape(ab::permute(ab::matmul(p, vh), {0, 2, 1, 3}), {B, N, D});
    }
    return ab::linear(merged, wo_);
  }

 private:
  Mode mode_;
  int64_t d_model_, heads_, head_dim_, max_length_;
  ab::Var r_, r1_, r2_, w1_, b1_, w2_, b2_, wv_, wo_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Synthesizer);
