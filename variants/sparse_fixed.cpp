// sparse_fixed — Sparse Transformer factorised attention, the two patterns merged into one mask
// for every head (as the LRA code does), with stride l = `stride` and c = `summary`:
//   fixed:   A(i) = {j : floor(j/l) = floor(i/l)}  U  {j : j mod l >= l - c}
//            (own stride group, plus the last c "summary" positions of every group)
//   strided: A(i) = {j : |i - j| < l}  U  {j : (i - j) mod l = 0}
//            (a band, plus every l-th token)
// Reference: Child et al. 2019, Generating Long Sequences with Sparse Transformers; LRA
// `sparse_attention.py` (Fixed1(l) U Fixed2(l, c), l = 128, c = 32, AND-ed with a causal triangle).
// Kernel (block-sparse, only allowed blocks computed):
//   fixed: queries in blocks of l; keys cut at every group's summary boundary, so both parts are
//     whole blocks (no element masks). Time O(B H N (l + c N / l) d).
//   strided: the band as l x l blocks with an element mask, plus a second segment that orders the
//     tokens by residue mod l, where "every l-th token" becomes block-diagonal (blocks of N/l, the
//     diagonal i = j excluded, since the band has it). Time O(B H N (3 l + N / l) d).
// Memory O(B N D + B H N) saved for backward (no N x N buffer).
// Capabilities: causal (pattern AND j <= i), bidirectional (the plain union), key padding.
// Caveats: LRA intersects the pattern with j <= i even for classification; set
// `causal_pattern = true` to reproduce that (variants.md §3.8 pitfall 2). The paper assigns A1 and A2
// to different heads; here (as in LRA) every head sees the union. The defaults follow the LRA code
// as read in the reference notes (l = 128, c = 32); some write-ups quote l = 50, c = 10 instead.
#include <algorithm>
#include <cmath>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"

namespace {

ab::SparsePattern fixed_pattern(int64_t N, int64_t l, int64_t c) {
  c = std::min(c, l);
  // Key blocks: each group [g l, g l + l) cut at g l + l - c; a block is "summary" if it starts there.
  std::vector<int64_t> kb{0};
  std::vector<uint8_t> summary;
  std::vector<int64_t> group_of;
  for (int64_t g0 = 0; g0 < N; g0 += l) {
    const int64_t end = std::min(N, g0 + l), cut = g0 + l - c;
    if (cut > g0 && cut < end) {
      kb.push_back(cut);
      summary.push_back(0);
      group_of.push_back(g0 / l);
    }
    kb.push_back(end);
    summary.push_back(c > 0 && cut < end);
    group_of.push_back(g0 / l);
  }
  if (N == 0) kb = {0};
  ab::SparsePattern p;
  p.length = N;
  p.segments.push_back(ab::build_segment(N, {{}, {}, ab::uniform_bounds(N, l), kb}, 1,
                                         [&](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
                                           for (size_t b = 0; b < summary.size(); ++b)
                                             if (summary[b] || group_of[b] == qb) kbs.push_back(static_cast<int32_t>(b));
                                         }));
  return p;
}

ab::SparsePattern strided_pattern(int64_t N, int64_t l) {
  ab::SparsePattern p;
  p.length = N;
  // The band |i - j| < l.
  const auto bounds = ab::uniform_bounds(N, l);
  const int64_t nb = static_cast<int64_t>(bounds.size()) - 1;
  p.segments.push_back(ab::build_segment(
      N, {{}, {}, bounds, bounds}, 1,
      [&](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
        for (int64_t kb = std::max<int64_t>(0, qb - 1); kb <= std::min(nb - 1, qb + 1); ++kb)
          kbs.push_back(static_cast<int32_t>(kb));
      },
      [&](int64_t, int64_t i, int64_t j) { return std::abs(i - j) < l; }));
  // (i - j) mod l = 0, i != j: tokens ordered by residue, one block per residue class.
  std::vector<int64_t> pos, cls{0};
  for (int64_t r = 0; r < std::min(l, N); ++r) {
    for (int64_t j = r; j < N; j += l) pos.push_back(j);
    cls.push_back(static_cast<int64_t>(pos.size()));
  }
  if (N > 1 && l < N)
    p.segments.push_back(ab::build_segment(
        N, {pos, pos, cls, cls}, 1,
        [](int64_t, int64_t qb, std::vector<int32_t>& kbs) { kbs.push_back(static_cast<int32_t>(qb)); },
        [](int64_t, int64_t i, int64_t j) { return i != j; }));
  return p;
}

ab::SparsePattern sparse_pattern(int64_t N, const ab::Json& params) {
  const int64_t l = params.at("stride").get<int64_t>();
  if (params.at("pattern").get<std::string>() == "strided") return strided_pattern(N, l);
  return fixed_pattern(N, l, params.at("summary").get<int64_t>());
}

class SparseFixed final : public ab::AttentionMixer {
 public:
  explicit SparseFixed(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg), params_(cfg.params), causal_pattern_(cfg.params.at("causal_pattern").get<bool>()) {
    if (params_.at("pattern").get<std::string>() == "fixed" &&
        params_.at("summary").get<int64_t>() > params_.at("stride").get<int64_t>())
      throw ab::UsageError("variant 'sparse_fixed': summary (c) must not exceed stride (l)");
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "sparse_fixed", "sparse",
        "Sparse Transformer fixed (or strided) factorised pattern, merged over heads as in LRA",
        "Child et al. 2019, Generating Long Sequences with Sparse Transformers",
        {ab::enum_param("pattern", "fixed", {"fixed", "strided"},
                        "fixed: own group + summary columns; strided: band |i-j| < l + every l-th token"),
         ab::int_param("stride", 128, "l: group length (fixed) or band / stride (strided); LRA 128", 1, 65536),
         ab::int_param("summary", 32, "c: summary positions at the end of every group (fixed only); LRA 32", 0, 65536),
         ab::bool_param("causal_pattern", false,
                        "always intersect with j <= i, even in encoder mode (what the LRA code does)")},
        {.causal = true, .bidirectional = true, .padding_mask = true});
    s.cost = [](const ab::CostArgs& a) {
      const auto p = sparse_pattern(a.length, *a.params);
      return ab::block_sparse_mixer_cost(p, a, a.causal || a.params->at("causal_pattern").get<bool>());
    };
    s.check_params = {{"stride", 4}, {"summary", 2}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  ab::Var attend(const ab::Var& q, const ab::Var& k, const ab::Var& v, const ab::MixerContext& ctx) override {
    const int64_t N = q.dim(2);
    auto pattern = cache_.get(N, [&] { return sparse_pattern(N, params_); });
    return ab::block_sparse_attention(q, k, v, pattern, 1.0f / std::sqrt(static_cast<float>(head_dim_)),
                                      ctx.causal || causal_pattern_, ctx.key_mask);
  }

 private:
  ab::Json params_;
  bool causal_pattern_;
  ab::SparsePatternCache cache_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(SparseFixed);
