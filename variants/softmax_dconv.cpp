// softmax_dconv — softmax attention with a depthwise 3-tap convolution along the sequence after each
// of the q, k and v projections (Primer's "Multi-DConv-Head Attention", MDHA).
// So et al. 2021, "Primer: Searching for Efficient Transformers for Language Modeling" (NeurIPS),
// sec. 3: every channel of every head of Q, K and V gets its own width-3 causal convolution over
// positions (t, t-1, t-2). Attention itself is the tiled exact kernel (as `softmax_tiled`).
// Deliberate differences: the taps have no bias; in bidirectional mode the convolution is centred
// (t-1, t, t+1) since Primer, a decoder, defines only the causal one. Padded positions are zeroed
// before the convolutions so that they reach no real position.
// Time O(B H N^2 d + B N D); memory O(B N D) (no N x N buffer).
// Capabilities: bidirectional, causal, padding mask, decode (3 conv histories of 2 tokens + KV cache).
#include <cmath>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/flash_attention.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

constexpr int64_t kTaps = 3;

class DconvState final : public ab::DecodeState {
 public:
  DconvState(int64_t batch, int64_t heads, int64_t head_dim)
      : cq(batch, heads * head_dim, kTaps), ck(batch, heads * head_dim, kTaps), cv(batch, heads * head_dim, kTaps),
        kv(batch, heads, head_dim) {}
  int64_t bytes() const override { return cq.bytes() + ck.bytes() + cv.bytes() + kv.bytes(); }
  ab::ShortConvState cq, ck, cv;
  ab::KvCache kv;
};

class SoftmaxDconv final : public ab::AttentionMixer {
 public:
  explicit SoftmaxDconv(const ab::MixerConfig& cfg) : AttentionMixer(cfg) {
    const float bound = 1.f / std::sqrt(static_cast<float>(kTaps));
    for (int i = 0; i < 3; ++i)
      conv_[i] = add_param(std::string("conv_") + "qkv"[i],
                           ab::init_uniform({d_model_, kTaps}, bound,
                                            ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, 10 + i)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "softmax_dconv", "dense",
        "softmax attention with depthwise 3-tap convolutions after the q, k, v projections (Primer MDHA)",
        "So et al. 2021, Primer: Searching for Efficient Transformers for Language Modeling", {},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      ab::Cost c;
      // projections + QK^T + PV (as softmax_tiled) + three depthwise convolutions (2 K per value)
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * N * D + 3 * 2 * kTaps * B * N * D;
      // Saved: the conv inputs (3 B N D, for the taps' gradients), then as softmax_tiled: q, k, v,
      // O, merged heads (5 B N D) and the log-sum-exp.
      c.activation_bytes = 4 * (8 * B * N * D + B * H * N);
      c.state_bytes = 4 * (2 * B * N * D + 3 * (kTaps - 1) * B * D);  // KV cache + conv histories
      // Peak in the tiled backward: as softmax_tiled plus the three saved conv inputs.
      c.peak_bytes = 4 * (12 * B * N * D + B * H * N + D * D);
      return c;
    };
    return s;
  }

  // t: [B, H, N, d] -> the same, convolved along N per channel with taps w [H d, 3]
  ab::Var conv(const ab::Var& t, const ab::Var& w, const ab::MixerContext& ctx) const {
    const int64_t B = t.dim(0), N = t.dim(2);
    ab::Var x = ab::reshape(ab::permute(t, {0, 2, 1, 3}), {B, N, d_model_});
    if (ctx.key_mask) x = ab::mul(x, ab::Var(ab::keep_flags(ctx.key_mask, {B, N, 1})));
    const ab::Var y = ab::short_conv(x, w, ab::Var(), ctx.causal);
    return ab::permute(ab::reshape(y, {B, N, heads_, head_dim_}), {0, 2, 1, 3});
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
    return ab::flash_attention(conv(q, conv_[0], ctx), conv(k, conv_[1], ctx), conv(v, conv_[2], ctx), scale,
                               ctx.causal, ctx.key_mask);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<DconvState>(batch, heads_, head_dim_);
  }
  // q, k, v: [B, H, 1, d] -> [B, H, 1, d]; one token's [B, H, 1, d] is laid out as [B, 1, H d].
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& st = static_cast<DconvState&>(state);
    const ab::Shape s = q.shape();
    const ab::Tensor qc = st.cq.step(q.reshape({s[0], 1, d_model_}), conv_[0].value(), nullptr).reshape(s);
    const ab::Tensor kc = st.ck.step(k.reshape({s[0], 1, d_model_}), conv_[1].value(), nullptr).reshape(s);
    const ab::Tensor vc = st.cv.step(v.reshape({s[0], 1, d_model_}), conv_[2].value(), nullptr).reshape(s);
    st.kv.append(kc, vc);
    return ab::softmax_attend_cached(qc, st.kv, 1.0f / std::sqrt(static_cast<float>(head_dim_)));
  }

 private:
  ab::Var conv_[3];
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(SoftmaxDconv);
