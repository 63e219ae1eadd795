#pragma once
// Exact softmax attention restricted to a block-sparse pattern, with kernels that touch only the
// listed blocks (the shared op of the local / sparse family: local_block, local_window,
// sparse_fixed, longformer, bigbird).
//
//   O[b,h,i,:] = sum_{j in A_h(i)} softmax_j(scale * q[b,h,i,:] . k[b,h,j,:] + mask[b,j]) v[b,h,j,:]
//
// where A_h(i) is the set of keys the pattern allows query i of head h (intersected with j <= i when
// causal). A query row with no allowed key gets O = 0 and zero gradients, never NaN.
//
// A pattern is a union of disjoint *segments*. A segment orders some query positions and some key
// positions (identity by default; a gather such as "sorted by residue mod l" turns a strided pattern
// into a block-diagonal one), cuts each ordering into blocks (any sizes), and lists per query block
// the key blocks it sees (block-CSR, per head or shared by all heads), with an optional element mask
// inside a listed block (ragged window edges, global tokens). The softmax is joint over all segments:
// the kernel carries the online-softmax state of each row from one segment to the next.
// No (i, j) pair may be allowed by two segments (it would be counted twice); SparsePattern::coverage
// checks that.
//
// Memory: forward keeps q, k, v, O and one log-sum-exp per row; no N x N buffer exists at any time
// (tiles of at most 64 x 64 per thread). Backward recomputes the probabilities of the listed blocks
// from the saved log-sum-exp, in two passes (query blocks -> dq; key blocks -> dk, dv), so no
// atomics are needed. Threads: TBB over (batch*head, query block or key block); results do not
// depend on the thread count.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "attnbench/autograd.hpp"
#include "attnbench/cost.hpp"

namespace ab {

struct SparseSegment {
  // 1: one block list shared by every head; H: one per head; B H: one per (batch, head), list
  // b H + h (data-dependent patterns such as NSA's selected blocks).
  int64_t heads = 1;
  // Segment row -> sequence position, for queries and for keys; empty = the identity over [0, N).
  // Within one segment a position appears at most once on each side.
  std::vector<int64_t> q_pos, k_pos;
  // Block b covers segment rows [bounds[b], bounds[b + 1]); bounds[0] = 0.
  std::vector<int64_t> q_bounds, k_bounds;
  // Block-CSR: head h, query block qb sees key blocks cols[e] for e in [row_ptr[h*(nqb+1)+qb],
  // row_ptr[h*(nqb+1)+qb+1]), sorted ascending, no duplicates.
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> cols;
  // Per entry: -1 = every element of the block pair is allowed; else the offset in `masks` of a
  // row-major [q block size, k block size] byte mask (1 = allowed).
  std::vector<int64_t> mask_offset;
  std::vector<uint8_t> masks;

  // ---- derived by finalize() ----
  std::vector<int64_t> col_ptr;  // transposed index: [heads * (nkb + 1)]
  std::vector<int32_t> t_rows;   // the query block of each transposed entry (ascending per key block)
  std::vector<int64_t> t_entry;  // the CSR entry it comes from
  std::vector<int64_t> q_block_max, k_block_min;  // largest query / smallest key position per block

  int64_t q_rows() const { return q_bounds.empty() ? 0 : q_bounds.back(); }
  int64_t k_rows() const { return k_bounds.empty() ? 0 : k_bounds.back(); }
  int64_t q_blocks() const { return q_bounds.empty() ? 0 : static_cast<int64_t>(q_bounds.size()) - 1; }
  int64_t k_blocks() const { return k_bounds.empty() ? 0 : static_cast<int64_t>(k_bounds.size()) - 1; }
  int64_t q_at(int64_t r) const { return q_pos.empty() ? r : q_pos[static_cast<size_t>(r)]; }
  int64_t k_at(int64_t c) const { return k_pos.empty() ? c : k_pos[static_cast<size_t>(c)]; }

  // Validates against a sequence length (throws std::invalid_argument) and builds the derived index.
  void finalize(int64_t length);
};

struct SparsePattern {
  int64_t length = 0;  // N
  std::vector<SparseSegment> segments;

  // How many segments allow each (i, j) for head h, ignoring causality and key padding:
  // [N * N] row-major, 0 or 1 in a valid pattern. O(N^2): for tests and small N.
  std::vector<uint8_t> coverage(int64_t head) const;
  // Query-key pairs the kernel computes scores for (areas of the listed block pairs), summed over
  // `heads` heads (and over the batch for B H lists); block pairs wholly in the future are skipped
  // when causal.
  double computed_pairs(int64_t heads, bool causal) const;
};

// ---- building segments ----
// [0, b, 2b, ..., n]: blocks of `block` rows, the last one ragged.
std::vector<int64_t> uniform_bounds(int64_t n, int64_t block);

struct SegmentAxes {
  std::vector<int64_t> q_pos, k_pos;        // empty = identity over [0, N)
  std::vector<int64_t> q_bounds, k_bounds;  // see SparseSegment
};
// Appends to `key_blocks` the key blocks that query block `q_block` of head `head` sees (any order,
// duplicates allowed: they are sorted and merged).
using BlockLister = std::function<void(int64_t head, int64_t q_block, std::vector<int32_t>& key_blocks)>;
// Whether query position i may see key position j (sequence positions, not segment rows).
using ElementRule = std::function<bool(int64_t head, int64_t i, int64_t j)>;

// Builds and finalizes one segment. With a rule, every listed block pair is classified: entirely
// allowed (no mask), entirely forbidden (dropped) or mixed (a byte mask is stored).
SparseSegment build_segment(int64_t length, SegmentAxes axes, int64_t heads, const BlockLister& blocks,
                            const ElementRule& rule = {});

// Block-local attention: query block i sees key block i only (blocks of `block` positions; the
// last may be shorter). local_block's pattern, and TransNormer's DiagAttention.
SparsePattern block_diagonal_pattern(int64_t length, int64_t block);

// ---- the op ----
// q, k, v: [B, H, N, d] -> [B, H, N, d]. Differentiable in q, k, v (not in the mask).
// key_mask: additive [B or 1, 1, 1, N] (0 keep, -inf drop; finite values are added as a bias) or null.
// Every segment of the pattern has 1, H or B H block lists; pattern->length == N.
Var block_sparse_attention(const Var& q, const Var& k, const Var& v, std::shared_ptr<const SparsePattern> pattern,
                           float scale, bool causal, const Tensor* key_mask = nullptr);

// Forward FLOPs of the attention core (scores and the weighted sum: 4 d per computed pair).
double block_sparse_attention_flops(const SparsePattern& pattern, int64_t batch, int64_t heads, int64_t head_dim,
                                    bool causal);

// Bytes an AttentionMixer whose attend() is one block_sparse_attention call keeps for backward
// (excluding x and y): q, k, v and O (saved by the op), the merged heads (saved by the output
// projection) and the log-sum-exp: 4 (5 B N D + B H N). The pattern itself is not a tensor.
inline double block_sparse_activation_bytes(double batch, double length, double d_model, double heads) {
  return 4.0 * (5.0 * batch * length * d_model + batch * heads * length);
}

// The cost model of such an AttentionMixer, `pattern` built for args.length: the four projections
// (8 B N D^2 FLOPs) plus the attention core over the pattern (causal: intersected with j <= i),
// block_sparse_activation_bytes, and the peak in the backward: y, q, k, v, O, the upstream
// gradient per head, dq, dk, dv (9 B N D), the log-sum-exp and dWo.
Cost block_sparse_mixer_cost(const SparsePattern& pattern, const CostArgs& args, bool causal);

// ---- raw kernels (no autograd) ----
struct SparseAttentionShape {
  int64_t batch = 1, heads = 1, length = 1, head_dim = 1;
};
// q, k, v [B,H,N,d]; key_mask [mask_batch, N] additive or null -> o [B,H,N,d], lse [B,H,N]
// (+inf for rows that see no key).
void block_sparse_forward(const SparsePattern& p, const SparseAttentionShape& s, const float* q, const float* k,
                          const float* v, const float* key_mask, int64_t mask_batch, float scale, bool causal,
                          float* o, float* lse);
// From the forward's tensors and dout [B,H,N,d]: dq, dk, dv [B,H,N,d] (overwritten).
void block_sparse_backward(const SparsePattern& p, const SparseAttentionShape& s, const float* q, const float* k,
                           const float* v, const float* key_mask, int64_t mask_batch, float scale, bool causal,
                           const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv);

// Patterns depend on the length (and sometimes on causality); variants build them once per key.
class SparsePatternCache {
 public:
  std::shared_ptr<const SparsePattern> get(int64_t key, const std::function<SparsePattern()>& make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    auto p = std::make_shared<const SparsePattern>(make());
    cache_.emplace(key, p);
    return p;
  }

 private:
  std::mutex mutex_;
  std::map<int64_t, std::shared_ptr<const SparsePattern>> cache_;
};

}  // namespace ab
