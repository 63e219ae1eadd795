// swin1d — shifted-window attention in 1-D: tokens attend within non-overlapping windows of `window`
// positions, and every other layer the window grid is shifted by floor(window / 2), so information
// crosses window borders over two layers.
// Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" (ICCV),
// sec. 3.2, read in 1-D; as microsoft/Swin-Transformer's SwinTransformerBlock: shift_size = 0 in even
// blocks and window_size // 2 in odd ones; the cyclic shift (torch.roll) plus the attention mask
// that keeps wrapped-around tokens apart is, in 1-D, exactly block-diagonal attention over the
// windows [0, s), [s, s + w), [s + w, s + 2w), ..., so it is built that way (no roll). As the
// reference, a window >= N means one window and no shift: plain softmax attention.
// Deliberate difference: no learned relative position bias table (the model adds positions).
// Kernel: block_sparse_attention over the window blocks (the local family's kernel).
// Time O(B H N w d); memory O(B N D + B H N) (no N x N buffer).
// Capabilities: bidirectional; causal = window intersected with j <= i; key padding.
#include <algorithm>
#include <cmath>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

// Block-diagonal pattern over the windows of a grid shifted by `shift` (0 <= shift < window).
ab::SparsePattern swin_pattern(int64_t N, int64_t window, int64_t shift) {
  if (window >= N) shift = 0;  // one window, as Swin when the window covers the input
  std::vector<int64_t> bounds = {0};
  for (int64_t b = shift > 0 ? shift : window; b < N; b += window) bounds.push_back(b);
  bounds.push_back(N);
  if (N == 0) bounds = {0};
  ab::SparsePattern p;
  p.length = N;
  p.segments.push_back(ab::build_segment(N, {{}, {}, bounds, bounds}, 1,
                                         [](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
                                           kbs.push_back(static_cast<int32_t>(qb));
                                         }));
  return p;
}

class Swin1d final : public ab::AttentionMixer {
 public:
  explicit Swin1d(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), window_(cfg.params.at("window").get<int64_t>()) {
    const std::string mode = cfg.params.at("shift").get<std::string>();
    shifted_ = mode == "always" || (mode == "alternate" && cfg.layer % 2 == 1);
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "swin1d", "sparse",
        "attention within windows of `window` tokens, the grid shifted by window/2 in every other layer",
        "Liu et al. 2021, Swin Transformer (shifted windows), in 1-D",
        {ab::int_param("window", 64, "window length in tokens (>= N: one window = softmax attention)", 1, 1e9),
         ab::enum_param("shift", "alternate", {"alternate", "none", "always"},
                        "shift the grid by window/2: in odd layers (Swin), never, or in every layer")},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      // The unshifted grid (the shifted one computes at most one window's pairs more or less).
      return ab::block_sparse_mixer_cost(swin_pattern(a.length, a.params->at("window").get<int64_t>(), 0), a,
                                         a.causal);
    };
    s.check_params = {{"window", 4}, {"shift", "always"}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    auto pattern = cache_.get(N, [&] { return swin_pattern(N, window_, shifted_ ? window_ / 2 : 0); });
    return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)), ctx.causal,
                                      ctx.key_mask);
  }

 private:
  int64_t window_;
  bool shifted_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Swin1d);
