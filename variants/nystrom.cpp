// nystrom — Nystromformer: softmax attention approximated through m landmarks with the Nystrom
// method. Xiong et al. 2021, "Nystromformer: A Nystrom-Based Algorithm for Approximating
// Self-Attention" (mlpen/Nystromformer).
//   q^ = q d^-1/4, k^ = k d^-1/4 (the 1/sqrt(d) scaling split between q and k, as in mlpen);
//   landmarks q~, k~ [m, d]: means of m contiguous segments [s N/m, (s+1) N/m) (N/m tokens each
//   when m divides N, as in mlpen; otherwise sizes differ by one, like adaptive average pooling in
//   xformers), mask-aware: the mean of the segment's real tokens, a zero landmark if it has none;
//   F = softmax(q^ k~^T) [N, m], A = softmax(q~ k~^T) [m, m], B~ = softmax(q~ k^^T + mask) [m, N];
//   out = F (A+ (B~ V)) + conv(V) with A+ by the iterative Moore-Penrose scheme
//   Z0 = A^T / max_col_sum(A) (the rows of A sum to 1),
//   Z_{k+1} = Z_k (13 I - A Z_k (15 I - A Z_k (7 I - A Z_k))) / 4,
//   and conv an optional depthwise convolution of V along the sequence per head ([H, K] weights,
//   shared by the head's channels; mlpen/xformers LRA: K = 35), applied to the masked values.
// m = min(landmarks, N). No shortcut when m = N (mlpen switches to exact softmax there): the
// approximation is computed, and equals softmax attention once the pseudo-inverse has converged.
// Reference quirk (variants.md 3.8, item 6): mlpen's "original" Z0 coefficient is the maximum over
// the whole batch, which couples the examples of a batch; `pinv_init = per_matrix` (default) uses
// each matrix's own coefficient (mlpen's corrected option), `global` reproduces the original. The
// coefficient is differentiated like the maximum it is (through the arg-max column), the iterations
// exactly, so the gradient is that of the computed (unconverged) approximation.
// Padding mask: q, k, v are zeroed at padded positions (as mlpen), landmarks average real tokens
// only, B~ masks padded keys, the conv sees zeroed values.
// Time O(B H (N m d + m^2 d + iterations m^3) + B N D K); memory O(B H N m + B H m^2 iterations).
// Capabilities: bidirectional, padding mask. Not causal (landmarks pool over future tokens).
#include <algorithm>
#include <cmath>
#include <vector>

#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

class Nystrom final : public ab::AttentionMixer {
 public:
  explicit Nystrom(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        landmarks_(cfg.params.at("landmarks").get<int64_t>()),
        iterations_(static_cast<int>(cfg.params.at("pinv_iterations").get<int64_t>())),
        global_init_(cfg.params.at("pinv_init").get<std::string>() == "global") {
    const int64_t K = cfg.params.at("conv_kernel").get<int64_t>();
    if (K > 0)
      conv_ = add_param("conv", ab::init_uniform({heads_, K}, 1.f / std::sqrt(static_cast<float>(K)),
                                                 ab::RngStream(cfg.seed, ab::Purpose::init, 2000 + cfg.layer, 7)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "nystrom", "low-rank", "Nystrom approximation of softmax attention with segment-mean landmarks",
        "Xiong et al. 2021, Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention",
        {ab::int_param("landmarks", 64, "landmarks m (paper LRA: 64; xformers LRA config: 128; capped at N)", 1, 65536),
         ab::int_param("pinv_iterations", 6, "iterations of the Moore-Penrose pseudo-inverse scheme (paper: 6)", 0,
                       1000),
         ab::int_param("conv_kernel", 35, "length of the depthwise value convolution (mlpen/xformers LRA: 35; 0 = off)",
                       0, 4097),
         ab::enum_param("pinv_init", "per_matrix", {"per_matrix", "global"},
                        "Z0 coefficient: each matrix's own 1/max column sum (mlpen corrected) or the batch-wide "
                        "maximum (mlpen original; couples the examples of a batch)")},
        {.causal = false, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double m = std::min<double>(static_cast<double>(a.params->at("landmarks").get<int64_t>()), N);
      const double it = static_cast<double>(a.params->at("pinv_iterations").get<int64_t>());
      const double K = static_cast<double>(a.params->at("conv_kernel").get<int64_t>());
      ab::Cost c;
      // projections + 4 N x m products + 2 m x m x d products + pinv + conv
      c.flops = 2 * B * N * D * D * 4 + 4 * 2 * B * N * m * D + 2 * 2 * B * H * m * m * d +
                it * 4 * 2 * B * H * m * m * m + 2 * B * N * D * K;
      // Saved: q^, k^, v (and merged heads): 4 B N D; F [B H N m] and B~ [B H m N]; the landmark
      // products (q~, k~, B~ V, Z W: 4 B H m d); A, A^T and the m x m iterates (Z, A Z and three
      // partial products per iteration, and the final Z: 3 + 5 it in all).
      c.activation_bytes =
          4 * (4 * B * N * D + 2 * B * H * N * m + 4 * B * H * m * d + (3 + 5 * it) * B * H * m * m);
      // Peak: the saved tensors, with the gradients of the two N x m kernels (2 B H N m), y, the
      // upstream gradient per head, dv and dWo.
      c.peak_bytes = c.activation_bytes + 4 * (3 * B * N * D + 2 * B * H * N * m + D * D);
      return c;
    };
    s.check_params = {{"landmarks", 4}, {"conv_kernel", 3}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3);
    const int64_t m = std::min(landmarks_, N);
    const float s4 = std::pow(static_cast<float>(d), -0.25f);
    ab::Var qs = ab::scale(q, s4), ks = ab::scale(k, s4), vm = v;
    // keep [B, 1, N, 1]: 1 for real tokens
    const ab::Tensor keep =
        ctx.key_mask ? ab::keep_flags(ctx.key_mask, {B, 1, N, 1}) : ab::Tensor::full({B, 1, N, 1}, 1.f);
    if (ctx.key_mask) {
      qs = ab::mul(qs, ab::Var(keep));
      ks = ab::mul(ks, ab::Var(keep));
      vm = ab::mul(vm, ab::Var(keep));
    }
    // Landmarks: mask-aware means of m contiguous segments [s N / m, (s + 1) N / m) -> [B, H, m, d];
    // inv_count [B, 1, m, 1] = 1 / (real tokens in the segment), 0 for a segment of padding only.
    ab::Tensor inv_count = ab::Tensor::empty({B, 1, m, 1});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < m; ++s) {
        float c = 0.f;
        for (int64_t n = s * N / m; n < (s + 1) * N / m; ++n) c += keep[b * N + n];
        inv_count[b * m + s] = c > 0.f ? 1.f / c : 0.f;
      }
    ab::Tensor select;  // [N, m] segment membership, when the segments are uneven
    if (N % m != 0) {
      select = ab::Tensor::zeros({N, m});
      for (int64_t s = 0; s < m; ++s)
        for (int64_t n = s * N / m; n < (s + 1) * N / m; ++n) select[n * m + s] = 1.f;
    }
    auto pool = [&](const ab::Var& x) {  // x: [B, H, N, d] (zero at padded positions)
      const ab::Var sums = N % m == 0
                               ? ab::sum_dim(ab::reshape(x, {B, H, m, N / m, d}), 3)
                               : ab::transpose(ab::linear(ab::transpose(x, 2, 3), ab::Var(select)), 2, 3);
      return ab::mul(sums, ab::Var(inv_count));
    };
    const ab::Var ql = pool(qs), kl = pool(ks);
    const ab::Var f = ab::softmax(ab::matmul(qs, kl, false, true));                   // [B, H, N, m]
    const ab::Var a = ab::softmax(ab::matmul(ql, kl, false, true));                   // [B, H, m, m]
    const ab::Var bt = ab::softmax(ab::matmul(ql, ks, false, true), ctx.key_mask);   // [B, H, m, N]
    const ab::Var w = ab::matmul(bt, vm);                                             // [B, H, m, d]
    const ab::Var z = pinv(a);                                                        // [B, H, m, m]
    ab::Var out = ab::matmul(f, ab::matmul(z, w));                                    // [B, H, N, d]
    if (conv_.defined()) out = ab::add(out, ab::sequence_depthwise_conv(vm, conv_));
    return out;
  }

  // 1 / (maximum column sum) of a: [B, H, m, m] -> [B, H, 1, 1], per matrix or (global) the same
  // batch-wide value for every matrix. Differentiated like the maximum it is: the gradient goes to
  // the arg-max column (of the arg-max matrix, when global).
  static ab::Var inverse_max_column_sum(const ab::Var& a, bool global) {
    const int64_t BH = a.dim(0) * a.dim(1), m = a.dim(2);
    const ab::Tensor& av = a.value();
    std::vector<int64_t> arg(static_cast<size_t>(BH));
    std::vector<float> best(static_cast<size_t>(BH));
    int64_t gmat = 0;
    for (int64_t i = 0; i < BH; ++i) {
      best[i] = -1.f;
      for (int64_t j = 0; j < m; ++j) {
        float s = 0.f;
        for (int64_t r = 0; r < m; ++r) s += av[(i * m + r) * m + j];
        if (s > best[i]) best[i] = s, arg[i] = j;
      }
      if (best[i] > best[gmat]) gmat = i;
    }
    ab::Tensor coef = ab::Tensor::empty({a.dim(0), a.dim(1), 1, 1});
    for (int64_t i = 0; i < BH; ++i) coef[i] = 1.f / best[global ? gmat : i];
    ab::Tensor cv = coef;
    return ab::make_op_result(std::move(coef), {a}, [ga = a.sink(), cv, arg, gmat, global, BH, m,
                                                     shape = a.shape()](const ab::Tensor& g) {
      ab::Tensor da = ab::Tensor::zeros(shape);
      double gsum = 0;
      for (int64_t i = 0; i < BH; ++i) gsum += g[i];
      for (int64_t i = 0; i < BH; ++i) {
        if (global && i != gmat) continue;
        // d(1/s)/ds = -1/s^2, s = sum_r a[r, arg]
        const float gi = static_cast<float>(global ? gsum : g[i]) * -cv[i] * cv[i];
        for (int64_t r = 0; r < m; ++r) da[(i * m + r) * m + arg[i]] = gi;
      }
      ga.accumulate(da);
    });
  }

  // Iterative Moore-Penrose pseudo-inverse of a: [B, H, m, m] (rows summing to 1).
  ab::Var pinv(const ab::Var& a) const {
    // Z0 = a^T / max column sum (per matrix, or the maximum over the batch)
    ab::Var z = ab::mul(ab::transpose(a, 2, 3), inverse_max_column_sum(a, global_init_));
    const int64_t m = a.dim(2);
    auto eye = [&](float s) {
      ab::Tensor t = ab::Tensor::zeros({m, m});
      for (int64_t i = 0; i < m; ++i) t[i * m + i] = s;
      return ab::Var(t);
    };
    const ab::Var i7 = eye(7.f), i15 = eye(15.f), i13 = eye(13.f);
    for (int it = 0; it < iterations_; ++it) {
      const ab::Var az = ab::matmul(a, z);
      ab::Var t = ab::sub(i7, az);
      t = ab::sub(i15, ab::matmul(az, t));
      t = ab::sub(i13, ab::matmul(az, t));
      z = ab::scale(ab::matmul(z, t), 0.25f);
    }
    return z;
  }

 private:
  int64_t landmarks_;
  int iterations_;
  bool global_init_;
  ab::Var conv_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Nystrom);
