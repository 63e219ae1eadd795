// nsa — Native Sparse Attention: three attention branches over the same q of every head, mixed by
// learned sigmoid gates (Yuan et al. 2025, "Native Sparse Attention", eq. 5):
//   o_i = g_cmp(x_i) o_cmp_i + g_slc(x_i) o_slc_i + g_win(x_i) o_win_i,   g = sigmoid(x W_g) per head
//   cmp: softmax attention over compressed keys / values, one per block of l positions:
//        k~_t = W_ck mean(k[t l, t l + l)), v~_t = W_cv mean(v[...]) (causal: block t is seen by
//        query i once it is complete, t l + l - 1 <= i; a query before the first complete block
//        gets o_cmp = 0).
//   slc: exact softmax attention over the n selected key blocks of length l: the first block, the
//        local blocks (the query's own and the one before) and the rest by the importance
//        sum_i p_cmp[i, t] (compressed-attention probabilities) — top-n, ties to the earlier block.
//        The selection is a constant for the gradient (as in the paper; the blocks are chosen by an
//        argmax-like top-n).
//   win: exact softmax attention over the last w keys, 0 <= i - j < w (bidirectional: w keys
//        centred on i, -(w - 1 - w/2) <= i - j <= w/2; the paper is causal only).
// Reference: the paper and fla-org/native-sparse-attention (parallel.py: compression = mean
// pooling over non-overlapping blocks, selection block = compression block, gates g_proj ->
// sigmoid). Deliberate differences: (1) the compression is mean pooling followed by a learned
// d x d linear map (initialised to the identity, i.e. fla's mean pooling), not the paper's MLP with
// intra-block positions over overlapping blocks (l = 32, stride 16); (2) the selected blocks are
// chosen per group of `query_block` consecutive queries (importance summed over the group), as the
// paper shares them over the heads of a GQA group; query_block = 1 is the per-token selection of
// the paper (the kernel then runs 1-row tiles: about 1.4x slower at 16, much slower at 1); the
// default 64 makes a query group one selection block.
// Kernels: cmp as dense ops over [N, N / l] scores (p_cmp is needed for the selection anyway);
// slc and win on the block-sparse kernel (slc with one block list per (batch, head)).
// Time O(B H N (N / l + n l + w) d); memory O(B H N N / l) for p_cmp plus O(B N D).
// Capabilities: causal, bidirectional, key padding (a compressed block with a padded key is dropped).
// No decode (the selected set changes with every new token's compressed scores).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

constexpr int64_t kWindowBlock = 64;

struct NsaDims {
  int64_t l, n, w, qb;
};

NsaDims dims_of(const ab::Json& p) {
  return {p.at("block").get<int64_t>(), p.at("select").get<int64_t>(), p.at("window").get<int64_t>(),
          p.at("query_block").get<int64_t>()};
}

// Pairs (i, j) each branch scores, summed over the queries of one head: compressed blocks,
// selected keys and window keys.
struct Pairs {
  double cmp = 0, slc = 0, win = 0;
};
Pairs pairs_of(int64_t N, const NsaDims& nd, bool causal) {
  Pairs p;
  const int64_t M = N / nd.l, K = (N + nd.l - 1) / nd.l;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t seen = causal ? i + 1 : N;
    p.cmp += static_cast<double>(causal ? (i + 1) / nd.l : M);
    p.slc += static_cast<double>(std::min(seen, std::min(nd.n, K) * nd.l));
    p.win += static_cast<double>(causal ? std::min(nd.w, i + 1)
                                        : std::min(N, i + nd.w - nd.w / 2) - std::max<int64_t>(0, i - nd.w / 2));
  }
  return p;
}

// Whether query i sees key j in the window of w keys.
bool in_window(int64_t i, int64_t j, int64_t w, bool causal) {
  return causal ? i - j < w : i - j <= w / 2 && j - i <= w - 1 - w / 2;
}

// The sliding window as 64 x 64 blocks with element masks on the edges.
ab::SparsePattern window_pattern(int64_t N, int64_t w, bool causal) {
  ab::SparsePattern p;
  p.length = N;
  const auto bounds = ab::uniform_bounds(N, kWindowBlock);
  const int64_t nb = static_cast<int64_t>(bounds.size()) - 1, reach = (w + kWindowBlock - 1) / kWindowBlock;
  p.segments.push_back(ab::build_segment(
      N, {{}, {}, bounds, bounds}, 1,
      [&](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
        for (int64_t kb = std::max<int64_t>(0, qb - reach); kb <= std::min(nb - 1, qb + reach); ++kb)
          kbs.push_back(static_cast<int32_t>(kb));
      },
      [w, causal](int64_t, int64_t i, int64_t j) { return in_window(i, j, w, causal); }));
  return p;
}


// The selected key blocks (blocks of l) of every (batch*head, query group of qb rows), from the
// compressed probabilities p [BH, N, M] (0 where not seen). Sorted ascending.
std::vector<std::vector<int32_t>> select_blocks(const float* p, int64_t BH, int64_t N, int64_t M, const NsaDims& nd,
                                                bool causal) {
  const int64_t K = (N + nd.l - 1) / nd.l, ngroups = (N + nd.qb - 1) / nd.qb;
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(BH * ngroups));
  std::vector<double> score(static_cast<size_t>(M));
  std::vector<int32_t> order;
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t r0 = g * nd.qb, r1 = std::min(N, r0 + nd.qb);
      const int64_t seen = causal ? (r1 - 1) / nd.l + 1 : K;  // blocks with a key some query may see
      auto& sel = out[static_cast<size_t>(bh * ngroups + g)];
      if (nd.n >= seen) {  // every block: the selected branch is exact (causal) softmax
        for (int64_t t = 0; t < seen; ++t) sel.push_back(static_cast<int32_t>(t));
        continue;
      }
      std::vector<uint8_t> taken(static_cast<size_t>(seen), 0);
      auto take = [&](int64_t t) {
        if (t >= 0 && t < seen && !taken[static_cast<size_t>(t)]) {
          taken[static_cast<size_t>(t)] = 1;
          sel.push_back(static_cast<int32_t>(t));
        }
      };
      take(0);                                                      // the initial block
      for (int64_t t = r0 / nd.l - 1; t <= (r1 - 1) / nd.l; ++t) take(t);  // the local blocks
      std::fill(score.begin(), score.end(), 0.0);
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t t = 0; t < M; ++t) score[static_cast<size_t>(t)] += p[(bh * N + i) * M + t];
      order.clear();
      for (int64_t t = 0; t < std::min(M, seen); ++t)
        if (!taken[static_cast<size_t>(t)]) order.push_back(static_cast<int32_t>(t));
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)]; });
      for (int32_t t : order) {
        if (static_cast<int64_t>(sel.size()) >= nd.n) break;
        take(t);
      }
      std::sort(sel.begin(), sel.end());
    }
  return out;
}

class Nsa final : public ab::Mixer {
 public:
  explicit Nsa(const ab::MixerConfig& cfg)
      : D_(cfg.d_model), H_(cfg.heads), d_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0), nd_(dims_of(cfg.params)) {
    if (H_ <= 0 || D_ % H_ != 0)
      throw ab::UsageError("variant 'nsa': model.d_model must be a multiple of model.heads");
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    wq_ = add_param("wq", ab::init_xavier_uniform(D_, D_, stream(0)));
    wk_ = add_param("wk", ab::init_xavier_uniform(D_, D_, stream(1)));
    wv_ = add_param("wv", ab::init_xavier_uniform(D_, D_, stream(2)));
    wo_ = add_param("wo", ab::init_xavier_uniform(D_, D_, stream(3)));
    wg_ = add_param("wg", ab::init_xavier_uniform(D_, 3 * H_, stream(4)));
    ab::Tensor eye = ab::Tensor::zeros({d_, d_});
    for (int64_t i = 0; i < d_; ++i) eye[i * d_ + i] = 1.f;
    wck_ = add_param("wck", eye.clone());
    wcv_ = add_param("wcv", eye.clone());
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "nsa", "sparse", "Native Sparse Attention: compressed + top-n selected blocks + sliding window, sigmoid-gated",
        "Yuan et al. 2025, Native Sparse Attention (fla-org/native-sparse-attention)",
        {ab::int_param("block", 64, "l: compression and selection block length (fla-org default 64)", 1, 65536),
         ab::int_param("select", 16, "n: selected blocks per query, incl. the first and 2 local ones (paper 16)", 1,
                       65536),
         ab::int_param("window", 512, "w: sliding-window length (paper 512)", 1, 1 << 24),
         ab::int_param("query_block", 64, "queries sharing one selection (1 = per token, as the paper)", 1, 65536)},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const NsaDims nd = dims_of(*a.params);
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads, d = D / H;
      const double M = static_cast<double>(a.length / nd.l);
      const Pairs pr = pairs_of(a.length, nd, a.causal);
      ab::Cost c;
      c.flops = 8 * B * N * D * D + 6 * B * N * D * H  // q, k, v, o and the gates
                + 2 * B * H * M * (nd.l + 2 * d) * d    // block means and the compression maps
                + 4 * B * H * d * (pr.cmp + pr.slc + pr.win);
      // Saved: q, k, v; the block means and compressed k, v (4 B M D); p_cmp before and after the
      // row-validity factor (2 B H N M); the three branch outputs and the merged heads (4 B N D);
      // two log-sum-exps and the sigmoid gates with their three per-head slices (8 B H N).
      c.activation_bytes = 4 * (7 * B * N * D + 4 * B * M * D + 2 * B * H * N * M + 8 * B * H * N);
      // Peak early in backward: the saved tensors, y, the score gradient of the compressed branch
      // (B H N M) and the q, k, v gradients of both sparse branches (6 B N D) and the parameter
      // gradients.
      c.peak_bytes = c.activation_bytes + 4 * (7 * B * N * D + B * H * N * M + 4 * D * D + 3 * D * H);
      return c;
    };
    s.check_params = {{"block", 2}, {"select", 2}, {"window", 3}, {"query_block", 2}};
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1), M = N / nd_.l;
    const float scl = 1.0f / std::sqrt(static_cast<float>(d_));
    auto heads = [&](const ab::Var& w) { return ab::permute(ab::reshape(ab::linear(x, w), {B, N, H_, d_}), {0, 2, 1, 3}); };
    const ab::Var q = heads(wq_), k = heads(wk_), v = heads(wv_);  // [B, H, N, d]
    // Gates: [B, N, 3 H] -> three [B, H, N, 1].
    const ab::Var g = ab::permute(ab::reshape(ab::sigmoid(ab::linear(x, wg_)), {B, N, 3, H_}), {0, 2, 3, 1});
    auto gate = [&](int which) { return ab::reshape(ab::slice(g, 1, which, 1), {B, H_, N, 1}); };

    // Selected branch's blocks come from the compressed probabilities.
    std::vector<std::vector<int32_t>> selected;
    ab::Var o;
    if (M > 0) {
      auto compress = [&](const ab::Var& t, const ab::Var& w) {  // [B, H, N, d] -> [B, H, M, d]
        return ab::linear(ab::mean_dim(ab::reshape(ab::slice(t, 2, 0, M * nd_.l), {B, H_, M, nd_.l, d_}), 3), w);
      };
      const ab::Var kc = compress(k, wck_), vc = compress(v, wcv_);
      const int64_t mb = ctx.key_mask ? ctx.key_mask->dim(0) : 0;  // mask batch: B or 1
      const ab::Tensor keep = ab::keep_flags(ctx.key_mask, {mb, N});
      // Additive mask [B, 1, N, M] (finite, so that a row with no block stays finite) and the row
      // validity [B, 1, N, 1] that zeroes such rows.
      ab::Tensor mask = ab::Tensor::zeros({B, 1, N, M}), valid = ab::Tensor::zeros({B, 1, N, 1});
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < M; ++t) {
          bool ok = true;
          for (int64_t j = t * nd_.l; mb > 0 && j < (t + 1) * nd_.l; ++j)
            ok = ok && keep[(mb == 1 ? 0 : b) * N + j] != 0.f;
          for (int64_t i = 0; i < N; ++i) {
            const bool seen = ok && (!ctx.causal || (t + 1) * nd_.l - 1 <= i);
            mask[(b * N + i) * M + t] = seen ? 0.f : -1e30f;
            if (seen) valid[b * N + i] = 1.f;
          }
        }
      const ab::Var p = ab::mul(ab::softmax(ab::scale(ab::matmul(q, kc, false, true), scl), &mask), ab::Var(valid));
      o = ab::mul(ab::matmul(p, vc), gate(0));
      selected = select_blocks(p.value().data(), B * H_, N, M, nd_, ctx.causal);
    } else {
      selected = select_blocks(nullptr, B * H_, N, 0, nd_, ctx.causal);
    }
    auto slc = std::make_shared<ab::SparsePattern>();
    slc->length = N;
    const int64_t ngroups = (N + nd_.qb - 1) / nd_.qb;
    slc->segments.push_back(ab::build_segment(N, {{}, {}, ab::uniform_bounds(N, nd_.qb), ab::uniform_bounds(N, nd_.l)},
                                              B * H_, [&](int64_t bh, int64_t qg, std::vector<int32_t>& kbs) {
                                                const auto& s = selected[static_cast<size_t>(bh * ngroups + qg)];
                                                kbs.insert(kbs.end(), s.begin(), s.end());
                                              }));
    const ab::Var o_slc = ab::mul(ab::block_sparse_attention(q, k, v, slc, scl, ctx.causal, ctx.key_mask), gate(1));
    o = o.defined() ? ab::add(o, o_slc) : o_slc;
    auto win = window_cache_.get(2 * N + ctx.causal, [&] { return window_pattern(N, nd_.w, ctx.causal); });
    o = ab::add(o, ab::mul(ab::block_sparse_attention(q, k, v, win, scl, ctx.causal, ctx.key_mask), gate(2)));
    return ab::linear(ab::reshape(ab::permute(o, {0, 2, 1, 3}), {B, N, D_}), wo_);
  }

 private:
  int64_t D_, H_, d_;
  NsaDims nd_;
  ab::Var wq_, wk_, wv_, wo_, wg_, wck_, wcv_;
  ab::SparsePatternCache window_cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Nsa);
