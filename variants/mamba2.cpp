// mamba2 — Mamba-2's state-space duality (SSD) layer: a selective SSM with one scalar decay per head.
// Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
// Structured State Space Duality"; layout of mamba_ssm/modules/mamba2.py with one group (ngroups = 1).
//   z = x Wz, xs = x Wx [B, N, Di = expand D], Bt = x WB, Ct = x WC [B, N, d_state],
//   dt = x Wdt + dt_bias [B, N, Hm] (Hm = Di / headdim heads; model.heads is not used),
//   xs, Bt, Ct <- SiLU(depthwise causal conv, d_conv taps, bias)   (one conv over the three in the
//   original: depthwise, so the same thing),
//   Delta = softplus(dt), A_h = -exp(A_log_h), per head h and position t:
//   S_t = exp(Delta_t A_h) S_{t-1} + Bt_t (Delta_t x_t)^T   [d_state, headdim],  y_t = S_t^T Ct_t + D_h x_t,
//   out = LayerNorm(y * SiLU(z)) Wout   (the original's gated RMSNorm, norm after the gate).
// Bt, Ct are shared by the heads (passed once to ab::gated_linear_attention, which sums their
// gradients over heads). Forms (`form`): chunked (default, the SSD chunked algorithm:
// intra-chunk quadratic with decays relative to the chunk start + state passing; O(N C (ds + P) +
// N ds P) per head; the kernel forms each chunk's C B^T once for all heads and runs every product
// as a batched oneDNN matmul, the heads' states side by side), parallel (the N x N mixing matrix
// L o C B^T, a reference), recurrent.
// Memory O(B N (Di + ds)); no per-position states.
// Init as mamba2.py: A_log = log U(a_init_min, a_init_max), dt_bias = softplus^-1(dt) with dt
// log-uniform in [dt_min, dt_max] (floor 1e-4), D = 1, conv U(+-1/sqrt(d_conv)); projections Xavier.
// Capabilities: causal with decoding (state: S [B, Hm, ds, P] and the last d_conv - 1 conv inputs of
// xs, Bt, Ct); bidirectional = centred conv, then the causal plus the anti-causal scan summed
// (the token's own term counts twice; not in the paper); padding mask (padded inputs are zeroed
// before the projections, their Bt and decays are zeroed, so they neither add to nor decay the state).
#include <cmath>
#include <functional>
#include <string>

#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

class Mamba2State final : public ab::DecodeState {
 public:
  Mamba2State(int64_t batch, int64_t heads, int64_t d_state, int64_t headdim, int64_t d_inner, int64_t taps)
      : ssm(batch, heads, d_state, headdim),
        conv{ab::ShortConvState(batch, d_inner, taps), ab::ShortConvState(batch, d_state, taps),
             ab::ShortConvState(batch, d_state, taps)} {}
  int64_t bytes() const override { return ssm.bytes() + conv[0].bytes() + conv[1].bytes() + conv[2].bytes(); }
  ab::GatedLinearState ssm;
  ab::ShortConvState conv[3];  // xs, Bt, Ct
};

class Mamba2 final : public ab::Mixer {
 public:
  explicit Mamba2(const ab::MixerConfig& cfg) : d_model_(cfg.d_model) {
    const auto& p = cfg.params;
    const int64_t D = d_model_;
    di_ = D * p.at("expand").get<int64_t>();
    P_ = p.at("headdim").get<int64_t>();
    ds_ = p.at("d_state").get<int64_t>();
    K_ = p.at("d_conv").get<int64_t>();
    if (di_ % P_ != 0)
      throw ab::UsageError("mamba2: expand * d_model = " + std::to_string(di_) + " must be a multiple of headdim = " +
                           std::to_string(P_));
    H_ = di_ / P_;
    opt_.form = ab::gla_form_from_string(p.at("form").get<std::string>());
    opt_.chunk = p.at("chunk").get<int64_t>();
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    wz_ = add_param("wz", ab::init_xavier_uniform(D, di_, stream(0)));
    w_[0] = add_param("wx", ab::init_xavier_uniform(D, di_, stream(1)));
    w_[1] = add_param("wB", ab::init_xavier_uniform(D, ds_, stream(2)));
    w_[2] = add_param("wC", ab::init_xavier_uniform(D, ds_, stream(3)));
    wdt_ = add_param("wdt", ab::init_xavier_uniform(D, H_, stream(4)));
    wout_ = add_param("wout", ab::init_xavier_uniform(di_, D, stream(5)));
    const float cb = 1.0f / std::sqrt(static_cast<float>(K_));
    const int64_t widths[3] = {di_, ds_, ds_};
    const char* names[3] = {"x", "B", "C"};
    for (int i = 0; i < 3; ++i) {
      cw_[i] = add_param(std::string("conv_") + names[i] + "_weight", ab::init_uniform({widths[i], K_}, cb, stream(6 + i)));
      cb_[i] = add_param(std::string("conv_") + names[i] + "_bias", ab::init_uniform({widths[i]}, cb, stream(9 + i)));
    }
    const double dt_min = p.at("dt_min").get<double>(), dt_max = p.at("dt_max").get<double>();
    const double a_min = p.at("a_init_min").get<double>(), a_max = p.at("a_init_max").get<double>();
    ab::Tensor dt_bias = ab::Tensor::empty({H_}), a_log = ab::Tensor::empty({H_});
    ab::RngStream r = stream(12);
    for (int64_t h = 0; h < H_; ++h) {
      double dt = std::exp(std::log(dt_min) + r.uniform_double() * (std::log(dt_max) - std::log(dt_min)));
      dt = std::max(dt, 1e-4);
      dt_bias[h] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus^-1(dt)
      a_log[h] = static_cast<float>(std::log(a_min + r.uniform_double() * (a_max - a_min)));
    }
    dt_bias_ = add_param("dt_bias", dt_bias, Decay::none);
    a_log_ = add_param("A_log", a_log, Decay::none);
    d_skip_ = add_param("D", ab::Tensor::full({H_}, 1.f), Decay::none);
    norm_w_ = add_param("norm_weight", ab::Tensor::full({di_}, 1.f));
    norm_b_ = add_param("norm_bias", ab::Tensor::zeros({di_}));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "mamba2", "state-space",
        "Mamba-2 SSD: selective SSM with a scalar decay per head, chunked scan, short conv, gated norm",
        "Dao & Gu 2024, Transformers are SSMs (Mamba-2, structured state space duality)",
        {
            ab::enum_param(
                "form", "chunked", {"chunked", "parallel", "recurrent"},
                "computation of the scan: chunked (SSD, production), parallel (N x N), recurrent; equal results"),
            ab::int_param("chunk", 64, "chunk length of the chunked form (mamba2.py: 256)", 1, 4096),
            ab::int_param("d_state", 32, "state size per head (mamba2.py: 128; smaller for CPU)", 1, 256),
            ab::int_param("headdim", 16, "channels per head; expand * d_model must be a multiple (mamba2.py: 64)", 1,
                          256),
            ab::int_param("expand", 2, "inner width as a multiple of d_model", 1, 4),
            ab::int_param("d_conv", 4, "taps of the short depthwise convolution", 1, 8),
            ab::num_param("dt_min", 1e-3, "smallest initial step size", 1e-5, 1.0),
            ab::num_param("dt_max", 1e-1, "largest initial step size", 1e-5, 1.0),
            ab::num_param("a_init_min", 1.0, "-A_h is initialised uniform in [a_init_min, a_init_max]", 1e-3, 100.0),
            ab::num_param("a_init_max", 16.0, "see a_init_min", 1e-3, 100.0),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    // At N = 8, D = 16: several chunks (the last partial), 4 heads of 8, a small state.
    s.check_params = ab::Json{{"chunk", 3}, {"headdim", 8}, {"d_state", 4}};
    s.cost = [](const ab::CostArgs& a) {
      const auto& p = *a.params;
      const double B = a.batch, N = a.length, D = a.d_model;
      const double Di = D * p.at("expand").get<int64_t>(), P = double(p.at("headdim").get<int64_t>());
      const double ds = double(p.at("d_state").get<int64_t>()), K = double(p.at("d_conv").get<int64_t>());
      const double H = Di / P;
      const std::string form = p.at("form").get<std::string>();
      const double C = std::min<double>(N, double(p.at("chunk").get<int64_t>()));
      const double dirs = a.causal ? 1 : 2;
      double mix = 0;  // per (batch, head, direction)
      if (form == "parallel") mix = N * N * (ds + P);
      else if (form == "recurrent") mix = 4 * N * ds * P;
      else mix = N * C * (ds + P) + 4 * N * ds * P;
      ab::Cost c;
      c.flops = 2 * B * N * D * (2 * Di + 2 * ds + H) + 2 * B * N * Di * D + 2 * B * N * (Di + 2 * ds) * K +
                dirs * B * H * mix + 15 * B * N * Di;
      // Saved (floats): xs, Bt, Ct before the conv (conv weight gradients) and after it (the SiLU's
      // input) and the SiLU outputs: 3 B N (Di + 2 ds); the step-size logits and their scaled
      // form, the permuted decays and Delta for the values (4 B N H); Delta x, the scan output,
      // z and SiLU(z), the gated output and the normalised output (6 B N Di; the skip reuses the
      // permuted xs) and the norm's statistics (2 B N).
      c.activation_bytes = 4 * (3 * B * N * (Di + 2 * ds) + 4 * B * N * H + 6 * B * N * Di + 2 * B * N);
      c.state_bytes = 4 * B * (H * ds * P + (K - 1) * (Di + 2 * ds));
      // Peak in the scan's backward, per direction: a D_in-wide gradient and, chunked, the SSD
      // path's buffers of all heads side by side (two [N, D_in], two chunk-state sets
      // [N / C, ds, D_in]), else the per-head gradients of the broadcast B and C ([B, H, N, ds])
      // on top of the saved tensors, and the projections' gradients; parallel: also the [N, N]
      // scores and their gradient of each running (batch, head) task (two).
      const double scan = form == "chunked" ? 2 * B * N * Di + 2 * B * std::ceil(N / C) * ds * Di : B * H * N * ds;
      c.peak_bytes = c.activation_bytes + 4 * (dirs * (B * N * Di + scan) + 4 * D * D);
      if (form == "parallel") c.peak_bytes += 4 * 2 * N * N;
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const bool causal = ctx.causal;
    auto conv = [&](int i, const ab::Var& in) { return ab::short_conv(in, cw_[i], cb_[i], causal); };
    auto mix = [&](const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::Var& g) {
      return ab::gated_linear_attention_mix(q, k, v, g, opt_, causal);
    };
    return run(x, ctx.key_mask, conv, mix);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<Mamba2State>(batch, H_, ds_, P_, di_, K_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<Mamba2State&>(state);
    auto conv = [&](int i, const ab::Var& in) {
      return ab::Var(st.conv[i].step(in.value(), cw_[i].value(), &cb_[i].value()));
    };
    auto mix = [&](const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::Var& g) {
      return ab::Var(st.ssm.step(q.value(), k.value(), v.value(), g.value()));
    };
    return run(ab::Var(x_t), nullptr, conv, mix).value();
  }

 private:
  using ConvFn = std::function<ab::Var(int, const ab::Var&)>;
  using MixFn = std::function<ab::Var(const ab::Var&, const ab::Var&, const ab::Var&, const ab::Var&)>;

  ab::Var run(const ab::Var& x_in, const ab::Tensor* key_mask, const ConvFn& conv, const MixFn& mix) {
    const int64_t B = x_in.dim(0), N = x_in.dim(1);
    const ab::Tensor keep = ab::keep_flags(key_mask, {B, N});  // undefined: no mask
    const ab::Var x = key_mask ? ab::mul(x_in, ab::Var(keep.reshape({B, N, 1}))) : x_in;
    const ab::Var z = ab::linear(x, wz_);  // [B, N, Di]
    ab::Var u[3];                          // xs [B, N, Di], Bt, Ct [B, N, ds]
    for (int i = 0; i < 3; ++i) u[i] = ab::silu(conv(i, ab::linear(x, w_[i])));
    const ab::Var delta = ab::softplus(ab::linear(x, wdt_, dt_bias_));  // [B, N, Hm]
    const ab::Var a = ab::scale(ab::exp(a_log_), -1.f);                  // A [Hm]
    ab::Var log_alpha = ab::permute(ab::mul(delta, a), {0, 2, 1});        // [B, Hm, N]
    const ab::Var xh = ab::permute(ab::reshape(u[0], {B, N, H_, P_}), {0, 2, 1, 3});  // [B, Hm, N, P]
    const ab::Var v = ab::mul(xh, ab::reshape(ab::permute(delta, {0, 2, 1}), {B, H_, N, 1}));
    ab::Var k = ab::reshape(u[1], {B, 1, N, ds_});  // shared by the heads
    const ab::Var q = ab::reshape(u[2], {B, 1, N, ds_});
    if (key_mask) {
      k = ab::mul(k, ab::Var(keep.reshape({B, 1, N, 1})));
      log_alpha = ab::mul(log_alpha, ab::Var(keep.reshape({B, 1, N})));
    }
    ab::Var y = mix(q, k, v, log_alpha);                                  // [B, Hm, N, P]
    y = ab::add(y, ab::mul(xh, ab::reshape(d_skip_, {H_, 1, 1})));
    y = ab::reshape(ab::permute(y, {0, 2, 1, 3}), {B, N, di_});           // [B, N, Di]
    y = ab::layer_norm(ab::mul(y, ab::silu(z)), norm_w_, norm_b_);
    return ab::linear(y, wout_);
  }

  int64_t d_model_, di_ = 0, P_ = 0, ds_ = 0, K_ = 0, H_ = 0;
  ab::GatedLinearAttentionOptions opt_;
  ab::Var wz_, w_[3], wdt_, wout_, cw_[3], cb_[3], dt_bias_, a_log_, d_skip_, norm_w_, norm_b_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Mamba2);
