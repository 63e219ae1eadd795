// fox — the Forgetting Transformer's Forgetting Attention: softmax attention whose scores carry a
// cumulative, data-dependent forget bias,
//   f_t = sigmoid(x_t w_f[h] + b_f[h])  (one scalar per token and head),  c_t = sum_{l<=t} log f_l,
//   O_i = sum_{j<=i} softmax_j(q_i . k_j / sqrt(d) + c_i - c_j) v_j.
// Lin, Nikishin, He, Courville 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate"
// (ICLR), eqs. 5-7; the basic FoX layer of zhixuan-lin/forgetting-transformer (fgate_proj: a
// Linear(d_model -> heads) with bias; no output gate, QK-norm or k-shift of "FoX (Pro)"). The gate's
// bias starts at `forget_bias` (0 here; the reference's default Linear init is ~0 as well).
// Kernel: the tiled exact kernel (harness/kernels/flash_attention) with its per-head key bias
// kb_j = -c_j: the row term c_i is the same for every key of row i, so it cancels in the softmax.
// f = 1 (log f = 0) is exactly causal softmax attention.
// Time O(B H N^2 d); memory O(B N D) (no N x N buffer).
// Capabilities: causal only (the forget bias is defined going forward), padding mask, decode (KV cache
// plus c_j per cached key; O(t d) per token).
#include <cmath>
#include <vector>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/flash_attention.hpp"
#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"

namespace {

// log sigmoid(z) = -softplus(-z), computed without overflow; gradient sigmoid(-z). saves: z
ab::Var log_sigmoid(const ab::Var& z) {
  const ab::Tensor& zv = z.value();
  ab::Tensor y = ab::Tensor::empty(zv.shape());
  for (int64_t i = 0; i < zv.numel(); ++i) y[i] = std::min(zv[i], 0.f) - std::log1p(std::exp(-std::abs(zv[i])));
  return ab::make_op_result(std::move(y), {z}, [gz = z.sink(), zv](const ab::Tensor& g) {
    ab::Tensor dz = ab::Tensor::empty(zv.shape());
    for (int64_t i = 0; i < zv.numel(); ++i) dz[i] = g[i] / (1.f + std::exp(zv[i]));
    gz.accumulate(dz);
  });
}

class FoxState final : public ab::DecodeState {
 public:
  FoxState(int64_t batch, int64_t heads, int64_t head_dim) : kv(batch, heads, head_dim), c(batch * heads, 0.f) {}
  int64_t bytes() const override { return kv.bytes() + static_cast<int64_t>(cum.size() * sizeof(float)); }
  ab::KvCache kv;
  std::vector<float> c;    // [B H]: c_t of the newest token
  std::vector<float> cum;  // [t][B H]: c_j of every cached key
};

class Fox final : public ab::AttentionMixer {
 public:
  explicit Fox(const ab::MixerConfig& cfg) : AttentionMixer(cfg) {
    wf_ = add_param("wf", ab::init_xavier_uniform(d_model_, heads_,
                                                  ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, 10)));
    bf_ = add_param("bf", ab::Tensor::full({heads_}, static_cast<float>(cfg.params.at("forget_bias").get<double>())));
    opt_.block_q = cfg.params.at("block_q").get<int64_t>();
    opt_.block_k = cfg.params.at("block_k").get<int64_t>();
    opt_.bwd_block_q = cfg.params.at("bwd_block_q").get<int64_t>();
    opt_.bwd_block_k = cfg.params.at("bwd_block_k").get<int64_t>();
  }

  static ab::VariantSpec spec() {
    const ab::FlashAttentionOptions def;
    ab::VariantSpec s = ab::variant_spec(
        "fox", "dense", "softmax attention plus a cumulative data-dependent forget bias log f (Forgetting Transformer)",
        "Lin et al. 2025, Forgetting Transformer: Softmax Attention with a Forget Gate",
        {
            ab::num_param("forget_bias", 0.0, "initial bias of the forget gate's logit (f = sigmoid(.))", -20, 20),
            ab::int_param("block_q", def.block_q, "forward tile: query rows per work item", 1, 4096),
            ab::int_param("block_k", def.block_k, "forward tile: keys per online-softmax step", 1, 8192),
            ab::int_param("bwd_block_q", def.bwd_block_q, "backward tile: query rows", 1, 4096),
            ab::int_param("bwd_block_k", def.bwd_block_k, "backward tile: keys per work item step", 1, 8192),
        },
        {.causal = true, .bidirectional = false, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      // projections + the gate (2 B N D H) + QK^T + PV (+ the bias, 1 per pair)
      const double pairs = N * (N + 1) / 2;  // causal only; the tiled kernel skips masked tiles
      c.flops = 2 * B * N * D * D * 4 + 2 * B * N * D * H + 4 * B * pairs * D + 2 * B * H * pairs;
      // Saved: as softmax_tiled (q, k, v, O, merged heads: 5 B N D; log-sum-exp B H N) plus the gate
      // logits (log-sigmoid input) and the key bias (2 B H N).
      c.activation_bytes = 4 * (5 * B * N * D + 3 * B * H * N);
      c.state_bytes = 4 * (2 * B * N * D + B * H * N + B * H);  // KV cache + c_j per key + c_t
      // Peak in the tiled backward: as softmax_tiled plus the key bias and its gradient.
      c.peak_bytes = 4 * (9 * B * N * D + 3 * B * H * N + D * D);
      return c;
    };
    s.check_params = {{"block_q", 3}, {"block_k", 4}, {"bwd_block_q", 3}, {"bwd_block_k", 2}};
    return s;
  }

  // x [B, N, D] -> log f [B, N, H]
  ab::Var log_forget(const ab::Var& x) const { return log_sigmoid(ab::linear(x, wf_, bf_)); }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    if (!input().defined())  // attend(q, k, v) called alone (bench --attend-only, --fidelity)
      throw ab::UsageError("fox: its gate reads the mixer input x, which attend(q, k, v) alone does not have; "
                           "measure it without --attend-only / --fidelity");
    if (!ctx.causal) throw ab::UsageError("fox is causal only; set model.causal=true");
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
    // kb = -c: [B, H, N]
    const ab::Var kb = ab::scale(ab::permute(ab::cumsum(log_forget(input()), 1), {0, 2, 1}), -1.f);
    return ab::flash_attention_key_bias(q, k, v, kb, scale, true, ctx.key_mask, opt_);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<FoxState>(batch, heads_, head_dim_);
  }
  // q, k, v: [B, H, 1, d] -> [B, H, 1, d]
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& st = static_cast<FoxState&>(state);
    const int64_t BH = q.dim(0) * q.dim(1);
    const ab::Tensor lf = log_forget(input()).value();  // [B, 1, H]
    for (int64_t bh = 0; bh < BH; ++bh) st.c[bh] += lf[bh];
    st.cum.insert(st.cum.end(), st.c.begin(), st.c.end());
    st.kv.append(k, v);
    // scores + c_t - c_j, then softmax
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
    return ab::attend_cached(q, st.kv, scale, [&](int64_t bh, float* w, int64_t L) {
      for (int64_t j = 0; j < L; ++j) w[j] = w[j] + st.c[bh] - st.cum[j * BH + bh];
      ab::softmax_in_place(w, L);
    });
  }

 private:
  ab::Var wf_, bf_;
  ab::FlashAttentionOptions opt_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Fox);
