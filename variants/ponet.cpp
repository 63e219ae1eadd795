// ponet — Pooling Network token mixing: multi-granularity pooling instead of attention.
// Tan et al. 2022, "PoNet: Pooling Network for Efficient Token Mixing in Long Sequences" (ICLR 2022);
// reference code lxchtan/PoNet, examples/LRA/code/attention_ponet.py.
//
// Five projections of x (no bias, Xavier-uniform, as the LRA attention layers): Q, K (= V), O, L, S.
//   global aggregation (GA), per head:  g = mean_i Q_i,  a = softmax_j(g . K_j / sqrt(d)),  G = sum_j a_j K_j
//   segment max pooling (SMP):           s_i = max_{j in seg(i)} S_j     (segments of `segment_size` tokens)
//   local max pooling (LMP):             l_i = max_{|j - i| <= w/2} L_j  (window `local_window`, stride 1)
//   y_i = ((G + s_i) * O_i + l_i) W_out
// Time O(B N D (D + w)), memory O(B N D): linear in N.
// Capabilities: bidirectional only (the global mean and the segments see the future); padding mask:
// padded positions are left out of the mean, get zero attention weight, never win a max pool, and their
// outputs are 0 (as in the reference, which fills padded positions with -1e4 before pooling).
// Differences from the reference: segments have a fixed size (`segment_size`) instead of the
// reference's `segment_num` (its segment length is N // segment_num + 1); an output projection W_out is
// owned by the mixer (the LRA code applies it in the attention wrapper).
#include <cmath>

#include "attnbench/kernels/monarch.hpp"
#include "attnbench/variant.hpp"

namespace {

class PoNet final : public ab::Mixer {
 public:
  explicit PoNet(const ab::MixerConfig& cfg)
      : d_(cfg.d_model),
        heads_(cfg.heads),
        segment_(cfg.params.at("segment_size").get<int64_t>()),
        window_(cfg.params.at("local_window").get<int64_t>()) {
    if (d_ % heads_ != 0) throw ab::UsageError("ponet: d_model must be a multiple of heads");
    if (window_ % 2 == 0) throw ab::UsageError("ponet: local_window must be odd");
    auto stream = [&](uint64_t i) { return ab::RngStream(cfg.seed, ab::Purpose::init, static_cast<uint64_t>(cfg.layer), 800 + i); };
    wq_ = add_param("wq", ab::init_xavier_uniform(d_, d_, stream(0)));
    wk_ = add_param("wk", ab::init_xavier_uniform(d_, d_, stream(1)));
    wo_ = add_param("wo", ab::init_xavier_uniform(d_, d_, stream(2)));
    wl_ = add_param("wl", ab::init_xavier_uniform(d_, d_, stream(3)));
    ws_ = add_param("ws", ab::init_xavier_uniform(d_, d_, stream(4)));
    wout_ = add_param("wout", ab::init_xavier_uniform(d_, d_, stream(5)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "ponet", "pooling",
        "PoNet: global attention-pooled context + segment max pooling + local max pooling, linear in N",
        "Tan et al. 2022, PoNet: Pooling Network for Efficient Token Mixing in Long Sequences",
        {
            ab::int_param("segment_size", 32, "tokens per segment of the segment max pooling", 1, 1 << 24),
            ab::int_param("local_window", 3, "window of the local max pooling (odd)", 1, 255),
        },
        {.causal = false, .bidirectional = true, .padding_mask = true});
    // Central differences are not valid across the kinks of a max (a 1e-2 step flips near-tied winners),
    // so the conformance gradient check runs the pools at width 1; the pools' gradients are checked
    // exactly against the argmax routing, and the mixer with padding against a naive reference, in
    // tests/test_monarch.cpp.
    s.check_params = {{"segment_size", 1}, {"local_window", 1}};
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const double seg = static_cast<double>(a.params->at("segment_size").get<int64_t>());
      const double w = static_cast<double>(a.params->at("local_window").get<int64_t>());
      const double segments = std::ceil(N / seg);
      ab::Cost c;
      // Six D x D projections, mean + scores + weighted sum, the two poolings, the combination.
      c.flops = 6 * 2 * B * N * D * D + 5 * B * N * D + B * N * D * (1 + w) + 3 * B * N * D;
      // Saved: K heads (both GA matmuls), the local-pool argmax, G + s and O (the product), the
      // combined output (W_out input): 5 BND; the attention weights B H N; the segment argmax.
      c.activation_bytes = 4 * (5 * B * N * D + B * H * N + B * segments * D);
      // The forward's peak dominates: the saved tensors (5 B N D) with y and the projections and
      // poolings still being combined (3 B N D more), the attention weights and dW of one projection.
      c.peak_bytes = 4 * (9 * B * N * D + B * H * N + D * D);
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1), D = d_, H = heads_, d = D / H;
    const ab::Tensor* mask = ctx.key_mask;  // [B, 1, 1, N] additive
    auto heads = [&](const ab::Var& t) { return ab::permute(ab::reshape(t, {B, N, H, d}), {0, 2, 1, 3}); };
    const ab::Var qh = heads(ab::linear(x, wq_));  // [B, H, N, d]
    const ab::Var kh = heads(ab::linear(x, wk_));  // [B, H, N, d]
    // Global aggregation: g = mean of the real queries [B, H, 1, d].
    const ab::Tensor keep = ab::keep_flags(mask, {B, N, 1});  // 1 real, 0 padded; undefined: no mask
    ab::Var g;
    if (mask) {
      ab::Tensor w = ab::Tensor::empty({B, H, 1, N});  // 1 / (real count) at real positions, else 0
      for (int64_t b = 0; b < B; ++b) {
        int64_t real = 0;
        for (int64_t n = 0; n < N; ++n) real += keep[b * N + n] != 0.f;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t n = 0; n < N; ++n)
            w[(b * H + h) * N + n] =
                keep[b * N + n] == 0.f ? 0.f : 1.f / static_cast<float>(std::max<int64_t>(real, 1));
      }
      g = ab::matmul(ab::Var(w), qh);
    } else {
      g = ab::reshape(ab::mean_dim(qh, 2), {B, H, 1, d});
    }
    g = ab::scale(g, 1.0f / std::sqrt(static_cast<float>(d)));
    const ab::Var att = ab::softmax(ab::matmul(g, kh, false, true), mask);  // [B, H, 1, N]
    const ab::Var ga = ab::reshape(ab::permute(ab::matmul(att, kh), {0, 2, 1, 3}), {B, 1, D});  // [B, 1, D]
    // Segment and local max pooling over the S and L projections [B, N, D].
    const ab::Var sp = ab::segment_max_pool(ab::linear(x, ws_), segment_, mask);
    const ab::Var lp = ab::local_max_pool(ab::linear(x, wl_), window_, mask);
    ab::Var y = ab::add(ab::mul(ab::add(sp, ga), ab::linear(x, wo_)), lp);  // [B, N, D]
    if (mask) y = ab::mul(y, ab::Var(keep));
    return ab::linear(y, wout_);
  }

 private:
  int64_t d_, heads_, segment_, window_;
  ab::Var wq_, wk_, wo_, wl_, ws_, wout_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(PoNet);
