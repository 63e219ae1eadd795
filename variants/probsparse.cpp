// probsparse — Informer's ProbSparse self-attention: only the u "active" queries attend; the others
// output the mean of the values.
// Zhou et al. 2021, "Informer: Beyond Efficient Transformer for Long Sequence Time-Series
// Forecasting" (AAAI), sec. 2 (eq. 4 and Lemma 1); as zhouhaoyi/Informer2020's ProbAttention:
//   1. per query i, sample U = factor * ceil(ln N) keys (uniformly with replacement; one draw of
//      indices shared by every batch row and head, as the reference's torch.randint);
//   2. sparsity measure M_i = max_j s_ij - (sum_j s_ij) / N over the sampled keys, s_ij = q_i . k_j;
//   3. the u = factor * ceil(ln N) queries of largest M attend fully: softmax(q k^T / sqrt(d)) v;
//   4. every other query outputs mean_j v_j.
// The samples are redrawn every forward from RngStream(seed, mixer, step, layer), so the mixer is
// deterministic for a given step. The selection is not differentiated (a discrete choice); the
// gradient flows through the selected rows' attention and through the mean.
// Deliberate differences: padded keys are left out of the measure, the softmax and the mean, and
// padded queries are never chosen (the reference has no key padding); no causal form: the reference's masked decoder form (cumsum of v
// for the rest) chooses its u queries from all of them, so whether query i attends depends on later
// tokens; that is not a causal mixer, and is not offered.
// Time O(B H (N U + u N) d) = O(B H N log N d); memory O(B H u N) for the selected rows' probabilities.
// Capabilities: bidirectional, padding mask.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"

namespace {

int64_t log_count(double factor, int64_t n) {
  const auto c = static_cast<int64_t>(factor * std::ceil(std::log(static_cast<double>(std::max<int64_t>(n, 1)))));
  return std::clamp<int64_t>(c, 1, std::max<int64_t>(n, 1));
}

// src [B, H, u, d], idx [B, H, u] distinct rows of [0, N) -> [B, H, N, d] with src in rows idx, 0
// elsewhere. Backward gathers the rows back. saves: idx.
ab::Var scatter_rows(const ab::Var& src, const std::vector<int32_t>& idx, int64_t N) {
  const int64_t B = src.dim(0), H = src.dim(1), u = src.dim(2), d = src.dim(3);
  ab::Tensor out = ab::Tensor::zeros({B, H, N, d});
  const ab::Tensor& s = src.value();
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t r = 0; r < u; ++r)
      std::copy(s.data() + (bh * u + r) * d, s.data() + (bh * u + r + 1) * d, out.data() + (bh * N + idx[bh * u + r]) * d);
  return ab::make_op_result(std::move(out), {src}, [gs = src.sink(), idx, B, H, u, d, N](const ab::Tensor& g) {
    ab::Tensor gsrc = ab::Tensor::empty({B, H, u, d});
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t r = 0; r < u; ++r)
        std::copy(g.data() + (bh * N + idx[bh * u + r]) * d, g.data() + (bh * N + idx[bh * u + r] + 1) * d,
                  gsrc.data() + (bh * u + r) * d);
    gs.accumulate(gsrc);
  });
}

class ProbSparse final : public ab::AttentionMixer {
 public:
  explicit ProbSparse(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), factor_(cfg.params.at("factor").get<double>()) {}

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "probsparse", "sparse",
        "the factor*ln N queries of largest sampled sparsity measure attend; the rest output mean(V) (Informer)",
        "Zhou et al. 2021, Informer (ProbSparse self-attention)",
        {ab::num_param("factor", 5.0, "c of u = c ceil(ln N) active queries and U = c ceil(ln N) sampled keys", 0.1,
                       1e6)},
        {.causal = false, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const double f = a.params->at("factor").get<double>();
      const double u = static_cast<double>(log_count(f, a.length));
      ab::Cost c;
      // projections + the measure (2 d per sampled pair) + the active rows (4 d per pair) + the mean
      c.flops = 2 * B * N * D * D * 4 + 2 * B * N * u * D + 4 * B * u * N * D + 2 * B * N * D;
      // Saved: q (gathered rows' input, B N D), k, v, the gathered scaled q rows (B u D), the active
      // rows' probabilities (B H u N), the merged heads (B N D).
      c.activation_bytes = 4 * (4 * B * N * D + B * u * D + B * H * u * N);
      // Peak at the softmax backward: probabilities, their gradient and dS (3 B H u N), plus the
      // B N D tensors alive then (y, q, k, v, dx) and dWo, dWv.
      c.peak_bytes = 4 * (3 * B * H * u * N + 5 * B * N * D + 2 * D * D);
      return c;
    };
    s.check_params = {{"factor", 1.0}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = head_dim_;
    const int64_t U = log_count(factor_, N), u = log_count(factor_, N);
    ab::RngStream rs(ctx.seed, ab::Purpose::mixer, static_cast<uint64_t>(ctx.step), static_cast<uint64_t>(ctx.layer));
    std::vector<int32_t> sample(static_cast<size_t>(N * U));  // [N, U]
    for (auto& j : sample) j = static_cast<int32_t>(rs.below(static_cast<uint64_t>(N)));
    const float* km = ctx.key_mask ? ctx.key_mask->data() : nullptr;  // [B, N] additive
    // M [B, H, N] from the sampled keys (no gradient: it only chooses).
    ab::Tensor M = ab::Tensor::empty({B, H, N});
    const float* qv = q.value().data();
    const float* kv = k.value().data();
    ab::parallel_for(B * H, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t bh = lo; bh < hi; ++bh)
        for (int64_t i = 0; i < N; ++i) {
          float mx = -INFINITY, sum = 0.f;
          if (km && ab::is_padded_key(km[(bh / H) * N + i])) {  // padded queries are never chosen
            M[bh * N + i] = -INFINITY;
            continue;
          }
          for (int64_t t = 0; t < U; ++t) {
            const int64_t j = sample[i * U + t];
            if (km && ab::is_padded_key(km[(bh / H) * N + j])) continue;
            float dot = 0.f;
            for (int64_t c = 0; c < d; ++c) dot += qv[(bh * N + i) * d + c] * kv[(bh * N + j) * d + c];
            mx = std::max(mx, dot);
            sum += dot;
          }
          M[bh * N + i] = mx == -INFINITY ? -INFINITY : mx - sum / static_cast<float>(N);
        }
    });
    std::vector<int32_t> top = ab::topk(ab::Var(M), u).indices;  // [B, H, u]
    // The active rows: softmax(q_top k^T / sqrt(d)) v.
    std::vector<int32_t> qidx(static_cast<size_t>(B * H * u * d));
    for (size_t r = 0; r < top.size(); ++r)
      std::fill(qidx.begin() + static_cast<int64_t>(r) * d, qidx.begin() + static_cast<int64_t>(r + 1) * d, top[r]);
    const ab::Var qtop = ab::scale(ab::gather(q, 2, qidx, {B, H, u, d}), 1.0f / std::sqrt(static_cast<float>(d)));
    const ab::Var p = ab::softmax(ab::matmul(qtop, k, false, true), ctx.key_mask);  // [B, H, u, N]
    const ab::Var active = scatter_rows(ab::matmul(p, v), top, N);
    // The others: the mean of the (real) values, [B, H, 1, d].
    ab::Var mean;
    if (ctx.key_mask) {
      const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {B, 1, N, 1});
      ab::Tensor inv = ab::Tensor::empty({B, 1, 1, 1});
      for (int64_t b = 0; b < B; ++b) {
        float n = 0.f;
        for (int64_t j = 0; j < N; ++j) n += keep[b * N + j];
        inv[b] = n > 0 ? 1.f / n : 0.f;
      }
      mean = ab::mul(ab::sum_dim(ab::mul(v, ab::Var(keep)), 2, true), ab::Var(inv));
    } else {
      mean = ab::mean_dim(v, 2, true);
    }
    ab::Tensor rest = ab::Tensor::full({B, H, N, 1}, 1.f);
    for (size_t r = 0; r < top.size(); ++r) rest[static_cast<int64_t>(r / u) * N + top[r]] = 0.f;
    return ab::add(active, ab::mul(mean, ab::Var(rest)));
  }

 private:
  double factor_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(ProbSparse);
