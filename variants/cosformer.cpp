// cosformer — linear attention with ReLU features and a cos re-weighting of the distance.
// Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention" (ICLR).
//   A_ij = relu(q_i) . relu(k_j) cos(pi (i - j) / (2M)),  out_i = sum_j A_ij v_j / (sum_j A_ij + eps),
// with M = MixerConfig::max_length (the longest sequence of this instance), so |i - j| < M keeps the
// weights non-negative and nearby tokens count more. cos(a - b) = cos a cos b + sin a sin b
// decomposes it into ONE linear attention over doubled features
//   phi(q_i) = [relu(q_i) cos(pi i / 2M), relu(q_i) sin(pi i / 2M)]  (2d features per head),
// computed by ab::linear_attention (bidirectional by GEMMs through the [2d, d] state, causal by
// the prefix-sum scan). No 1/sqrt(d) scaling (it cancels in the ratio).
// Time O(B H N d^2); memory O(B N D): saved are relu's inputs, the doubled features of q and k,
// v and the merged heads (bidirectional also S [2d, d] and z per head).
// Parameter feature = relu (the paper, default) or elu (1 + elu, smooth): the conformance suite's
// finite differences (step 1e-2) straddle ReLU's kink at its tiny sizes, so it checks the elu
// form; the ReLU form is checked against double-precision references in
// tests/test_linear_family.cpp.
// Capabilities: bidirectional, causal, padding mask (padded keys enter neither state nor
// normaliser), decode (the causal state S, z plus the position counter; positions >= M would
// make the weights of distant keys negative: decode at most max_length tokens).
#include <cmath>
#include <numbers>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

// The running linear-attention state and the number of tokens seen (the next position).
class CosformerState final : public ab::DecodeState {
 public:
  CosformerState(int64_t batch, int64_t heads, int64_t d) : inner(batch, heads, 2 * d, d) {}
  int64_t bytes() const override { return inner.bytes(); }
  ab::LinearAttentionState inner;
  int64_t position = 0;
};

class Cosformer final : public ab::AttentionMixer {
 public:
  explicit Cosformer(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        eps_(static_cast<float>(cfg.params.at("eps").get<double>())),
        elu_(cfg.params.at("feature").get<std::string>() == "elu"),
        max_length_(std::max<int64_t>(1, cfg.max_length)) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "cosformer", "kernel", "relu linear attention re-weighted by cos(pi (i - j) / 2M), as two feature halves",
        "Qin et al. 2022, cosFormer: Rethinking Softmax in Attention",
        {ab::num_param("eps", 1e-6, "added to the normaliser sum_j A_ij", 0.0, 1.0),
         ab::enum_param("feature", "relu", {"relu", "elu"},
                        "feature map before the cos/sin weights: relu (paper) or 1 + elu")},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.check_params = {{"feature", "elu"}};
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      ab::Cost c;
      // projections + state (2d x d per head) + readout + normaliser + features
      c.flops = 2 * B * N * D * D * 4 + 8 * B * N * D * d + 4 * B * N * D + 6 * B * N * D;
      // Saved: relu inputs of q and k (2 B N D), doubled features (4 B N D), v and merged heads
      // (2 B N D); bidirectional also S [2d, d] and z [2d] per head.
      c.activation_bytes = 4 * (8 * B * N * D + (a.causal ? 0 : B * H * (2 * d * d + 2 * d)));
      c.state_bytes = 4 * B * H * (2 * d * d + 2 * d);
      // Peak at the end of the linear-attention backward: y, the saved relu inputs and doubled
      // features (6 B N D), v, the upstream gradient per head, G, dq' and dk' (doubled: 4 B N D),
      // dv; 1 / den and c (2 B H N); dWo. Causal: no G buffer.
      c.peak_bytes = 4 * ((a.causal ? 14 : 15) * B * N * D + 2 * B * H * N + D * D);
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    ab::Tensor cs = ab::Tensor::empty({N, 1}), sn = ab::Tensor::empty({N, 1});  // broadcast over d
    for (int64_t i = 0; i < N; ++i) {
      const double angle = std::numbers::pi * static_cast<double>(i) / (2.0 * static_cast<double>(max_length_));
      cs[i] = static_cast<float>(std::cos(angle));
      sn[i] = static_cast<float>(std::sin(angle));
    }
    const ab::Var cv(cs), sv(sn);
    auto features = [&](const ab::Var& x) {  // [B, H, N, d] -> [B, H, N, 2d]
      const ab::Var r = elu_ ? ab::add_scalar(ab::elu(x), 1.f) : ab::relu(x);
      return ab::concat({ab::mul(r, cv), ab::mul(r, sv)}, 3);
    };
    ab::LinearAttentionOptions opt;
    opt.feature = ab::FeatureMap::identity;
    opt.causal = ctx.causal;
    opt.eps = eps_;
    opt.key_mask = ctx.key_mask;
    return ab::linear_attention(features(q), features(k), v, opt);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<CosformerState>(batch, heads_, head_dim_);
  }
  // q, k, v: [B, H, 1, d] -> [B, H, 1, d]
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& st = static_cast<CosformerState&>(state);
    const double angle = std::numbers::pi * static_cast<double>(st.position) / (2.0 * static_cast<double>(max_length_));
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    const int64_t rows = q.numel() / head_dim_, d = head_dim_;
    auto features = [&](const ab::Tensor& x) {  // [B, H, 1, d] -> [B, H, 1, 2d]
      ab::Tensor f = ab::Tensor::empty({x.dim(0), x.dim(1), 1, 2 * d});
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t a = 0; a < d; ++a) {
          const float xv = x[r * d + a];
          const float p = elu_ ? (xv > 0.f ? xv + 1.f : std::exp(xv)) : std::max(xv, 0.f);
          f[r * 2 * d + a] = p * c;
          f[r * 2 * d + d + a] = p * s;
        }
      return f;
    };
    ++st.position;
    return st.inner.step(features(q), features(k), v, eps_);
  }

 private:
  float eps_;
  bool elu_;
  int64_t max_length_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Cosformer);
