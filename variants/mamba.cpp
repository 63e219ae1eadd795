// mamba — the Mamba block (selective state-space model, S6) as the token mixer.
// Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"; reference code
// state-spaces/mamba `mamba_simple.Mamba` (E = expand, D_in = E D, n = d_state, R = dt_rank, K = d_conv):
//   u = x W_in_x, z = x W_in_z                      [B, N, D] -> [B, N, D_in] each (in_proj, no bias)
//   u = SiLU(causal depthwise conv_K(u) + conv_bias)  (ab::short_conv)
//   dt = u W_dt_in [B, N, R]; Bm = u W_B, Cm = u W_C [B, N, n]                (x_proj, no bias)
//   delta = dt W_dt [B, N, D_in]; A = -exp(A_log) [D_in, n]
//   y = selective_scan(u, delta, A, Bm, Cm, D, bias = dt_bias, softplus)      [B, N, D_in]
//   out = (y * SiLU(z)) W_out                        [B, N, D_in] -> [B, N, D]  (out_proj, no bias)
// Initialisation as the reference: in/x/out projections and the conv U(+-1/sqrt(fan_in)); W_dt
// U(+-R^-1/2); dt_bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max] (floored at 1e-4);
// A_log = log(1..n) (S4D-real); D = 1.
// Encoder form (ctx.causal false), parameter `bidirectional`:
//   "add"  (default) — bi-Mamba as in Vision Mamba (Vim, bimamba "v2") and Caduceus: a second,
//          reverse-direction branch with its own conv, x_proj, dt_proj, A_log and D runs on the
//          time-reversed u (so its conv and scan look at the future), and the two scan outputs are
//          summed before the shared SiLU(z) gate and out_proj. The reverse parameters are unused in
//          the causal form.
//   "none" — the forward (causal) scan only, as the original Mamba used on any input.
// Padding mask: u is zeroed at padded positions before the conv and after the SiLU, so padded
// tokens enter neither the conv window nor the state (their dt = softplus(dt_bias) only decays it).
// Time O(B N D_in (D + n + K)). Saved for backward: per branch B N (4 D_in + R + 2n) floats (conv
// input and output, u, delta, dt, Bm, Cm) plus the scan's checkpoints (B D_in n per `chunk` steps),
// and B N 4 D_in shared (z, SiLU(z), y, the gated y); never the [B, N, D_in, n] states.
// Decode: the conv history (ShortConvState, K - 1 inputs) and the SSM state h [B, D_in, n].
// Capabilities: causal, bidirectional, padding mask, decode.
#include <cmath>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "attnbench/kernels/selective_scan.hpp"
#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/variant.hpp"

namespace {

// "auto" -> ceil(D / 16); otherwise a positive integer.
int64_t resolve_dt_rank(const ab::Json& params, int64_t d_model) {
  const std::string v = params.at("dt_rank").get<std::string>();
  if (v == "auto") return (d_model + 15) / 16;
  size_t used = 0;
  long long r = 0;
  try {
    r = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || r < 1 || r > 4096)
    throw ab::UsageError(fmt::format("variant 'mamba' parameter 'dt_rank' must be \"auto\" or an integer in [1, 4096], got '{}'", v));
  return r;
}

// Time reversal of [B, N, C]; its own adjoint, saves nothing.
ab::Tensor flip_tensor(const ab::Tensor& x) {
  const int64_t B = x.dim(0), N = x.dim(1), C = x.dim(2);
  ab::Tensor y = ab::Tensor::empty(x.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      std::memcpy(y.data() + (b * N + t) * C, x.data() + (b * N + N - 1 - t) * C, static_cast<size_t>(C) * sizeof(float));
  return y;
}
ab::Var flip_time(const ab::Var& x) {
  return ab::make_op_result(flip_tensor(x.value()), {x}, [gx = x.sink()](const ab::Tensor& g) { gx.accumulate(flip_tensor(g)); });
}

class MambaState final : public ab::DecodeState {
 public:
  MambaState(int64_t batch, int64_t channels, int64_t taps, int64_t states)
      : conv(batch, channels, taps), ssm(batch, channels, states) {}
  int64_t bytes() const override { return conv.bytes() + ssm.bytes(); }
  ab::ShortConvState conv;
  ab::SelectiveScanState ssm;
};

class Mamba final : public ab::Mixer {
 public:
  explicit Mamba(const ab::MixerConfig& cfg)
      : d_model_(cfg.d_model),
        n_(cfg.params.at("d_state").get<int64_t>()),
        k_(cfg.params.at("d_conv").get<int64_t>()),
        inner_(cfg.params.at("expand").get<int64_t>() * cfg.d_model),
        rank_(resolve_dt_rank(cfg.params, cfg.d_model)),
        chunk_(cfg.params.at("chunk").get<int64_t>()),
        bidirectional_(cfg.params.at("bidirectional").get<std::string>() == "add") {
    const double dt_min = cfg.params.at("dt_min").get<double>(), dt_max = cfg.params.at("dt_max").get<double>();
    if (dt_min > dt_max)
      throw ab::UsageError(fmt::format("variant 'mamba': dt_min = {} must not exceed dt_max = {}", dt_min, dt_max));
    uint64_t which = 0;
    auto stream = [&] { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which++); };
    auto fan_in = [](int64_t f) { return 1.0f / std::sqrt(static_cast<float>(f)); };
    w_in_x_ = add_param("in_proj_x", ab::init_uniform({d_model_, inner_}, fan_in(d_model_), stream()));
    w_in_z_ = add_param("in_proj_z", ab::init_uniform({d_model_, inner_}, fan_in(d_model_), stream()));
    w_out_ = add_param("out_proj", ab::init_uniform({inner_, d_model_}, fan_in(inner_), stream()));
    for (int dir = 0; dir < (bidirectional_ ? 2 : 1); ++dir) {
      Branch& br = branch_[dir];
      const std::string p = dir == 0 ? "" : "rev_";
      br.conv_w = add_param(p + "conv_w", ab::init_uniform({inner_, k_}, fan_in(k_), stream()));
      br.conv_b = add_param(p + "conv_b", ab::init_uniform({inner_}, fan_in(k_), stream()));
      br.w_dt_in = add_param(p + "x_proj_dt", ab::init_uniform({inner_, rank_}, fan_in(inner_), stream()));
      br.w_b = add_param(p + "x_proj_b", ab::init_uniform({inner_, n_}, fan_in(inner_), stream()));
      br.w_c = add_param(p + "x_proj_c", ab::init_uniform({inner_, n_}, fan_in(inner_), stream()));
      br.w_dt = add_param(p + "dt_proj", ab::init_uniform({rank_, inner_}, fan_in(rank_), stream()));
      // dt log-uniform in [dt_min, dt_max], floored; bias = softplus^-1(dt) = dt + log(-expm1(-dt)).
      ab::Tensor bias = ab::Tensor::empty({inner_});
      ab::RngStream r = stream();
      for (int64_t c = 0; c < inner_; ++c) {
        double dt = std::exp(r.uniform_double() * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min));
        dt = std::max(dt, 1e-4);
        bias[c] = static_cast<float>(dt + std::log(-std::expm1(-dt)));
      }
      br.dt_bias = add_param(p + "dt_bias", bias, Decay::none);
      ab::Tensor a_log = ab::Tensor::empty({inner_, n_});
      for (int64_t c = 0; c < inner_; ++c)
        for (int64_t s = 0; s < n_; ++s) a_log[c * n_ + s] = std::log(static_cast<float>(s + 1));
      br.a_log = add_param(p + "A_log", a_log, Decay::none);
      br.d = add_param(p + "D", ab::Tensor::full({inner_}, 1.f), Decay::none);
    }
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "mamba", "state-space",
        "Mamba block: conv + selective scan (S6) + SiLU gate; bi-directional by a reverse branch",
        "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
        {
            ab::int_param("d_state", 16, "SSM state size n per channel", 1, 256),
            ab::int_param("d_conv", 4, "taps of the causal depthwise conv", 1, 32),
            ab::int_param("expand", 2, "inner width E: D_in = E * D", 1, 8),
            ab::enum_param("dt_rank", "auto", {},  // no choices: free text
                           "rank of the dt projection: \"auto\" = ceil(D / 16), or an integer in [1, 4096] "
                           "(as a string)"),
            ab::num_param("dt_min", 1e-3, "smallest initial step dt (log-uniform init)", 1e-5, 1.0),
            ab::num_param("dt_max", 1e-1, "largest initial step dt (log-uniform init)", 1e-5, 1.0),
            ab::enum_param("bidirectional", "add", {"add", "none"},
                           "encoder form: add = forward scan + reverse scan with its own conv/scan parameters, summed "
                           "(Vim/Caduceus bi-Mamba); none = the causal scan only"),
            ab::int_param("chunk", 64, "steps between the states the scan saves for backward (recomputed inside)", 1,
                          1 << 20),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model;
      const double n = a.params->at("d_state").get<int64_t>(), K = a.params->at("d_conv").get<int64_t>();
      const double Di = a.params->at("expand").get<int64_t>() * D;
      const double R = static_cast<double>(resolve_dt_rank(*a.params, a.d_model));
      const double L = a.params->at("chunk").get<int64_t>();
      const double branches = !a.causal && a.params->at("bidirectional").get<std::string>() == "add" ? 2 : 1;
      ab::Cost c;
      // Per branch: conv, x_proj, dt_proj, scan (exp + 3 multiply-adds per state), SiLU/softplus.
      const double branch = 2 * B * N * Di * K + 2 * B * N * Di * (R + 2 * n) + 2 * B * N * R * Di +
                            8 * B * N * Di * n + 10 * B * N * Di;
      // Shared: in_proj (x and z), out_proj, gate.
      c.flops = 2 * B * N * D * 2 * Di + 2 * B * N * Di * D + 6 * B * N * Di + branches * branch;
      // Saved per branch: conv input, conv output (SiLU input), u, dt [R], delta, Bm, Cm, the scan's
      // checkpoints and -exp(A_log) twice ([D_in, n]); shared: z, SiLU(z), the summed y, the gated y.
      c.activation_bytes =
          branches * (4 * B * N * (4 * Di + R + 2 * n) + ab::selective_scan_checkpoint_bytes(B, N, Di, n, L) +
                      4 * 2 * Di * n) +
          4 * 4 * B * N * Di;
      c.state_bytes = 4 * B * Di * (K - 1 + n);  // conv history + h
      // Peak in the scan's backward: the saved tensors with du, ddelta and the gate's gradient
      // ((branches + 1) B N D_in) and the in/out projections' gradients (2 D D_in).
      c.peak_bytes = c.activation_bytes + 4 * ((branches + 1) * B * N * Di + 2 * D * Di);
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1);
    const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {B, N, 1});  // 1 real, 0 padded; undefined: no mask
    const ab::Var u0 = ab::linear(x, w_in_x_);  // [B, N, D_in]
    const ab::Var z = ab::linear(x, w_in_z_);   // [B, N, D_in]
    ab::Var y = branch(branch_[0], u0, keep, false);
    if (!ctx.causal && bidirectional_) y = ab::add(y, branch(branch_[1], u0, keep, true));
    return ab::linear(ab::mul(y, ab::silu(z)), w_out_);  // [B, N, D_in] -> [B, N, D]
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<MambaState>(batch, inner_, k_, n_);
  }

  // x_t: [B, 1, D] -> [B, 1, D]; the forward branch only (decoding is causal).
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<MambaState&>(state);
    const Branch& br = branch_[0];
    const ab::Var xv(x_t);
    const ab::Tensor uc = st.conv.step(ab::linear(xv, w_in_x_).value(), br.conv_w.value(), &br.conv_b.value());
    const ab::Var u = ab::silu(ab::Var(uc));  // [B, 1, D_in]
    const ab::Tensor delta = ab::linear(ab::linear(u, br.w_dt_in), br.w_dt).value();
    const ab::Tensor A = ab::scale(ab::exp(br.a_log), -1.f).value();
    const ab::Tensor y = st.ssm.step(u.value(), delta, A, ab::linear(u, br.w_b).value(), ab::linear(u, br.w_c).value(),
                                     &br.d.value(), &br.dt_bias.value(), true);  // [B, 1, D_in]
    return ab::linear(ab::mul(ab::Var(y), ab::silu(ab::linear(xv, w_in_z_))), w_out_).value();
  }

 private:
  struct Branch {
    ab::Var conv_w, conv_b, w_dt_in, w_b, w_c, w_dt, dt_bias, a_log, d;
  };

  // u0: [B, N, D_in] (in_proj output) -> scan output [B, N, D_in] in the original time order.
  ab::Var branch(const Branch& br, const ab::Var& u0, const ab::Tensor& keep, bool reverse) const {
    ab::Var u = reverse ? flip_time(u0) : u0;
    const ab::Tensor kp = keep.defined() && reverse ? flip_tensor(keep) : keep;
    if (kp.defined()) u = ab::mul(u, ab::Var(kp));
    u = ab::silu(ab::short_conv(u, br.conv_w, br.conv_b, true));
    if (kp.defined()) u = ab::mul(u, ab::Var(kp));
    const ab::Var delta = ab::linear(ab::linear(u, br.w_dt_in), br.w_dt);  // [B, N, R] -> [B, N, D_in]
    ab::SelectiveScanOptions opt;
    opt.D = br.d;
    opt.delta_bias = br.dt_bias;
    opt.delta_softplus = true;
    opt.chunk = chunk_;
    const ab::Var A = ab::scale(ab::exp(br.a_log), -1.f);  // [D_in, n]
    ab::Var y = ab::selective_scan(u, delta, A, ab::linear(u, br.w_b), ab::linear(u, br.w_c), opt);
    return reverse ? flip_time(y) : y;
  }

  int64_t d_model_, n_, k_, inner_, rank_, chunk_;
  bool bidirectional_;
  ab::Var w_in_x_, w_in_z_, w_out_;
  Branch branch_[2];
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Mamba);
