// lmu — the Legendre Memory Unit as LMUFormer's token mixer: a fixed LTI memory (the Legendre delay
// network, ZOH-discretised) of a learned scalar projection of every token, applied as a causal
// convolution by FFT (the parallel training form), then a ReLU layer over [memory, input].
// Liu et al. 2024, "LMUFormer: Low Complexity Yet Powerful Spiking Model With Legendre Memory Units"
// (ICLR); Voelker et al. 2019 (LMU); follows zeyuliu1037/LMUFormer@3bf561f src/blocks/lmu_cell.py
// (LMUFFTCell) and src/blocks/lmu.py (LMU, non-spiking):
//   A_ij = (2i + 1)/theta * (-1 if i < j else (-1)^(i - j + 1)),  B_i = (2i + 1)/theta * (-1)^i
//   (Abar, Bbar) = ZOH(A, B, dt = 1)          (scipy cont2discrete 'zoh')
//   u_t = relu(w_u . x_t + b_u)               (one scalar per token)
//   m_t = Abar m_{t-1} + Bbar u_t  =  sum_{s <= t} H_{t-s} u_s,  H_l = Abar^l Bbar   [memory_size]
//   h_t = relu(W_h [m_t; x_t] + b_h),  y_t = W_p h_t + b_p   (the 1x1 proj_conv)
// memory_size = d_model and theta = the sequence length (128 there) by default, as LMU does.
// Deliberate differences: the BatchNorm after proj_conv is left out (normalisation is the model's);
// theta defaults to the model's max_length. A and B are fixed (buffers, not trained).
// Abar and Bbar: the exponential of the augmented matrix [[A, B], [0, 0]] by scaling and squaring
// (Taylor, in double); H by doubling, H[:, 2^k + l] = Abar^(2^k) H[:, l]; both computed once per
// (memory_size, theta, length) and shared by every layer and instance.
// Time O(B q M log M) for the convolution (M ~ 2N) + O(B N D (q + 2D)) for the linears.
// The memory is causal; the bidirectional form is the same computation (as in LMUFormer, whose
// classifier reads every position). Decode: the recurrence, O(q^2) per token, state q floats.
// Capabilities: causal, bidirectional, padding mask (u is zeroed at padded tokens), decode.
#include <fmt/format.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"

namespace {

using Mat = std::vector<double>;  // row-major n x n

// c = a b for n x n row-major matrices (rows in parallel; each row by one thread: deterministic).
Mat matmul_sq(const Mat& a, const Mat& b, int64_t n) {
  Mat c(static_cast<size_t>(n * n), 0.0);
  ab::parallel_for(n, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t k = 0; k < n; ++k) {
        const double aik = a[i * n + k];
        if (aik == 0.0) continue;
        for (int64_t j = 0; j < n; ++j) c[i * n + j] += aik * b[k * n + j];
      }
  });
  return c;
}

// The discretised Legendre memory: Abar [q, q], Bbar [q] and the impulse response H [q, L].
struct LegendreMemory {
  int64_t q = 0, length = 0;
  std::vector<float> abar, bbar, h;
};

LegendreMemory make_memory(int64_t q, double theta, int64_t length) {
  // expm([[A, B], [0, 0]]) = [[Abar, Bbar], [0, 1]] for dt = 1.
  const int64_t n = q + 1;
  Mat z(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < q; ++i) {
    const double r = (2.0 * i + 1.0) / theta;
    for (int64_t j = 0; j < q; ++j) z[i * n + j] = r * (i < j ? -1.0 : ((i - j + 1) % 2 == 0 ? 1.0 : -1.0));
    z[i * n + q] = r * (i % 2 == 0 ? 1.0 : -1.0);
  }
  double norm = 0;  // max column sum
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::fabs(z[i * n + j]);
    norm = std::max(norm, s);
  }
  const int squarings = norm > 0.5 ? static_cast<int>(std::ceil(std::log2(norm / 0.5))) : 0;
  const double scale = std::ldexp(1.0, -squarings);
  for (double& v : z) v *= scale;
  // Taylor to order 16 by Horner: I + Z (I + Z/2 (I + Z/3 (...))); |Z| <= 1/2 makes the tail < 1e-20.
  Mat e(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) e[i * n + i] = 1.0;
  for (int k = 16; k >= 1; --k) {
    Mat t = matmul_sq(z, e, n);
    for (int64_t i = 0; i < n * n; ++i) e[i] = t[i] / k;
    for (int64_t i = 0; i < n; ++i) e[i * n + i] += 1.0;
  }
  for (int s = 0; s < squarings; ++s) e = matmul_sq(e, e, n);

  LegendreMemory mem;
  mem.q = q;
  mem.length = length;
  mem.abar.resize(static_cast<size_t>(q * q));
  mem.bbar.resize(static_cast<size_t>(q));
  Mat a(static_cast<size_t>(q * q));
  for (int64_t i = 0; i < q; ++i) {
    for (int64_t j = 0; j < q; ++j) a[i * q + j] = e[i * n + j];
    mem.bbar[i] = static_cast<float>(e[i * n + q]);
  }
  for (int64_t i = 0; i < q * q; ++i) mem.abar[i] = static_cast<float>(a[i]);
  // H [q, L] by doubling: columns [w, 2w) = P H[:, 0, w) with P = Abar^w.
  Mat h(static_cast<size_t>(q * length), 0.0);
  for (int64_t i = 0; i < q; ++i) h[i * length] = e[i * n + q];
  Mat p = a;
  for (int64_t w = 1; w < length; w *= 2) {
    const int64_t cols = std::min(w, length - w);
    ab::parallel_for(q, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t k = 0; k < q; ++k) {
          const double pik = p[i * q + k];
          for (int64_t l = 0; l < cols; ++l) h[i * length + w + l] += pik * h[k * length + l];
        }
    });
    if (2 * w < length) p = matmul_sq(p, p, q);
  }
  mem.h.resize(h.size());
  for (size_t i = 0; i < h.size(); ++i) mem.h[i] = static_cast<float>(h[i]);
  return mem;
}

// One memory per (q, theta, length), shared by every layer and instance.
std::shared_ptr<const LegendreMemory> legendre_memory(int64_t q, double theta, int64_t length) {
  static std::mutex mu;
  static std::map<std::tuple<int64_t, double, int64_t>, std::shared_ptr<const LegendreMemory>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{q, theta, length}];
  if (!slot) slot = std::make_shared<const LegendreMemory>(make_memory(q, theta, length));
  return slot;
}

struct LmuState final : ab::DecodeState {
  explicit LmuState(int64_t batch, int64_t q) : m(static_cast<size_t>(batch * q), 0.f) {}
  std::vector<float> m;  // [B, q]
  int64_t bytes() const override { return static_cast<int64_t>(m.size() * sizeof(float)); }
};

class Lmu final : public ab::Mixer {
 public:
  explicit Lmu(const ab::MixerConfig& cfg) : d_(cfg.d_model), max_length_(cfg.max_length) {
    const int64_t q = cfg.params.at("memory_size").get<int64_t>();
    const double theta = cfg.params.at("theta").get<double>();
    q_ = q > 0 ? q : d_;
    mem_ = legendre_memory(q_, theta > 0 ? theta : static_cast<double>(max_length_), max_length_);
    kernel_ = ab::Tensor::empty({q_, max_length_});
    std::copy(mem_->h.begin(), mem_->h.end(), kernel_.data());
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    // PyTorch's Linear default: U(+-1/sqrt(fan_in)) for weights and biases.
    auto bound = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
    w_u_ = add_param("w_u", ab::init_uniform({d_, 1}, bound(d_), stream(0)));
    b_u_ = add_param("b_u", ab::init_uniform({1}, bound(d_), stream(1)));
    w_h_ = add_param("w_h", ab::init_uniform({q_ + d_, d_}, bound(q_ + d_), stream(2)));
    b_h_ = add_param("b_h", ab::init_uniform({d_}, bound(q_ + d_), stream(3)));
    w_p_ = add_param("w_proj", ab::init_uniform({d_, d_}, bound(d_), stream(4)));
    b_p_ = add_param("b_proj", ab::init_uniform({d_}, bound(d_), stream(5)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "lmu", "state-space",
        "Legendre Memory Unit (LMUFormer): fixed ZOH Legendre LTI memory by FFT convolution, ReLU mix",
        "Liu et al. 2024, LMUFormer: Low Complexity Yet Powerful Spiking Model With Legendre Memory Units",
        {
            ab::int_param("memory_size", 0, "order q of the Legendre memory (0 = d_model, as LMUFormer)", 0, 4096),
            ab::num_param("theta", 0.0, "window theta of the delay network in tokens (0 = max_length)", 0.0, 1e9),
        },
        {.causal = true, .bidirectional = true, .padding_mask = true, .length_dependent = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model;
      const int64_t qp = a.params->at("memory_size").get<int64_t>();
      const double q = static_cast<double>(qp > 0 ? qp : a.d_model);
      const double M = static_cast<double>(ab::fft_conv_length(a.length, a.length)), Mh = M / 2 + 1;
      const double fft = 2.5 * M * std::log2(M);
      ab::Cost c;
      c.flops = 2 * B * N * D + q * fft                 // u, the kernel's spectrum
                + B * q * (2 * fft + 6 * Mh)             // the convolution of the broadcast u
                + 2 * B * N * (q + D) * D + 2 * B * N * D * D + 3 * B * N * D;  // W_h, proj, relu
      // Saved: relu(u)'s input, [m; x] for W_h (B N (q + D)), the ReLU's input and output h (2 B N D),
      // and the kernel spectrum [M/2+1, q] complex (fft_conv saves no input: the kernel is constant).
      c.activation_bytes = 4 * (B * N * (q + 3 * D + 3) + 2 * Mh * q);
      c.state_bytes = 4 * B * q;
      // Measured at D = q = 64: the saved tensors and their gradients, the spectrum and the
      // convolution's per-sequence buffers (about 1.5 M q).
      c.peak_bytes = 4 * (B * N * (3 * q + 4 * D) + 2 * Mh * q + 1.5 * M * q);
      return c;
    };
    s.check_params = {{"theta", 4.0}};  // a window comparable with the checks' 8 tokens
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1);
    if (N > max_length_)
      throw ab::UsageError(fmt::format("lmu: sequence length {} exceeds the model's max_length {}", N, max_length_));
    ab::Var u = ab::relu(ab::linear(x, w_u_, b_u_));  // [B, N, 1]
    if (ctx.key_mask) u = ab::mul(u, ab::Var(ab::keep_flags(ctx.key_mask, {B, N, 1})));
    // m = H * u: the scalar sequence broadcast to the q memory channels, one kernel row each
    const ab::Var uq = ab::mul(u, ab::Var(ab::Tensor::full({q_}, 1.f)));  // [B, N, q]
    const ab::Var m = ab::fft_conv(uq, ab::Var(kernel_));                   // [B, N, q]
    const ab::Var h = ab::relu(ab::linear(ab::concat({m, x}, 2), w_h_, b_h_));  // [B, N, D]
    return ab::linear(h, w_p_, b_p_);
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<LmuState>(batch, q_);
  }
  // x_t: [B, 1, D] -> [B, 1, D]; m <- Abar m + Bbar u_t
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    ab::NoGrad ng;
    auto& st = static_cast<LmuState&>(state);
    const int64_t B = x_t.dim(0), q = q_;
    const ab::Tensor u = ab::relu(ab::linear(ab::Var(x_t), w_u_, b_u_)).value();  // [B, 1, 1]
    ab::Tensor m = ab::Tensor::empty({B, 1, q});
    for (int64_t b = 0; b < B; ++b) {
      const float* prev = st.m.data() + b * q;
      for (int64_t i = 0; i < q; ++i) {
        double acc = double(mem_->bbar[i]) * u[b];
        for (int64_t j = 0; j < q; ++j) acc += double(mem_->abar[i * q + j]) * prev[j];
        m[b * q + i] = static_cast<float>(acc);
      }
    }
    std::copy(m.data(), m.data() + B * q, st.m.data());
    const ab::Var h = ab::relu(ab::linear(ab::concat({ab::Var(m), ab::Var(x_t)}, 2), w_h_, b_h_));
    return ab::linear(h, w_p_, b_p_).value();
  }

 private:
  int64_t d_, max_length_, q_ = 0;
  std::shared_ptr<const LegendreMemory> mem_;
  ab::Tensor kernel_;  // H [q, max_length], a constant
  ab::Var w_u_, b_u_, w_h_, b_h_, w_p_, b_p_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Lmu);
