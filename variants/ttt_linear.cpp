// ttt_linear — TTT-Linear: the hidden state is the weight of a linear model, trained at test time by
// gradient steps on a self-supervised reconstruction loss, with mini-batch TTT in its dual form.
// Sun, Li, Geng, Hua, Wang, Dubois, Chen, Dai, Koyejo, Hashimoto, Guestrin 2024, "Learning to (Learn
// at Test Time): RNNs with Expressive Hidden States"; follows test-time-training/ttt-lm-pytorch@6990c68
// ttt.py (TTTBase, TTTLinear, dual form). Per head (d = head_dim), inner model and loss
//   f(x; W, b) = x + LN(x W + b)                  (LN with learned per-head gamma, beta; eps 1e-6)
//   l_j(W, b) = 1/2 |gamma LN(k_j W + b) + beta - (v_j - k_j)|^2
// and in every mini-batch of K tokens starting from (W0, b0), token i (0-based in the mini-batch) uses
//   W_i = W0 - tok_i sum_{j <= i} lr_j grad_W l_j(W0, b0),   b_i likewise,   out_i = q_i + LN(q_i W_i + b_i)
//   tok_i = max(1/(i+1) + tok_bias_i, 0),   lr_j = base_lr sigmoid(x_j . w_lr,h + b_lr,h) / d,
// and the next mini-batch starts from W_{K-1}, b_{K-1}. Dual form (what is computed here): with
// G = dl/dZ at Z = K W0 + b0 (the closed-form LayerNorm-L2 gradient, rows g_j), eta_ij = tok_i lr_j
// for j <= i,
//   Zbar = Q W0 - (eta o tril(Q K^T)) G + b0 - eta G,   W_last = W0 - K^T (eta_{K-1,:}^T o G)
// (the same numbers as the per-token primal form, without materialising W_i). A final partial
// mini-batch uses the first r entries of tok. Then y = W_o PostLN(concat heads). W1 ~ N(0, 0.02),
// b1 = 0, w_lr ~ N(0, 0.02), b_lr = 0 as the reference.
// Deliberate differences: no RoPE on q, k inside the mini-batch (the model supplies positions), no
// Mamba-backbone gate or pre-convolution (use_gate = share_qk = pre_conv = False, the reference's
// defaults); padded tokens get lr = 0 (they do not train W).
// Time O(B H N (d^2 + K d)); the scan over mini-batches is sequential (autograd ops per mini-batch).
// TTT is causal by construction; the bidirectional form is the same computation.
// Decode: W0, b0 and the running sums G_W = sum lr_j k_j^T g_j, G_b of the current mini-batch
// (2 (d^2 + d) floats per head), O(d^2) per token.
// Capabilities: causal, bidirectional, padding mask, decode.
#include <fmt/format.h>

#include <cmath>

#include "attnbench/variant.hpp"

namespace {

constexpr float kLnEps = 1e-6f;

// Row statistics of LayerNorm over the last axis: x_hat and 1/std.
struct Normalised {
  ab::Var xhat, rstd;
};
Normalised normalise(const ab::Var& z) {
  const int last = z.rank() - 1;
  const ab::Var xc = ab::sub(z, ab::mean_dim(z, last, true));
  const ab::Var rstd = ab::rsqrt(ab::add_scalar(ab::mean_dim(ab::mul(xc, xc), last, true), kLnEps));
  return {ab::mul(xc, rstd), rstd};
}

// gamma LN(z) + beta
ab::Var ln(const ab::Var& z, const ab::Var& gamma, const ab::Var& beta) {
  return ab::add(ab::mul(normalise(z).xhat, gamma), beta);
}

// d/dz of 1/2 |gamma LN(z) + beta - target|^2, row-wise (closed form, differentiable by autograd):
//   gx = (gamma LN(z) + beta - target) gamma,  g = (gx - mean(gx) - x_hat mean(gx x_hat)) / std
ab::Var ln_l2_grad(const ab::Var& z, const ab::Var& target, const ab::Var& gamma, const ab::Var& beta) {
  const int last = z.rank() - 1;
  const Normalised n = normalise(z);
  const ab::Var gx = ab::mul(ab::sub(ab::add(ab::mul(n.xhat, gamma), beta), target), gamma);
  const ab::Var c = ab::add(ab::mean_dim(gx, last, true), ab::mul(n.xhat, ab::mean_dim(ab::mul(gx, n.xhat), last, true)));
  return ab::mul(ab::sub(gx, c), n.rstd);
}

struct TttState final : ab::DecodeState {
  ab::Var w0, b0, gw, gb;  // [B, H, d, d], [B, H, 1, d], running sums of this mini-batch
  int64_t position = 0;
  int64_t bytes() const override { return 4 * (w0.value().numel() + b0.value().numel() + gw.value().numel() + gb.value().numel()); }
};

class TttLinear final : public ab::Mixer {
 public:
  explicit TttLinear(const ab::MixerConfig& cfg)
      : d_model_(cfg.d_model),
        heads_(cfg.heads),
        d_(cfg.d_model / cfg.heads),
        k_(cfg.params.at("mini_batch_size").get<int64_t>()),
        base_lr_(static_cast<float>(cfg.params.at("base_lr").get<double>())) {
    if (d_model_ % heads_ != 0)
      throw ab::UsageError(fmt::format("ttt_linear: d_model {} must be a multiple of heads {}", d_model_, heads_));
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    const int64_t D = d_model_, H = heads_, d = d_;
    wq_ = add_param("wq", ab::init_xavier_uniform(D, D, stream(0)));
    wk_ = add_param("wk", ab::init_xavier_uniform(D, D, stream(1)));
    wv_ = add_param("wv", ab::init_xavier_uniform(D, D, stream(2)));
    wo_ = add_param("wo", ab::init_xavier_uniform(D, D, stream(3)));
    lr_w_ = add_param("lr_weight", ab::init_normal({D, H}, 0.02f, stream(4)));
    lr_b_ = add_param("lr_bias", ab::Tensor::zeros({H}));
    tok_bias_ = add_param("token_idx_bias", ab::Tensor::zeros({k_}), Decay::none);
    w1_ = add_param("W1", ab::init_normal({1, H, d, d}, 0.02f, stream(5)));
    b1_ = add_param("b1", ab::Tensor::zeros({1, H, 1, d}));
    ttt_g_ = add_param("ttt_norm_weight", ab::Tensor::full({H, 1, d}, 1.f));
    ttt_b_ = add_param("ttt_norm_bias", ab::Tensor::zeros({H, 1, d}));
    post_g_ = add_param("post_norm_weight", ab::Tensor::full({D}, 1.f));
    post_b_ = add_param("post_norm_bias", ab::Tensor::zeros({D}));
    ab::Tensor tok = ab::Tensor::empty({k_, 1});
    for (int64_t i = 0; i < k_; ++i) tok[i] = 1.0f / static_cast<float>(i + 1);
    tok_base_ = tok;
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "ttt_linear", "recurrent",
        "TTT-Linear: a linear model (LN + residual) trained at test time, mini-batch TTT in dual form",
        "Sun et al. 2024, Learning to (Learn at Test Time): RNNs with Expressive Hidden States",
        {
            ab::int_param("mini_batch_size", 16, "TTT mini-batch size b (the paper: 16)", 1, 1024),
            ab::num_param("base_lr", 1.0, "base inner learning rate (ttt_base_lr; 1.0 for TTT-Linear)", 0.0, 100.0),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double K = static_cast<double>(a.params->at("mini_batch_size").get<int64_t>());
      ab::Cost c;
      // projections, the lr gate, per mini-batch Z = K W0, Q W0, W_last (3 GEMMs of d^2 per token),
      // Q K^T, eta G and (eta o A) G (K d per token each), the LayerNorms and their gradient.
      c.flops = 2 * B * N * D * D * 4 + 2 * B * N * D * H + B * N * H * (6 * d * d + 6 * K * d + 40 * d);
      // Saved (measured): about 11 B N D floats of projections, LayerNorm statistics and
      // gradients, 4 B H N K of the per-mini-batch [K, K] matrices (eta, Q K^T, their product),
      // and one inner state W, b per mini-batch (B H (d^2 + d) each of ceil(N / K)).
      c.activation_bytes = 4 * (11 * B * N * D + 4 * B * H * N * K + B * H * (d * d + d) * std::ceil(N / K));
      c.state_bytes = 4 * 2 * B * H * (d * d + d);
      c.peak_bytes = c.activation_bytes + 4 * 6.5 * B * N * D;  // plus the gradients in flight
      return c;
    };
    s.check_params = {{"mini_batch_size", 3}};  // several mini-batches and a remainder at N = 8
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1), H = heads_, d = d_;
    auto heads = [&](const ab::Var& t) { return ab::permute(ab::reshape(t, {B, N, H, d}), {0, 2, 1, 3}); };
    const ab::Var q = heads(ab::linear(x, wq_)), k = heads(ab::linear(x, wk_)), v = heads(ab::linear(x, wv_));
    ab::Var lr = learning_rates(x);  // [B, H, N]
    if (ctx.key_mask) lr = ab::mul(lr, ab::Var(ab::keep_flags(ctx.key_mask, {B, 1, N})));
    ab::Var w = ab::mul(w1_, ab::Var(ab::Tensor::full({B, 1, 1, 1}, 1.f)));  // [B, H, d, d]
    ab::Var b = ab::mul(b1_, ab::Var(ab::Tensor::full({B, 1, 1, 1}, 1.f)));  // [B, H, 1, d]
    std::vector<ab::Var> outs;
    for (int64_t s = 0; s < N; s += k_) {
      const int64_t n = std::min(k_, N - s);
      const ab::Var lr_c = ab::reshape(ab::slice(lr, 2, s, n), {B, H, 1, n});
      outs.push_back(mini_batch(ab::slice(q, 2, s, n), ab::slice(k, 2, s, n), ab::slice(v, 2, s, n), lr_c, w, b));
    }
    const ab::Var o = outs.size() == 1 ? outs[0] : ab::concat(outs, 2);  // [B, H, N, d]
    return finish(o, B, N);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto st = std::make_unique<TttState>();
    st->w0 = ab::mul(w1_, ab::Var(ab::Tensor::full({batch, 1, 1, 1}, 1.f)));
    st->b0 = ab::mul(b1_, ab::Var(ab::Tensor::full({batch, 1, 1, 1}, 1.f)));
    st->gw = ab::Var(ab::Tensor::zeros({batch, heads_, d_, d_}));
    st->gb = ab::Var(ab::Tensor::zeros({batch, heads_, 1, d_}));
    return st;
  }
  // x_t: [B, 1, D] -> [B, 1, D]: the primal form, one token at a time
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<TttState&>(state);
    const int64_t B = x_t.dim(0), H = heads_, d = d_, i = st.position % k_;
    const ab::Var x(x_t);
    auto heads = [&](const ab::Var& t) { return ab::reshape(t, {B, H, 1, d}); };
    const ab::Var q = heads(ab::linear(x, wq_)), k = heads(ab::linear(x, wk_)), v = heads(ab::linear(x, wv_));
    const ab::Var lr = ab::reshape(learning_rates(x), {B, H, 1, 1});
    const ab::Var g = ab::mul(ln_l2_grad(ab::add(ab::matmul(k, st.w0), st.b0), ab::sub(v, k), ttt_g_, ttt_b_), lr);
    st.gw = ab::add(st.gw, ab::matmul(k, g, true, false));  // += lr k^T g
    st.gb = ab::add(st.gb, g);
    const ab::Var tok = ab::relu(ab::add(ab::slice(ab::Var(tok_base_), 0, i, 1), ab::reshape(ab::slice(tok_bias_, 0, i, 1), {1, 1})));
    const ab::Var w = ab::sub(st.w0, ab::mul(st.gw, tok)), b = ab::sub(st.b0, ab::mul(st.gb, tok));
    const ab::Var o = ab::add(q, ln(ab::add(ab::matmul(q, w), b), ttt_g_, ttt_b_));  // [B, H, 1, d]
    if (++st.position % k_ == 0) {
      st.w0 = w;
      st.b0 = b;
      st.gw = ab::Var(ab::Tensor::zeros({B, H, d, d}));
      st.gb = ab::Var(ab::Tensor::zeros({B, H, 1, d}));
    }
    return finish(o, B, 1).value();
  }

 private:
  // x [B, N, D] -> lr [B, H, N] = base_lr sigmoid(x w_lr + b_lr) / d
  ab::Var learning_rates(const ab::Var& x) const {
    const ab::Var g = ab::sigmoid(ab::linear(x, lr_w_, lr_b_));  // [B, N, H]
    return ab::scale(ab::transpose(g, 1, 2), base_lr_ / static_cast<float>(d_));
  }

  // One mini-batch in dual form. q, k, v: [B, H, n, d], lr: [B, H, 1, n]; w [B, H, d, d] and
  // b [B, H, 1, d] are replaced by the state after the mini-batch. Returns [B, H, n, d].
  ab::Var mini_batch(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::Var& lr, ab::Var& w, ab::Var& b) {
    const int64_t n = q.dim(2);
    ab::Tensor tril = ab::Tensor::zeros({n, n});
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) tril[i * n + j] = 1.f;
    // eta_ij = tok_i lr_j for j <= i: [B, H, n, n]
    const ab::Var tok = ab::relu(ab::add(ab::slice(ab::Var(tok_base_), 0, 0, n), ab::reshape(ab::slice(tok_bias_, 0, 0, n), {n, 1})));
    const ab::Var eta = ab::mul(ab::mul(tok, lr), ab::Var(tril));
    const ab::Var g = ln_l2_grad(ab::add(ab::matmul(k, w), b), ab::sub(v, k), ttt_g_, ttt_b_);  // [B, H, n, d]
    const ab::Var attn = ab::matmul(q, k, false, true);                                            // [B, H, n, n]
    const ab::Var zbar = ab::add(ab::sub(ab::matmul(q, w), ab::matmul(ab::mul(eta, attn), g)),
                                 ab::sub(b, ab::matmul(eta, g)));
    // The state after the mini-batch: row n - 1 of eta.
    const ab::Var last = ab::transpose(ab::slice(eta, 2, n - 1, 1), 2, 3);  // [B, H, n, 1]
    const ab::Var lg = ab::mul(last, g);
    w = ab::sub(w, ab::matmul(k, lg, true, false));
    b = ab::sub(b, ab::sum_dim(lg, 2, true));
    return ab::add(q, ln(zbar, ttt_g_, ttt_b_));
  }

  // o [B, H, N, d] -> W_o PostLN(merged heads) [B, N, D]
  ab::Var finish(const ab::Var& o, int64_t B, int64_t N) const {
    const ab::Var merged = ab::reshape(ab::permute(o, {0, 2, 1, 3}), {B, N, d_model_});
    return ab::linear(ab::layer_norm(merged, post_g_, post_b_, kLnEps), wo_);
  }

  int64_t d_model_, heads_, d_, k_;
  float base_lr_;
  ab::Var wq_, wk_, wv_, wo_, lr_w_, lr_b_, tok_bias_, w1_, b1_, ttt_g_, ttt_b_, post_g_, post_b_;
  ab::Tensor tok_base_;  // [K, 1]: 1 / (i + 1)
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(TttLinear);
