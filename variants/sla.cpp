// sla — SLAB's simplified linear attention: ReLU features, linear attention with a normaliser, plus
// a depthwise convolution of the values added to the output.
// Guo et al. 2024, "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive
// Re-parameterized BatchNorm"; follows xinghaochen/SLAB@d959869 classification/models/slab_deit.py:
//   k <- k + P (learned positional encoding, zero-initialised, added before the kernel function)
//   out_i = relu(q_i)^T (sum_j relu(k_j) v_j^T) / (relu(q_i) . sum_j relu(k_j) + 1e-6) + DWC(v)_i
// (no 1/sqrt(d) scaling). DWC is a depthwise convolution over the head_dim channels with bias, shared
// by every head (the reference's Conv2d(head_dim, head_dim, 5, groups=head_dim) on each head's
// token grid). Deliberate differences: the 5 x 5 convolution on the image grid becomes a 1-D one of
// `conv_size` taps along the sequence (centred; causal when the run is causal, so that position t
// sees values <= t only); P is [max_length, D] over positions instead of the 14 x 14 grid.
// PRepBN (SLAB's other half) is a normalisation change, outside the mixer.
// Time O(B H N d^2) + O(B N D K); causal by the prefix-sum scan of ab::linear_attention.
// Capabilities: bidirectional, causal, padding mask (relu(k) is zeroed at padded keys, and padded
// values are zeroed before the convolution so they do not leak into real positions), decode (the
// linear-attention state S, z plus the last K - 1 values per head).
#include <fmt/format.h>

#include <cmath>

#include "attnbench/kernels/decode.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

// Causal decoding: the linear-attention running sums, the convolution's history and the position
// (for the positional encoding of the next key).
struct SlaState final : ab::DecodeState {
  SlaState(int64_t batch, int64_t heads, int64_t d, int64_t taps)
      : att(batch, heads, d, d), conv(batch * heads, d, taps) {}
  ab::LinearAttentionState att;
  ab::ShortConvState conv;
  int64_t position = 0;
  int64_t bytes() const override { return att.bytes() + conv.bytes(); }
};

class Sla final : public ab::AttentionMixer {
 public:
  explicit Sla(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), taps_(cfg.params.at("conv_size").get<int64_t>()), max_length_(cfg.max_length) {
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    // PyTorch's Conv default: U(+-1/sqrt(fan_in)), fan_in = the taps of one channel.
    const float bound = 1.0f / std::sqrt(static_cast<float>(taps_));
    conv_w_ = add_param("dwc_weight", ab::init_uniform({head_dim_, taps_}, bound, stream(0)));
    conv_b_ = add_param("dwc_bias", ab::init_uniform({head_dim_}, bound, stream(1)));
    pos_ = add_param("positional_encoding", ab::Tensor::zeros({max_length_, d_model_}), Decay::none);
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "sla", "kernel", "SLAB simplified linear attention: ReLU features + depthwise convolution of V",
        "Guo et al. 2024, SLAB: Efficient Transformers with Simplified Linear Attention and PRepBN",
        {ab::int_param("conv_size", 5, "taps of the depthwise convolution on V (SLAB: 5)", 1, 63)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .length_dependent = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double K = static_cast<double>(a.params->at("conv_size").get<int64_t>());
      ab::Cost c;
      // projections + state + readout + normaliser + the convolution + the positional add
      c.flops = 2 * B * N * D * D * 4 + 4 * B * N * D * d + 2 * B * N * D + 2 * B * N * D * K + B * N * D;
      // Saved: q, k + P, v (the convolution's input), the merged heads (4 B N D); bidirectional S and z.
      c.activation_bytes = 4 * (4 * B * N * D + (a.causal ? 0 : B * H * (d * d + d)));
      c.state_bytes = 4 * B * H * (d * d + d) + 4 * B * H * (K - 1) * d;
      // As linear_elu's backward, plus the convolution branch's output and gradient (2 B N D).
      c.peak_bytes = 4 * ((a.causal ? 12 : 13) * B * N * D + 2 * B * H * N + D * D);
      return c;
    };
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), N = q.dim(2);
    if (N > max_length_)
      throw ab::UsageError(fmt::format("sla: sequence length {} exceeds the model's max_length {}", N, max_length_));
    // P [N, D] as heads [1, H, N, d]
    const ab::Var p = ab::permute(ab::reshape(ab::slice(pos_, 0, 0, N), {1, N, heads_, head_dim_}), {0, 2, 1, 3});
    ab::LinearAttentionOptions opt;
    opt.feature = ab::FeatureMap::relu_plus_eps;
    opt.feature_eps = 0.f;  // plain ReLU, as SLAB
    opt.causal = ctx.causal;
    opt.eps = 1e-6f;
    opt.key_mask = ctx.key_mask;
    const ab::Var att = ab::linear_attention(q, ab::add(k, p), v, opt);
    const ab::Var vm = ctx.key_mask ? ab::mul(v, ab::Var(ab::keep_flags(ctx.key_mask, {B, 1, N, 1}))) : v;
    // The convolution over [B H, N, d], one filter per head_dim channel shared by the heads.
    const ab::Var conv = ab::short_conv(ab::reshape(vm, {B * heads_, N, head_dim_}), conv_w_, conv_b_, ctx.causal);
    return ab::add(att, ab::reshape(conv, {B, heads_, N, head_dim_}));
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<SlaState>(batch, heads_, head_dim_, taps_);
  }
  // q, k, v: [B, H, 1, d] -> [B, H, 1, d]
  ab::Tensor attend_step(const ab::Tensor& q, const ab::Tensor& k, const ab::Tensor& v, ab::DecodeState& state,
                         const ab::MixerContext&) override {
    auto& st = static_cast<SlaState&>(state);
    if (st.position >= max_length_)
      throw ab::UsageError(fmt::format("sla: decoding past the model's max_length {}", max_length_));
    const int64_t B = q.dim(0), d = head_dim_;
    const float* p = pos_.value().data() + st.position * d_model_;
    ab::Tensor fq = ab::Tensor::empty(q.shape()), fk = ab::Tensor::empty(k.shape());
    for (int64_t i = 0; i < q.numel(); ++i) {
      const float kp = k[i] + p[i % d_model_];  // i = (b H + h) d + c and P is [.., H d]
      fq[i] = q[i] > 0.f ? q[i] : 0.f;
      fk[i] = kp > 0.f ? kp : 0.f;
    }
    ++st.position;
    ab::Tensor out = st.att.step(fq, fk, v, 1e-6f);
    const ab::Tensor conv = st.conv.step(v.reshape({B * heads_, 1, d}), conv_w_.value(), &conv_b_.value());
    for (int64_t i = 0; i < out.numel(); ++i) out[i] += conv[i];
    return out;
  }

 private:
  int64_t taps_, max_length_;
  ab::Var conv_w_, conv_b_, pos_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Sla);
