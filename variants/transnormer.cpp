// transnormer — TransNormer: DiagAttention in the lower layers, NormAttention in the upper ones.
// Qin et al. 2022, "The Devil in Linear Transformer" (EMNLP).
//  * DiagAttention (layers < diag_layers): softmax attention inside non-overlapping blocks of
//    `block` tokens (the `local_block` pattern, ab::block_sparse_attention; scale 1/sqrt(d)).
//  * NormAttention (the other layers): linear attention WITHOUT the denominator, followed by a
//    LayerNorm over each head's d channels (learned gamma, beta [d], shared by the heads):
//      O = LayerNorm(phi(Q) (phi(K)^T V)),  phi = 1 + elu (default) or relu;
//    bidirectional by two GEMMs through the [d, d] state, causal by the prefix scan
//    ab::causal_linear_numerator (no [N, d, d] buffer).
// The layer index is MixerConfig::layer; the mixer does not know the model depth, so the split is
// the parameter diag_layers (default 1 = the first half of the default 2-layer model; set it to
// model.layers / 2 for other depths; 0 = NormAttention everywhere).
// Time: Diag O(B H N block d); Norm O(B H N d^2). Memory O(B N D) saved for backward in both.
// Cost model: the analytic cost takes no layer index, so it describes layer 0 (DiagAttention when
// diag_layers >= 1, NormAttention when diag_layers = 0).
// Capabilities: bidirectional, causal, padding mask (Diag: masked keys; Norm: padded keys are
// zeroed in phi(K), so they leave the state), decode: Diag keeps the keys and values of the
// current block (at most `block` tokens, emptied at each block boundary), Norm the [d, d] state
// sum phi(k) v^T per head.
#include <algorithm>
#include <cmath>
#include <memory>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/prefix_scan_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class TransNormer final : public ab::AttentionMixer {
 public:
  explicit TransNormer(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        block_(cfg.params.at("block").get<int64_t>()),
        diag_(cfg.layer < cfg.params.at("diag_layers").get<int64_t>()),
        relu_(cfg.params.at("feature").get<std::string>() == "relu") {
    if (!diag_) {
      gamma_ = add_param("norm.gamma", ab::Tensor::full({head_dim_}, 1.f));
      beta_ = add_param("norm.beta", ab::Tensor::zeros({head_dim_}));
    }
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "transnormer", "kernel",
        "block softmax (DiagAttention) in lower layers, normalised linear attention (NormAttention) above",
        "Qin et al. 2022, The Devil in Linear Transformer (TransNormer)",
        {ab::int_param("block", 64, "DiagAttention block length in tokens", 1, 65536),
         ab::int_param("diag_layers", 1, "layers 0 .. diag_layers-1 use DiagAttention, the rest NormAttention", 0,
                       1024),
         ab::enum_param("feature", "elu", {"elu", "relu"}, "NormAttention feature map: 1 + elu(x) or relu(x)")},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const bool diag = a.params->at("diag_layers").get<int64_t>() > 0;  // layer 0
      ab::Cost c;
      if (diag) {
        const auto p = ab::block_diagonal_pattern(a.length, a.params->at("block").get<int64_t>());
        c.flops = 8 * B * N * D * D + ab::block_sparse_attention_flops(p, a.batch, a.heads, a.d_model / a.heads, a.causal);
        c.activation_bytes = ab::block_sparse_activation_bytes(B, N, D, H);
        const int64_t block = a.params->at("block").get<int64_t>(), held = a.length % block ? a.length % block : block;
        c.state_bytes = 4.0 * 2 * B * D * static_cast<double>(std::min<int64_t>(held, a.length));
        // Peak in the block-sparse backward: y, q, k, v, O, the upstream gradient per head, dq, dk,
        // dv (9 B N D), the log-sum-exp and dWo.
        c.peak_bytes = 4 * (9 * B * N * D + B * H * N + D * D);
      } else {
        // projections + state + readout + features and norm
        c.flops = 8 * B * N * D * D + 4 * B * N * D * d + 10 * B * N * D;
        // Saved: the feature map's input/output for q and k (2 B N D), the features (2 B N D), v,
        // the numerator (the norm's input), the merged heads (3 B N D); bidirectional also the
        // [d, d] state per head.
        c.activation_bytes = 4 * (7 * B * N * D + 2 * B * H * N + (a.causal ? 0 : B * H * d * d));
        c.state_bytes = 4 * B * H * d * d;
        // Peak at the end of the linear-attention backward: the saved tensors, y, the upstream
        // gradient per head and dv (3 B N D more; dq, dk replace the features' inputs) and dWo.
        c.peak_bytes = c.activation_bytes + 4 * (3 * B * N * D + D * D);
      }
      return c;
    };
    s.check_params = {{"block", 4}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    if (diag_) {
      auto pattern = cache_.get(N, [&] { return ab::block_diagonal_pattern(N, block_); });
      return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                                        ctx.causal, ctx.key_mask);
    }
    auto phi = [&](const ab::Var& x) { return relu_ ? ab::relu(x) : ab::add_scalar(ab::elu(x), 1.f); };
    const ab::Var fq = phi(q);
    ab::Var fk = phi(k);
    ab::Var num;
    if (ctx.causal) {
      num = ab::causal_linear_numerator(fq, fk, v, ctx.key_mask);  // [B, H, N, d]
    } else {
      if (ctx.key_mask) {  // zero the features of padded keys: [B, 1, N, 1]
        const int64_t B = q.dim(0);
        fk = ab::mul(fk, ab::Var(ab::keep_flags(ctx.key_mask, {B, 1, N, 1})));
      }
      const ab::Var state = ab::matmul(fk, v, true, false);  // [B, H, d, d]
      num = ab::matmul(fq, state);                           // [B, H, N, d]
    }
    return ab::layer_norm(num, gamma_, beta_);
  }

  // Decoding. Diag: softmax over the current block's cache. Norm: S += phi(k) v^T, then the head's
  // LayerNorm of phi(q)^T S.
  struct State final : ab::DecodeState {
    int64_t batch, heads, dim;
    std::unique_ptr<ab::KvCache> block;  // Diag
    ab::Tensor s;                        // Norm: [B, H, d, d]
    int64_t bytes() const override { return block ? block->bytes() : s.bytes(); }
  };
  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    auto st = std::make_unique<State>();
    st->batch = batch, st->heads = heads_, st->dim = head_dim_;
    if (diag_) st->block = std::make_unique<ab::KvCache>(batch, heads_, head_dim_);
    else st->s = ab::Tensor::zeros({batch, heads_, head_dim_, head_dim_});
    return st;
  }
  // q, k, v: [B, H, 1, d] -> [B, H, 1, d]
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& st = static_cast<State&>(state);
    const int64_t d = head_dim_, BH = st.batch * heads_;
    if (diag_) {
      if (st.block->length() == block_) st.block = std::make_unique<ab::KvCache>(st.batch, heads_, d);
      st.block->append(k, v);
      return ab::softmax_attend_cached(q, *st.block, 1.0f / std::sqrt(static_cast<float>(d)));
    }
    auto phi = [&](float x) { return relu_ ? std::max(x, 0.f) : (x > 0.f ? x + 1.f : std::exp(x)); };
    ab::Tensor out = ab::Tensor::empty(q.shape());
    for (int64_t bh = 0; bh < BH; ++bh) {
      float* S = st.s.data() + bh * d * d;
      const float *qr = q.data() + bh * d, *kr = k.data() + bh * d, *vr = v.data() + bh * d;
      float* o = out.data() + bh * d;
      for (int64_t a = 0; a < d; ++a)
        for (int64_t c = 0; c < d; ++c) S[a * d + c] += phi(kr[a]) * vr[c];
      double mean = 0, var = 0;
      for (int64_t c = 0; c < d; ++c) {
        float acc = 0;
        for (int64_t a = 0; a < d; ++a) acc += phi(qr[a]) * S[a * d + c];
        o[c] = acc;
        mean += acc;
      }
      mean /= static_cast<double>(d);
      for (int64_t c = 0; c < d; ++c) var += (o[c] - mean) * (o[c] - mean);
      const double inv = 1.0 / std::sqrt(var / static_cast<double>(d) + 1e-5);
      for (int64_t c = 0; c < d; ++c)
        o[c] = static_cast<float>((o[c] - mean) * inv) * gamma_.value()[c] + beta_.value()[c];
    }
    return out;
  }

 private:
  int64_t block_;
  bool diag_, relu_;
  ab::Var gamma_, beta_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(TransNormer);
