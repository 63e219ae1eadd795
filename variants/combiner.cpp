// combiner — Combiner-Fixed: full attention coverage at O(N sqrt N) by a structured factorisation of
// the attention distribution (Ren et al. 2021, "Combiner: Full Attention Transformer with Sparse
// Computation Cost", sec. 3 and 4.2):
//   p(j | i) ∝ exp(s_ij)                       j in the direct support Ω_i^0 (i's own block of s)
//   p(j | i) ∝ exp(s̄_ir) q(j | Ω_r)            j in region Ω_r = another block r (causal: r < i's block)
//   s_ij = q_i.k_j / sqrt(d),  s̄_ir = q_i.k̄_r / sqrt(d),  q(j | Ω_r) = softmax_{j in Ω_r}(k_j . w_h)
//   O_i = [sum_{Ω_i^0} e^{s_ij} v_j + sum_r e^{s̄_ir} v̄_r] / [sum_{Ω_i^0} e^{s_ij} + sum_r e^{s̄_ir}],
//   v̄_r = sum_{j in Ω_r} q(j | Ω_r) v_j
// Every key j (causal: j <= i) gets probability from exactly one term, so the attention covers
// every pair once. w_h is a learned vector per head (the paper's in-region scorer); the region key
// k̄_r is the mean of the region's keys (the paper pools the region; mean pooling chosen here so
// that padded and ragged regions stay exact — a deliberate choice). Block s = ceil(sqrt(N)) by
// default (cost N sqrt N).
// Kernel: one joint softmax on the block-sparse kernel over the sequence extended by the R region
// summaries: keys [k; k̄] and values [v; v̄] of length N + R, each query seeing its own block
// (element-masked for causality) and the summary rows of its regions (element mask r < block or
// r != block). The extra R query rows are zeros that see nothing. Time O(B H N (s + N/s) d),
// memory O(B N D) (no N x N buffer).
// Capabilities: causal, bidirectional, key padding (padded keys leave the direct softmax and the
// in-region softmax; a region with no real key is dropped). No decode.
// Not built: Combiner-Axial / Logsparse / Mixture (the paper's other factorisations).
#include <algorithm>
#include <cmath>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

int64_t block_of(int64_t N, const ab::Json& params) {
  const int64_t s = params.at("block").get<int64_t>();
  if (s > 0) return s;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(std::max<int64_t>(N, 1))))));
}

// The joint pattern over the extended length N + R: query block qb (rows of the sequence) sees its
// own key block (j <= i when causal) and the summary rows N + r of its regions.
ab::SparsePattern combiner_pattern(int64_t N, int64_t s, bool causal) {
  const int64_t R = (N + s - 1) / s, L = N + R;
  ab::SparsePattern p;
  p.length = L;
  std::vector<int64_t> q_pos(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) q_pos[static_cast<size_t>(i)] = i;
  auto k_bounds = ab::uniform_bounds(N, s);
  if (R > 0) k_bounds.push_back(L);  // one block holding every summary row
  const int32_t summary = static_cast<int32_t>(R);
  p.segments.push_back(ab::build_segment(
      L, {q_pos, {}, ab::uniform_bounds(N, s), k_bounds}, 1,
      [summary](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
        kbs.push_back(static_cast<int32_t>(qb));
        kbs.push_back(summary);
      },
      [N, s, causal](int64_t, int64_t i, int64_t j) {
        if (j < N) return !causal || j <= i;
        const int64_t r = j - N;
        return causal ? r < i / s : r != i / s;
      }));
  return p;
}

class Combiner final : public ab::AttentionMixer {
 public:
  explicit Combiner(const ab::MixerConfig& cfg) : AttentionMixer(cfg), params_(cfg.params) {
    auto stream = ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, 8);
    // In-region scorer per head [H, d]: small, so that q(j | Ω_r) starts near the plain mean.
    wr_ = add_param("w_region", ab::init_normal({heads_, head_dim_}, 0.02f, stream));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "combiner", "sparse",
        "Combiner-Fixed: own block direct + every other block as a softmax-summarised region (full coverage)",
        "Ren et al. 2021, Combiner: Full Attention Transformer with Sparse Computation Cost",
        {ab::int_param("block", 0, "s: block (region) length; 0 = ceil(sqrt(N)), the N sqrt N cost", 0, 65536)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const int64_t sb = block_of(a.length, *a.params);
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, R = static_cast<double>((a.length + sb - 1) / sb);
      const auto p = combiner_pattern(a.length, sb, a.causal);
      ab::Cost c;
      // Projections, the region scores, k̄ and v̄ (2 B N D each), the joint attention.
      c.flops = 8 * B * N * D * D + 6 * B * N * D +
                ab::block_sparse_attention_flops(p, a.batch, a.heads, a.d_model / a.heads, false);
      // Saved: the blocked k, v (2 B N D, the region scores and sums read them); the in-region
      // softmax and the log-sum-exp (2 B H N + B H R); the extended q, k, v, O (4 B (N + R) D), k̄,
      // v̄ (2 B R D) and the merged heads (B N D).
      c.activation_bytes = 4 * (7 * B * N * D + 6 * B * R * D + 2 * B * H * N + B * H * R);
      // Peak early in backward: the saved tensors plus the extended dq, dk, dv and the head
      // gradient (4 B N D + 6 B R D) and dWo.
      c.peak_bytes = c.activation_bytes + 4 * (4 * B * N * D + 6 * B * R * D + D * D);
      return c;
    };
    s.check_params = {{"block", 3}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3);
    const int64_t s = block_of(N, params_), R = (N + s - 1) / s, pad = R * s - N;
    const int64_t mb = ctx.key_mask ? ctx.key_mask->dim(0) : 1;  // mask batch: B or 1
    const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {mb, N});
    auto kept = [&](int64_t b, int64_t j) { return j < N && (!keep.defined() || keep[b * N + j] != 0.f); };
    // In-region softmax mask [mb, 1, R, s] (finite: an empty region stays finite and is dropped
    // below) and the mean-pooling weights [mb, 1, R, s, 1].
    ab::Tensor rmask = ab::Tensor::zeros({mb, 1, R, s}), mean_w = ab::Tensor::zeros({mb, 1, R, s, 1});
    std::vector<uint8_t> region_live(static_cast<size_t>(mb * R), 0);
    for (int64_t b = 0; b < mb; ++b)
      for (int64_t r = 0; r < R; ++r) {
        int64_t count = 0;
        for (int64_t c = 0; c < s; ++c) count += kept(b, r * s + c);
        region_live[static_cast<size_t>(b * R + r)] = count > 0;
        for (int64_t c = 0; c < s; ++c) {
          const bool ok = kept(b, r * s + c);
          rmask[(b * R + r) * s + c] = ok ? 0.f : -1e30f;
          mean_w[(b * R + r) * s + c] = ok ? 1.f / static_cast<float>(count) : 0.f;
        }
      }
    auto blocked = [&](const ab::Var& t) {  // [B, H, N, d] -> [B, H, R, s, d], zero-padded
      const ab::Var full = pad > 0 ? ab::concat({t, ab::Var(ab::Tensor::zeros({B, H, pad, d}))}, 2) : t;
      return ab::reshape(full, {B, H, R, s, d});
    };
    const ab::Var kb = blocked(k), vb = blocked(v);
    // q(j | Ω_r) = softmax_j(k_j . w_h): [B, H, R, s]
    const ab::Var score = ab::sum_dim(ab::mul(kb, ab::reshape(wr_, {1, H, 1, 1, d})), 4);
    const ab::Var qr = ab::softmax(score, &rmask);
    const ab::Var vbar = ab::reshape(ab::matmul(ab::reshape(qr, {B, H, R, 1, s}), vb), {B, H, R, d});
    const ab::Var kbar = ab::sum_dim(ab::mul(kb, ab::Var(mean_w)), 3);  // [B, H, R, d]
    // The extended sequence of length N + R.
    const ab::Var qx = ab::concat({q, ab::Var(ab::Tensor::zeros({B, H, R, d}))}, 2);
    const ab::Var kx = ab::concat({k, kbar}, 2), vx = ab::concat({v, vbar}, 2);
    ab::Tensor xmask;
    if (ctx.key_mask) {
      xmask = ab::Tensor::zeros({mb, 1, 1, N + R});
      for (int64_t b = 0; b < mb; ++b) {
        for (int64_t j = 0; j < N; ++j) xmask[b * (N + R) + j] = (*ctx.key_mask)[b * N + j];
        for (int64_t r = 0; r < R; ++r)
          if (!region_live[static_cast<size_t>(b * R + r)]) xmask[b * (N + R) + N + r] = -INFINITY;
      }
    }
    auto pattern = cache_.get(2 * N + ctx.causal, [&] { return combiner_pattern(N, s, ctx.causal); });
    const ab::Var o = ab::block_sparse_attention(qx, kx, vx, pattern, 1.0f / std::sqrt(static_cast<float>(d)), false,
                                                 ctx.key_mask ? &xmask : nullptr);
    return ab::slice(o, 2, 0, N);
  }

 private:
  ab::Json params_;
  ab::Var wr_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Combiner);
