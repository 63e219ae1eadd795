// rwkv7 — RWKV-7 "Goose" time mixing: the generalised delta rule with a per-key-channel
// data-dependent decay, a vector in-context learning rate and separate removal / replacement keys.
// Peng et al. 2025, "RWKV-7 'Goose' with Expressive Dynamic State Evolution" (arXiv 2503.14456);
// layer as BlinkDL/RWKV-LM RWKV-v7/train_temp/src/model.py RWKV_Tmix_x070 (@118e451c, its
// commented "slow pytorch version") and the rwkv7_clampw kernel's decay (read for facts, not copied):
//   xx = shift(x) - x,  x_* = x + xx o mu_*   (token shift, * in r, w, k, v, a, g; shift(x)_t = x_{t-1}, 0 at t = 0)
//   r = x_r Wr,  k = x_k Wk,  v = x_v Wv
//   w = w0 + tanh(x_w W1) W2,  log decay = -e^-0.5 sigmoid(w)  (decay in (0.545, 1), per key channel)
//   a = sigmoid(a0 + x_a A1 A2)         (in-context learning rate, a vector)
//   g = sigmoid(x_g G1) G2              (output gate)
//   kk = L2norm_head(k o k_k),  k <- k o (1 + (a - 1) o k_a)
//   S_t = (diag(w_t) - kk_t (kk_t o a_t)^T) S_{t-1} + k_t v_t^T,  o_t = S_t^T r_t   (ab::dplr_delta_rule
//         with a = -kk, b = kk o a in its convention S_t = (diag(w) + b a^T) S + k v^T; RWKV's S is the transpose)
//   o <- GroupNorm_head(o) (eps 64e-5, per-channel affine) + ((r o k o r_k) summed over the head) v
//   y = (o o g) Wo
// Initialisation as the reference (mu_* = 1 - (i / D)^(p (1 - l / L)), w0 and a0 ramps with the
// per-head zigzag, k_k = 0.71 - 0.1 lin, k_a = 1.02, r_k = -0.04, LoRA down-projections zero, key
// U(+-0.05 / sqrt D), receptance and value U(+-0.5 / sqrt D)); L is the `init_layers` parameter
// (a mixer does not know the model's depth).
// Deliberate differences:
// - The cross-layer value residual (v <- v + (v_first - v) sigmoid(v0 + x_v V1 V2), v_first the
//   first layer's v) is left out: a mixer sees only its own input, and carrying layer 0's v to the
//   other layers would need a side channel through the model that no other mixer has. With it gone,
//   every layer is the reference's layer 0.
// - The LoRA up-projections are N(0, (0.1 / sqrt D)^2) instead of orthogonal with gain 0.1 (same
//   scale), and Wo is Xavier-uniform instead of zero (zero would make the mixer's output, and so
//   every conformance check of it, vanish at initialisation).
// Kernel: ab::dplr_delta_rule, chunked (chunk 16: the pairwise decays cost O(C dk) per position,
// the state products O(dk dv)), hand-written backward, saves only its inputs.
// Capabilities: causal with decoding (state S [B, H, dk, dv] and the previous x for the token
// shift); padding mask (padded inputs are zeroed and leave the state unchanged: k = b = 0, w = 1).
// Bidirectional (not in the paper; as this registry's delta-rule layers): the causal plus the
// anti-causal scan over the same projections, summed; the token shift stays causal.
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "attnbench/kernels/dplr_delta_rule.hpp"
#include "attnbench/variant.hpp"

namespace {

// The reference's LoRA width rule max(32, round(f sqrt(D) / 32) * 32), or the user's width.
int64_t lora_width(int64_t user, double f, int64_t D) {
  if (user > 0) return user;
  return std::max<int64_t>(32, std::llround(f * std::sqrt(double(D)) / 32.0) * 32);
}

class Rwkv7State final : public ab::DecodeState {
 public:
  Rwkv7State(int64_t batch, int64_t heads, int64_t dk, int64_t D)
      : s(batch, heads, dk, dk), prev(ab::Tensor::zeros({batch, 1, D})) {}
  int64_t bytes() const override { return s.bytes() + prev.bytes(); }
  ab::DplrDeltaRuleState s;
  ab::Tensor prev;  // x at the previous position [B, 1, D]
};

class Rwkv7 final : public ab::Mixer {
 public:
  explicit Rwkv7(const ab::MixerConfig& cfg) : D_(cfg.d_model), H_(cfg.heads), seed_(cfg.seed), layer_(cfg.layer) {
    const auto& p = cfg.params;
    if (H_ <= 0 || D_ % H_ != 0)
      throw ab::UsageError("rwkv7: d_model = " + std::to_string(D_) + " must be a multiple of model.heads = " +
                           std::to_string(H_));
    N_ = D_ / H_;
    opt_.chunk = p.at("chunk").get<int64_t>();
    const int64_t D = D_, N = N_;
    const int64_t Lw = lora_width(p.at("decay_lora").get<int64_t>(), 2.5, D);
    const int64_t La = lora_width(p.at("iclr_lora").get<int64_t>(), 2.5, D);
    const int64_t Lg = lora_width(p.at("gate_lora").get<int64_t>(), 5.0, D);
    const double L = double(p.at("init_layers").get<int64_t>());
    const double l = std::min<double>(layer_, L - 1);
    const double r01 = L > 1 ? l / (L - 1) : 0.0, r10 = 1.0 - l / L;
    ab::Tensor mu[6], w0 = ab::Tensor::empty({D}), a0 = ab::Tensor::empty({D}), kk = ab::Tensor::empty({D});
    const double pw[6] = {0.2, 0.9, 0.7, 0.7, 0.9, 0.2};  // r, w, k, v, a, g
    for (auto& m : mu) m = ab::Tensor::empty({D});
    for (int64_t n = 0; n < D; ++n) {
      const double ddd = double(n) / double(D), lin = double(n) / double(std::max<int64_t>(D - 1, 1)) - 0.5;
      double zz = N > 1 ? (double(n % N) - (N - 1) / 2.0) / ((N - 1) / 2.0) : 0.0;
      zz *= std::fabs(zz);
      for (int i = 0; i < 6; ++i) mu[i][n] = static_cast<float>(1.0 - std::pow(ddd, pw[i] * r10));
      const double www = -6.0 + 6.0 * std::pow(double(n) / double(std::max<int64_t>(D - 1, 1)), 1.0 + std::pow(r01, 0.3));
      w0[n] = static_cast<float>(www + 0.5 + 2.5 * zz);
      a0[n] = static_cast<float>(-0.19 + 0.3 * zz + 0.4 * lin);
      kk[n] = static_cast<float>(0.71 - 0.1 * lin);
    }
    const char* mix_names[6] = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"};
    for (int i = 0; i < 6; ++i) mu_[i] = add_param(mix_names[i], mu[i]);
    const float up = 0.1f / std::sqrt(float(D));
    w0_ = add_param("w0", w0);
    w1_ = add_param("w1", ab::Tensor::zeros({D, Lw}));
    w2_ = add_param("w2", ab::init_normal({Lw, D}, up, stream(0)));
    a0_ = add_param("a0", a0);
    a1_ = add_param("a1", ab::Tensor::zeros({D, La}));
    a2_ = add_param("a2", ab::init_normal({La, D}, up, stream(1)));
    g1_ = add_param("g1", ab::Tensor::zeros({D, Lg}));
    g2_ = add_param("g2", ab::init_normal({Lg, D}, up, stream(2)));
    k_k_ = add_param("k_k", kk);
    k_a_ = add_param("k_a", ab::Tensor::full({D}, 1.02f));
    r_k_ = add_param("r_k", ab::Tensor::full({H_, N}, -0.04f));
    const float s = 1.f / std::sqrt(float(D));
    wr_ = add_param("receptance", ab::init_uniform({D, D}, 0.5f * s, stream(3)));
    wk_ = add_param("key", ab::init_uniform({D, D}, 0.05f * s, stream(4)));
    wv_ = add_param("value", ab::init_uniform({D, D}, 0.5f * s, stream(5)));
    wo_ = add_param("output", ab::init_xavier_uniform(D, D, stream(6)));
    ln_w_ = add_param("ln_x_weight", ab::Tensor::full({H_, N}, 1.f));
    ln_b_ = add_param("ln_x_bias", ab::Tensor::zeros({H_, N}));
    ln_one_ = ab::Tensor::full({N}, 1.f);
    ln_zero_ = ab::Tensor::zeros({N});
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "rwkv7", "recurrent",
        "RWKV-7 Goose time mixing: generalised delta rule, per-channel decay, vector in-context learning rate",
        "Peng et al. 2025, RWKV-7 \"Goose\" with Expressive Dynamic State Evolution (arXiv 2503.14456)",
        {
            ab::int_param("chunk", 16, "chunk length of the chunked DPLR kernel", 1, 4096),
            ab::int_param("decay_lora", 0, "width of the decay LoRA; 0 = the reference's max(32, 2.5 sqrt(D) to /32)", 0,
                          4096),
            ab::int_param("iclr_lora", 0, "width of the learning-rate LoRA; 0 = max(32, 2.5 sqrt(D) to /32)", 0, 4096),
            ab::int_param("gate_lora", 0, "width of the output-gate LoRA; 0 = max(32, 5 sqrt(D) to /32)", 0, 4096),
            ab::int_param("init_layers", 2, "model depth the reference's per-layer initialisation assumes", 1, 1024),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.check_params = ab::Json{{"chunk", 3}};  // several chunks, the last one partial, at N = 8
    s.cost = cost;
    return s;
  }

  static ab::Cost cost(const ab::CostArgs& c) {
    const auto& p = *c.params;
    const double B = c.batch, N = c.length, D = c.d_model, H = c.heads, dk = D / H;
    const double Lw = double(lora_width(p.at("decay_lora").get<int64_t>(), 2.5, int64_t(D)));
    const double La = double(lora_width(p.at("iclr_lora").get<int64_t>(), 2.5, int64_t(D)));
    const double Lg = double(lora_width(p.at("gate_lora").get<int64_t>(), 5.0, int64_t(D)));
    const double C = std::min<double>(N, double(p.at("chunk").get<int64_t>()));
    // Kernel per position of one head, forward, multiply-adds: A~ S0, Q~ S0 and the rank-2C state
    // update (4 dk dv); the four pairwise matrices (C / 2 pairs, 6 dk each incl. the decay
    // products); the substitution and Q_b U + Q_k V (2 C dv).
    const double mix = (c.causal ? 1 : 2) * N * 2 * (4 * dk * dk + 3 * C * dk + 2 * C * dk);
    ab::Cost r;
    r.flops = 2 * B * N * D * (4 * D + 2 * (Lw + La + Lg)) + B * H * mix + 40 * B * N * D;
    // Saved floats per position: the mixing chain (about 26 D: shifted x, six mixed inputs, r, k,
    // v, the LoRA hiddens and activations, kk before/after the norm, the modified k, a, b, log w,
    // the norm's input/output, the bonus, the gate) plus the LoRA hiddens.
    r.activation_bytes = 4 * B * N * (29 * D + 2 * (Lw + La + Lg));
    r.state_bytes = 4 * B * H * dk * dk + 4 * B * D;
    // Backward peak: six input-gradient tensors and the chunk-start states of the kernel, the
    // parameter gradients, on top of what is saved.
    const double nc = std::ceil(N / C);
    r.peak_bytes = r.activation_bytes + 4 * B * N * 12 * D + 4 * B * H * nc * dk * dk + 8 * D * (4 * D + 2 * (Lw + La + Lg));
    return r;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x_in, const ab::MixerContext& ctx) override {
    const int64_t B = x_in.dim(0), N = x_in.dim(1);
    const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {B, N});  // undefined: no mask
    const ab::Var x = ctx.key_mask ? ab::mul(x_in, ab::Var(keep.reshape({B, N, 1}))) : x_in;
    // shift(x)_t = x_{t-1}, zero at t = 0
    const ab::Var shifted =
        N > 1 ? ab::concat({ab::Var(ab::Tensor::zeros({B, 1, D_})), ab::slice(x, 1, 0, N - 1)}, 1)
              : ab::Var(ab::Tensor::zeros({B, 1, D_}));
    auto mix = [&](const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::Var& a, const ab::Var& b,
                   const ab::Var& g) {
      ab::DplrDeltaRuleOptions o = opt_;
      const ab::Var fwd = ab::dplr_delta_rule(q, k, v, a, b, g, o);
      if (ctx.causal) return fwd;
      o.reverse = true;
      return ab::add(fwd, ab::dplr_delta_rule(q, k, v, a, b, g, o));
    };
    return run(x, shifted, ctx.key_mask ? &keep : nullptr, mix);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<Rwkv7State>(batch, H_, N_, D_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<Rwkv7State&>(state);
    auto mix = [&](const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::Var& a, const ab::Var& b,
                   const ab::Var& g) {
      return ab::Var(st.s.step(q.value(), k.value(), v.value(), a.value(), b.value(), g.value()));
    };
    const ab::Tensor y = run(ab::Var(x_t), ab::Var(st.prev), nullptr, mix).value();
    st.prev = x_t.clone();
    return y;
  }

 private:
  using MixFn = std::function<ab::Var(const ab::Var&, const ab::Var&, const ab::Var&, const ab::Var&, const ab::Var&,
                                      const ab::Var&)>;

  ab::RngStream stream(uint64_t which) const { return ab::RngStream(seed_, ab::Purpose::init, 1000 + layer_, which); }

  // x, shifted: [B, n, D]; keep: [B, n] flags or null -> [B, n, D]
  ab::Var run(const ab::Var& x, const ab::Var& shifted, const ab::Tensor* keep, const MixFn& mix) const {
    using namespace ab;
    const int64_t B = x.dim(0), n = x.dim(1);
    const Var xx = sub(shifted, x);
    Var xi[6];
    for (int i = 0; i < 6; ++i) xi[i] = add(x, mul(xx, mu_[i]));
    auto heads = [&](const Var& t) { return permute(reshape(t, {B, n, H_, N_}), {0, 2, 1, 3}); };  // -> [B, H, n, N]
    auto tanh = [](const Var& t) { return add_scalar(scale(sigmoid(scale(t, 2.f)), 2.f), -1.f); };
    const Var r = linear(xi[0], wr_);
    const Var w = add(w0_, linear(tanh(linear(xi[1], w1_)), w2_));
    Var k = linear(xi[2], wk_);
    const Var v = linear(xi[3], wv_);
    const Var a = sigmoid(add(a0_, linear(linear(xi[4], a1_), a2_)));
    const Var g = linear(sigmoid(linear(xi[5], g1_)), g2_);
    const Var kk = l2_normalize(heads(mul(k, k_k_)));  // the removal key [B, H, n, N]
    k = mul(k, add_scalar(mul(add_scalar(a, -1.f), k_a_), 1.f));  // k o (1 + (a - 1) o k_a)
    Var log_w = heads(scale(sigmoid(w), -std::exp(-0.5f)));
    Var b = mul(kk, heads(a));
    if (keep) {  // padded positions: w = 1 and no write (k = 0 there already: x is zeroed)
      const Var f(keep->reshape({B, 1, n, 1}));
      log_w = mul(log_w, f);
      b = mul(b, f);
    }
    const Var o = mix(heads(r), heads(k), heads(v), scale(kk, -1.f), b, log_w);  // [B, H, n, N]
    // GroupNorm per head (normalise over the head's channels, then a per-channel affine)
    Var y = layer_norm(permute(o, {0, 2, 1, 3}), Var(ln_one_), Var(ln_zero_), 64e-5f);  // [B, n, H, N]
    y = add(mul(y, ln_w_), ln_b_);
    // the bonus: the current token's own k v^T read by r with the per-channel weight r_k
    const Shape hs{B, n, H_, N_};
    const Var bonus = sum_dim(mul(mul(reshape(r, hs), reshape(k, hs)), r_k_), 3, true);  // [B, n, H, 1]
    y = add(y, mul(bonus, reshape(v, hs)));
    return linear(mul(reshape(y, {B, n, D_}), g), wo_);
  }

  int64_t D_, H_, N_ = 0;
  uint64_t seed_;
  int layer_;
  ab::DplrDeltaRuleOptions opt_;
  ab::Tensor ln_one_, ln_zero_;  // the norm's unit affine (the learned one is per channel, [H, N])
  ab::Var mu_[6], w0_, w1_, w2_, a0_, a1_, a2_, g1_, g2_, k_k_, k_a_, r_k_, wr_, wk_, wv_, wo_, ln_w_, ln_b_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Rwkv7);
