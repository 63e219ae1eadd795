// sea — Sparse linear attention with an Estimated Attention mask (Lee et al., ICLR 2024, "SEA:
// Sparse Linear Attention with Estimated Attention Mask"; gmlwns2000/sea-attention, codename
// perlin, src/models/perlin_attention/attention.py and config.py).
//   1. Estimate (linear cost, no gradient): FAVOR+ features phi (positive softmax kernel, m random
//      features) of q and k, and the compressed attention matrix
//        A^[i, c] = phi(q_i) . sum_{j in col(c), j visible} phi(k_j)      [B, H, N, K]
//      i.e. the kernel linear-attention estimate of the attention mass query i puts on compressed
//      column c (up to a positive per-row factor, which top-k ignores). The K columns are the
//      sequence cut into K equal key ranges, col(c) = [floor(c N / K), floor((c + 1) N / K))
//      (K = min(columns, N)); causal: only keys j <= i, so the query's own column is a prefix sum.
//   2. Top-k per query row on A^: the kc = clamp(round(k K / N), 1, K) largest columns (the
//      reference's top_k = round(k T_M / T): about k keys per query), ties to the earlier column.
//   3. Interpolation back to N (the reference's resize_from_m_to_t): a selected column c lets the
//      query see every key of col(c); then exact sparse softmax attention over those keys
//      (ab::block_sparse_attention with one block list per (batch, head), key blocks = the
//      columns, query blocks of query_block rows; causal intersects with j <= i).
// Gradients: the top-k selection is a constant (non-differentiable, as in the paper); gradients
// flow through the sparse attention's q, k, v. The paper trains its estimator by distillation from
// a dense teacher (KL + MSE on the attention matrix, MSE on the output): that loss is LEFT OUT
// here (no teacher in a from-scratch run), so the estimator has no learned part.
// Deliberate differences from the reference code: (1) the reference turns the Performer output
// (with an interpolated identity as extra value columns) into A^ through a learned MLP + CNN
// decoder trained only by the distillation loss; without it those layers would get no gradient, so
// A^ here is the kernel estimate of the compressed attention directly; (2) the reference's default
// k_flatten = causal_batch shares the budget H kc over the heads of a query; here each head picks
// its own kc columns (the paper's per-row top-k); (3) the reference's output extras (a learned
// sigmoid row scaler, a mix with the average value, a LayerNorm "merge") are left out, so that sea
// with every column selected (k >= N) is exactly softmax attention; (4) the FAVOR+ projections are
// drawn once per layer (no redraw every 1000 steps).
// Time O(B H N m d) features + O(B H N m K) estimate + O(B H N k d) sparse attention; memory:
// O(B H N (m + K)) transient in the forward (features and A^, never saved), O(B N D + B H N) saved.
// Capabilities: bidirectional, causal, key padding (padded keys leave the column sums and are
// masked in the attention; a column with no unpadded key is never selected).
// No decode: the K columns partition the whole sequence, so the key range of a column depends on
// the final length N, which a token-by-token decode does not know (a decode with fixed-width
// columns would be a different mechanism).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/kernels/linear_attention.hpp"
#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"
#include "favor_projections.hpp"

namespace {

// Columns narrower than kNarrowColumn keys are grouped into key blocks of about kGroupKeys keys
// (1-key blocks at ListOps lengths were slow; element masks cost more than they save for columns of
// 8 keys and more: measured at N = 1024, K = 128).
constexpr int64_t kNarrowColumn = 4, kGroupKeys = 32;

struct SeaDims {
  int64_t K, k, m, qb;  // columns, keys per query, FAVOR features (0 = d ln d), query block
};

SeaDims dims_of(const ab::Json& p) {
  return {p.at("columns").get<int64_t>(), p.at("k").get<int64_t>(), p.at("num_features").get<int64_t>(),
          p.at("query_block").get<int64_t>()};
}

// The reference's nb_features = d ln d (performer_nb_factor 1) unless given.
int64_t features_of(const SeaDims& sd, int64_t d) {
  return sd.m > 0 ? sd.m : std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(d) * std::log(double(d))));
}

// Column c covers keys [bounds[c], bounds[c + 1]).
std::vector<int64_t> column_bounds(int64_t N, int64_t K) {
  std::vector<int64_t> b(static_cast<size_t>(K + 1));
  for (int64_t c = 0; c <= K; ++c) b[static_cast<size_t>(c)] = c * N / K;
  return b;
}

int64_t selected_columns(const SeaDims& sd, int64_t N) {
  const int64_t K = std::min(sd.K, N);
  return std::clamp<int64_t>(static_cast<int64_t>(std::llround(double(sd.k) * double(K) / double(N))), 1, K);
}

// Query-key pairs the sparse attention scores for one head, summed over the queries: each query
// sees about kc columns of N / K keys, or every visible key when that is fewer.
double pairs_of(int64_t N, const SeaDims& sd, bool causal) {
  const int64_t K = std::min(sd.K, N), kc = selected_columns(sd, N);
  const double seen_max = double(kc) * double(N) / double(K);
  double p = 0;
  for (int64_t i = 0; i < N; ++i) p += std::min(seen_max, double(causal ? i + 1 : N));
  return kc >= K ? (causal ? double(N) * double(N + 1) / 2 : double(N) * double(N)) : p;
}

class Sea final : public ab::AttentionMixer {
 public:
  explicit Sea(const ab::MixerConfig& cfg) : AttentionMixer(cfg), sd_(dims_of(cfg.params)) {
    m_ = features_of(sd_, head_dim_);
    w_ = ab_favor::draw_projections(m_, head_dim_, true,
                                    ab::RngStream(cfg.seed, ab::Purpose::mixer, static_cast<uint64_t>(cfg.layer), 0));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "sea", "sparse",
        "SEA: FAVOR+ estimate of a compressed N x K attention matrix, per-row top-k columns, sparse softmax",
        "Lee et al. 2024, SEA: Sparse Linear Attention with Estimated Attention Mask (ICLR)",
        {ab::int_param("columns", 128, "K: compressed columns of the estimate (reference attention_predictor_length 128)",
                       1, 1 << 20),
         ab::int_param("k", 64, "keys per query: top round(k K / N) columns are selected (reference OPT runs: 64)", 1,
                       1 << 24),
         ab::int_param("num_features", 0, "FAVOR+ random features m of the estimate (0 = d ln d, the reference's)", 0,
                       65536),
         ab::int_param("query_block", 1, "queries sharing one selection (estimates summed; 1 = per row, the paper)", 1,
                       65536)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const SeaDims sd = dims_of(*a.params);
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double m = static_cast<double>(features_of(sd, a.d_model / a.heads));
      const double K = static_cast<double>(std::min(sd.K, a.length));
      ab::Cost c;
      // projections + FAVOR+ features of q and k (2 GEMMs with W) + column sums + A^ (a GEMM)
      // + top-k scan + the sparse attention core
      c.flops = 8 * B * N * D * D + 4 * B * H * N * m * d + B * H * N * m + 2 * B * H * N * m * K + B * H * N * K +
                4 * B * H * d * pairs_of(a.length, sd, a.causal);
      c.activation_bytes = ab::block_sparse_activation_bytes(B, N, D, H);
      // Forward peak in the estimate: q, k, v, y-to-be inputs (3 B N D), phi(q), phi(k) and the
      // FAVOR+ scratch (3 B H N m), the column sums (B H K m) and A^ (B H N K). Backward peak as
      // every block-sparse mixer's: y, q, k, v, O, the upstream gradient per head, dq, dk, dv,
      // the log-sum-exp and dWo.
      const double fwd = 4 * (3 * B * N * D + 3 * B * H * N * m + B * H * K * m + B * H * N * K);
      const double bwd = 4 * (9 * B * N * D + B * H * N + D * D);
      c.peak_bytes = std::max(fwd, bwd);
      return c;
    };
    s.check_params = {{"columns", 4}, {"k", 4}, {"num_features", 8}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), N = q.dim(2), K = std::min(sd_.K, N), qb = sd_.qb;
    const std::vector<int64_t> bounds = column_bounds(N, K);
    const std::vector<std::vector<int32_t>> sel = select(q, k, bounds, ctx);
    auto pattern = std::make_shared<ab::SparsePattern>();
    pattern->length = N;
    const int64_t ngroups = (N + qb - 1) / qb;
    if (N / K >= kNarrowColumn) {  // key blocks = the columns
      pattern->segments.push_back(ab::build_segment(
          N, {{}, {}, ab::uniform_bounds(N, qb), bounds}, B * heads_,
          [&](int64_t bh, int64_t g, std::vector<int32_t>& kbs) {
            const auto& s = sel[static_cast<size_t>(bh * ngroups + g)];
            kbs.insert(kbs.end(), s.begin(), s.end());
          }));
    } else {
      // Narrow columns (short sequences) would make tiny key blocks: `per` columns form one key
      // block, and an element mask keeps the keys of the selected columns only (same pattern).
      const int64_t per = (kGroupKeys + N / K - 1) / std::max<int64_t>(1, N / K);
      std::vector<int64_t> kb;
      for (int64_t c = 0; c < K; c += per) kb.push_back(bounds[static_cast<size_t>(c)]);
      kb.push_back(N);
      std::vector<int32_t> col_of(static_cast<size_t>(N));
      for (int64_t c = 0; c < K; ++c)
        for (int64_t j = bounds[c]; j < bounds[c + 1]; ++j) col_of[static_cast<size_t>(j)] = static_cast<int32_t>(c);
      std::vector<uint8_t> chosen(static_cast<size_t>(B * heads_ * ngroups * K), 0);
      for (size_t e = 0; e < sel.size(); ++e)
        for (int32_t c : sel[e]) chosen[e * static_cast<size_t>(K) + static_cast<size_t>(c)] = 1;
      pattern->segments.push_back(ab::build_segment(
          N, {{}, {}, ab::uniform_bounds(N, qb), kb}, B * heads_,
          [&](int64_t bh, int64_t g, std::vector<int32_t>& kbs) {
            for (int32_t c : sel[static_cast<size_t>(bh * ngroups + g)]) kbs.push_back(static_cast<int32_t>(c / per));
          },
          [&](int64_t bh, int64_t i, int64_t j) {
            return chosen[static_cast<size_t>((bh * ngroups + i / qb) * K + col_of[static_cast<size_t>(j)])] != 0;
          }));
    }
    return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)), ctx.causal,
                                      ctx.key_mask);
  }

 private:
  // The selected columns (ascending) of every (batch * head, query group).
  std::vector<std::vector<int32_t>> select(const ab::Var& q, const ab::Var& k, const std::vector<int64_t>& bounds,
                                           const ab::MixerContext& ctx) const {
    ab::NoGrad ng;
    const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), K = static_cast<int64_t>(bounds.size()) - 1;
    const int64_t qb = sd_.qb, ngroups = (N + qb - 1) / qb, kc = selected_columns(sd_, N);
    const int64_t mb = ctx.key_mask ? ctx.key_mask->dim(0) : 0;  // mask batch: B or 1
    const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {std::max<int64_t>(mb, 1), N});
    auto kept = [&](int64_t b, int64_t j) { return mb == 0 || keep[(mb == 1 ? 0 : b) * N + j] != 0.f; };
    // Candidate columns: with an unpadded key (and, causal, one at or before the group's last row).
    std::vector<uint8_t> live(static_cast<size_t>(B * K), 0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < K; ++c)
        for (int64_t j = bounds[c]; j < bounds[c + 1] && !live[b * K + c]; ++j) live[b * K + c] = kept(b, j);
    std::vector<std::vector<int32_t>> out(static_cast<size_t>(B * H * ngroups));
    if (kc >= K) {  // every column: exact (causal) softmax, no estimate needed
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t g = 0; g < ngroups; ++g)
          for (int64_t c = 0; c < K; ++c)
            if (live[(bh / H) * K + c] && (!ctx.causal || bounds[c] <= std::min(N, (g + 1) * qb) - 1))
              out[static_cast<size_t>(bh * ngroups + g)].push_back(static_cast<int32_t>(c));
      return out;
    }
    // FAVOR+ features [B, H, N, m]; the keys' stabilising maximum spans the (batch, head): one
    // positive factor per row of A^, which top-k ignores (no additive stabiliser, so it cancels).
    ab::FavorOptions fo;
    fo.stabilizer = 0.f;
    fo.is_query = true;
    const ab::Tensor fq = ab::favor_features(ab::Var(q.value()), w_, fo).value();
    fo.is_query = false;
    fo.key_mask = ctx.key_mask;
    const ab::Tensor fk = ab::favor_features(ab::Var(k.value()), w_, fo).value();
    const int64_t m = fq.dim(3);
    // Column sums of the unpadded key features [B, H, K, m].
    ab::Tensor ksum = ab::Tensor::zeros({B, H, K, m});
    ab::parallel_for(B * H, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh)
        for (int64_t c = 0; c < K; ++c) {
          float* dst = ksum.data() + (bh * K + c) * m;
          for (int64_t j = bounds[c]; j < bounds[c + 1]; ++j) {
            if (!kept(bh / H, j)) continue;
            const float* src = fk.data() + (bh * N + j) * m;
            for (int64_t e = 0; e < m; ++e) dst[e] += src[e];
          }
        }
    });
    // A^ = phi(q) ksum^T: [B, H, N, K]
    ab::Tensor est = ab::matmul(ab::Var(fq), ab::Var(ksum), false, true).value();
    ab::parallel_for(B * H * ngroups, 16, [&](int64_t e0, int64_t e1) {
      std::vector<double> score(static_cast<size_t>(K));
      std::vector<float> prefix(static_cast<size_t>(m));
      std::vector<int32_t> order;
      int64_t cur_bh = -1, cur_c = -1, cur_upto = 0;  // what `prefix` sums: keys [bounds[cur_c], cur_upto]
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t bh = e / ngroups, g = e % ngroups, b = bh / H;
        const int64_t r0 = g * qb, r1 = std::min(N, r0 + qb);
        std::fill(score.begin(), score.end(), 0.0);
        for (int64_t i = r0; i < r1; ++i) {
          const float* row = est.data() + (bh * N + i) * K;
          for (int64_t c = 0; c < K; ++c) score[c] += row[c];
        }
        if (ctx.causal) {
          // Columns reaching past a row hold only its prefix: recompute them from j <= i, with a
          // running within-column prefix sum of phi(k) (rows come in ascending order).
          for (int64_t i = r0; i < r1; ++i) {
            const float* qi = fq.data() + (bh * N + i) * m;
            for (int64_t c = 0; c < K && bounds[c] <= r1 - 1; ++c) {
              if (bounds[c + 1] - 1 <= i) continue;  // wholly visible to row i
              score[c] -= est[(bh * N + i) * K + c];
              if (bh != cur_bh || c != cur_c || cur_upto > i) {
                cur_bh = bh, cur_c = c, cur_upto = bounds[c] - 1;
                std::fill(prefix.begin(), prefix.end(), 0.f);
              }
              for (; cur_upto < i; ++cur_upto) {
                if (!kept(b, cur_upto + 1)) continue;
                const float* kj = fk.data() + (bh * N + cur_upto + 1) * m;
                for (int64_t f = 0; f < m; ++f) prefix[f] += kj[f];
              }
              double dot = 0;
              for (int64_t f = 0; f < m; ++f) dot += double(qi[f]) * prefix[f];
              score[c] += dot;
            }
          }
        }
        order.clear();
        for (int64_t c = 0; c < K; ++c)
          if (live[b * K + c] && (!ctx.causal || bounds[c] <= r1 - 1)) order.push_back(static_cast<int32_t>(c));
        const int64_t take = std::min<int64_t>(kc, static_cast<int64_t>(order.size()));
        std::partial_sort(order.begin(), order.begin() + take, order.end(), [&](int32_t x, int32_t y) {
          return score[x] > score[y] || (score[x] == score[y] && x < y);
        });
        order.resize(static_cast<size_t>(take));
        std::sort(order.begin(), order.end());
        out[static_cast<size_t>(e)] = order;
      }
    });
    return out;
  }

  SeaDims sd_;
  int64_t m_ = 0;
  ab::Tensor w_;  // [m, d] FAVOR+ projections, a constant
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Sea);
