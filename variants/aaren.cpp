// aaren — attention as a many-to-many RNN: one LEARNED query per head attends causally.
// Feng et al. 2024, "Attention as an RNN".
//   k_t = W_k x_t, v_t = W_v x_t (per head), s_t = q_h . k_t / sqrt(d),
//   o_t = sum_{j<=t} softmax_{j<=t}(s)_j v_j,   y_t = W_o [o_t over heads].
// The outputs are the prefix scan of the online-softmax operator over leaves (s_j, 1, v_j),
// computed by ab::prefix_softmax_attention (a chunked parallel scan, hand-written forward and
// backward; it saves the scores and the log-sum-exp per position, O(N) per head). Since only
// q_h . W_k x_t is needed, the scores come from one [D, H] matrix W_s = (W_k per head) q_h, so the
// keys are never materialised (same function; q_h and W_k are kept as separate parameters as in
// the paper).
// Time O(B N D^2) for the projections + O(B N D) for the scan; memory O(B N D) saved for backward
// (v and the merged heads) + O(B H N) (scores, log-sum-exp).
// Capabilities: causal only (the model must run with model.causal=true; pool with
// model.pooling=mean), padding mask (padded keys take no weight), decode with the O(1) state
// (m, u, w) per head: B H (d + 2) floats.
#include <cmath>
#include <limits>

#include "attnbench/kernels/prefix_scan_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

// (m, u, w[d]) per (batch, head): running max score, sum of e^{s - m}, sum of e^{s - m} v.
class AarenState final : public ab::DecodeState {
 public:
  AarenState(int64_t batch, int64_t heads, int64_t d) : mu(ab::Tensor::empty({batch, heads, d + 2})) {
    for (int64_t r = 0; r < batch * heads; ++r) {
      mu[r * (d + 2)] = -std::numeric_limits<float>::infinity();
      for (int64_t c = 1; c < d + 2; ++c) mu[r * (d + 2) + c] = 0.f;
    }
  }
  int64_t bytes() const override { return mu.bytes(); }
  ab::Tensor mu;  // [B, H, 2 + d]: m, u, w
};

class Aaren final : public ab::Mixer {
 public:
  explicit Aaren(const ab::MixerConfig& cfg)
      : d_model_(cfg.d_model), heads_(cfg.heads), head_dim_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0) {
    if (heads_ <= 0 || d_model_ % heads_ != 0)
      throw ab::UsageError("aaren: model.d_model must be a multiple of model.heads");
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    wk_ = add_param("wk", ab::init_xavier_uniform(d_model_, d_model_, stream(1)));
    wv_ = add_param("wv", ab::init_xavier_uniform(d_model_, d_model_, stream(2)));
    wo_ = add_param("wo", ab::init_xavier_uniform(d_model_, d_model_, stream(3)));
    query_ = add_param("query", ab::init_normal({heads_, head_dim_}, 1.0f, stream(4)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "aaren", "recurrent",
        "a learned query per head attends causally; outputs by a parallel prefix scan of online softmax",
        "Feng et al. 2024, Attention as an RNN (Aaren)", {},
        {.causal = true, .bidirectional = false, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      // scores (x W_s) + values + output projection + the scan (~4 flops per value element)
      c.flops = 2 * B * N * D * H + 2 * B * N * D * D * 2 + 4 * B * N * D;
      // Saved: v and the merged heads (2 B N D), scores and log-sum-exp (2 B H N).
      c.activation_bytes = 4 * (2 * B * N * D + 2 * B * H * N);
      c.state_bytes = 4 * B * H * (D / H + 2);
      // Peak in the prefix scan's backward: y, v, the upstream gradient per head, the recomputed
      // output, dv (5 B N D), s, L, their recomputation and ds (4 B H N), and dWo. (With 2 threads,
      // oneDNN's packing of x^T in a weight-gradient GEMM adds about one B N D at small sizes.)
      c.peak_bytes = 4 * (5 * B * N * D + 4 * B * H * N + D * D);
      return c;
    };
    return s;
  }

  // W_s [D, H] = sum_e W_k[:, h d + e] q[h, e] / sqrt(d)
  ab::Var score_weight() const {
    const ab::Var wk3 = ab::reshape(wk_, {d_model_, heads_, head_dim_});
    const ab::Var q3 = ab::reshape(query_, {1, heads_, head_dim_});
    return ab::scale(ab::sum_dim(ab::mul(wk3, q3), 2), 1.0f / std::sqrt(static_cast<float>(head_dim_)));
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    if (!ctx.causal) throw ab::UsageError("aaren is causal only; set model.causal=true");
    const int64_t B = x.dim(0), N = x.dim(1);
    const ab::Var s = ab::permute(ab::linear(x, score_weight()), {0, 2, 1});  // [B, N, H] -> [B, H, N]
    const ab::Var v = ab::permute(ab::reshape(ab::linear(x, wv_), {B, N, heads_, head_dim_}), {0, 2, 1, 3});  // [B, H, N, d]
    const ab::Var o = ab::prefix_softmax_attention(s, v, ctx.key_mask);  // [B, H, N, d]
    return ab::linear(ab::reshape(ab::permute(o, {0, 2, 1, 3}), {B, N, d_model_}), wo_);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<AarenState>(batch, heads_, head_dim_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    const int64_t B = x_t.dim(0), H = heads_, d = head_dim_;
    const ab::Var x(x_t);
    const ab::Tensor s = ab::linear(x, score_weight()).value();  // [B, 1, H]
    const ab::Tensor v = ab::linear(x, wv_).value();             // [B, 1, H * d]
    ab::Tensor& mu = static_cast<AarenState&>(state).mu;         // [B, H, 2 + d]
    ab::Tensor o = ab::Tensor::empty({B, 1, d_model_});
    for (int64_t r = 0; r < B * H; ++r) {
      float* st = mu.data() + r * (d + 2);
      float &m = st[0], &u = st[1];
      float* w = st + 2;
      const float sc = s[r];
      const float* vv = v.data() + r * d;
      const float mm = std::max(m, sc);
      const float ca = std::isinf(m) ? 0.f : std::exp(m - mm), cb = std::exp(sc - mm);
      u = u * ca + cb;
      for (int64_t c = 0; c < d; ++c) {
        w[c] = w[c] * ca + cb * vv[c];
        o[r * d + c] = w[c] / u;
      }
      m = mm;
    }
    return ab::linear(ab::Var(o), wo_).value();
  }

 private:
  int64_t d_model_, heads_, head_dim_;
  ab::Var wk_, wv_, wo_, query_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Aaren);
