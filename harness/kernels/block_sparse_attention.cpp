// Block-sparse exact softmax attention: pattern building, forward with an online softmax over the
// listed key blocks, backward by recomputation from the saved log-sum-exp (see the header).
//
// Tiles: at most kTile query rows x kTile keys. Every operand of a tile is staged in a per-thread
// buffer whose rows are padded to a multiple of 16 floats, so one micro-GEMM shape serves all
// products:  C[M, W] (+)= A[M, K] . B[K, W]  with W a multiple of 16 (GCC vector extensions; FMA
// intrinsics where AVX-512 is available), A read with any strides.
#include "attnbench/kernels/block_sparse_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/backend/onednn.hpp"

namespace ab {

namespace {

constexpr int64_t kTile = 64;
constexpr float kInf = std::numeric_limits<float>::infinity();

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("block_sparse_attention: " + what); }

int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// ---------------------------------------------------------------------------------------------
// 16-float vectors
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

inline v16 vload(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline v16 vsplat(float x) { return v16{} + x; }
inline v16 vfma(v16 a, v16 b, v16 c) {
#if defined(__AVX512F__)
  return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#else
  return a * b + c;
#endif
}
inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }
inline float hmax(v16 v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, v[i]);
  return m;
}
inline float hsum(v16 v) {
  float s = 0;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// exp(x) for x in [-inf, 88]: 2^n * p(r), r = x - n ln2, |r| <= ln2/2, degree-6 Taylor polynomial
// (relative error ~2e-7); inputs below -87 give 0 (exp(-87) = 1.6e-38).
inline v16 vexp(v16 x) {
  const v16 lo = vsplat(-87.0f);
  const vi16 under = x < lo;
  x = under ? lo : x;
  const v16 magic = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v16 t = x * vsplat(1.44269504088896341f) + magic;
  const v16 n = t - magic;
  v16 r = x - n * vsplat(0.693359375f);
  r = r + n * vsplat(2.12194440e-4f);  // ln 2 = 0.693359375 - 2.12194440e-4
  v16 p = vsplat(1.f / 720);
  p = vfma(p, r, vsplat(1.f / 120));
  p = vfma(p, r, vsplat(1.f / 24));
  p = vfma(p, r, vsplat(1.f / 6));
  p = vfma(p, r, vsplat(0.5f));
  p = vfma(p, r, vsplat(1.f));
  p = vfma(p, r, vsplat(1.f));
  const vi16 ni = (vi16)t - (vi16)magic;
  const v16 scale = (v16)((ni + 127) << 23);
  const v16 y = p * scale;
  return under ? v16{} : y;
}

// ---------------------------------------------------------------------------------------------
// C[M, W] (+)= A[M, K] . B[K, W]. A's element (i, k) is A[i * ar + k * ak]: a row-major A has
// (ar, ak) = (lda, 1), a tile stored transposed has (1, ld). B and C are row-major; W is a multiple of 16.
template <int MR, int NV>
inline void gemm_micro(int64_t K, const float* A, int64_t ar, int64_t ak, const float* B, int64_t ldb, float* C,
                       int64_t ldc, bool accumulate) {
  v16 c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) c[i][j] = accumulate ? vload(C + i * ldc + 16 * j) : v16{};
  for (int64_t k = 0; k < K; ++k) {
    v16 b[NV];
    for (int j = 0; j < NV; ++j) b[j] = vload(B + k * ldb + 16 * j);
    const float* a = A + k * ak;
    for (int i = 0; i < MR; ++i) {
      const v16 av = vsplat(a[i * ar]);
      for (int j = 0; j < NV; ++j) c[i][j] = vfma(av, b[j], c[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) vstore(C + i * ldc + 16 * j, c[i][j]);
}

template <int MR>
void gemm_rows(int64_t W, int64_t K, const float* A, int64_t ar, int64_t ak, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool accumulate) {
  int64_t w = 0;
  for (; w + 32 <= W; w += 32) gemm_micro<MR, 2>(K, A, ar, ak, B + w, ldb, C + w, ldc, accumulate);
  if (w < W) gemm_micro<MR, 1>(K, A, ar, ak, B + w, ldb, C + w, ldc, accumulate);
}

void gemm(int64_t M, int64_t W, int64_t K, const float* A, int64_t ar, int64_t ak, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate) {
  int64_t i = 0;
  for (; i + 8 <= M; i += 8) gemm_rows<8>(W, K, A + i * ar, ar, ak, B, ldb, C + i * ldc, ldc, accumulate);
  const float* a = A + i * ar;
  float* c = C + i * ldc;
  switch (M - i) {
    case 7: gemm_rows<7>(W, K, a, ar, ak, B, ldb, c, ldc, accumulate); break;
    case 6: gemm_rows<6>(W, K, a, ar, ak, B, ldb, c, ldc, accumulate); break;
    case 5: gemm_rows<5>(W, K, a, ar, ak, B, ldb, c, ldc, accumulate); break;
    case 4: gemm_rows<4>(W, K, a, ar, ak, B, ldb, c, ldc, accumulate); break;
    case 3: gemm_rows<3>(W, K, a, ar, ak, B, ldb, c, ldc, accumulate); break;
    case 2: gemm_rows<2>(W, K, a, ar, ak, B, ldb, c, ldc, accumulate); break;
    case 1: gemm_rows<1>(W, K, a, ar, ak, B, ldb, c, ldc, accumulate); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// Per-thread staging memory (not tensors: bounded by a few tiles, independent of N).
float* scratch(size_t floats) {
  thread_local std::vector<float> buf;
  if (buf.size() < floats + 16) buf.assign(floats + 16, 0.f);
  auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - addr % 64) % 64) / sizeof(float);
}

struct Dims {
  int64_t B, H, N, d, dp;  // dp: d rounded up to 16
};

// Rows [base, base + n) of a segment side, with their positions (row chunk of a block).
struct Chunk {
  int64_t block, offset, count;  // rows [bounds[block] + offset, + count)
};

std::vector<Chunk> chunks_of(const std::vector<int64_t>& bounds) {
  std::vector<Chunk> out;
  for (size_t b = 0; b + 1 < bounds.size(); ++b)
    for (int64_t o = 0; o < bounds[b + 1] - bounds[b]; o += kTile)
      out.push_back({static_cast<int64_t>(b), o, std::min(kTile, bounds[b + 1] - bounds[b] - o)});
  return out;
}

// Gathers rows pos[r] of src [N, d] into dst [n, dp] (times `mul`), zero-padding columns d..dp.
void stage_rows(const float* src, const int64_t* pos, int64_t n, int64_t d, int64_t dp, float mul, float* dst) {
  for (int64_t r = 0; r < n; ++r) {
    const float* s = src + pos[r] * d;
    float* o = dst + r * dp;
    for (int64_t t = 0; t < d; ++t) o[t] = s[t] * mul;
    for (int64_t t = d; t < dp; ++t) o[t] = 0.f;
  }
}
// Gathers rows pos[r] of src [N, d] transposed into dst [d, np] (times `mul`), zero-padding n..np.
void stage_cols(const float* src, const int64_t* pos, int64_t n, int64_t np, int64_t d, float mul, float* dst) {
  for (int64_t t = 0; t < d; ++t) std::fill(dst + t * np + n, dst + (t + 1) * np, 0.f);
  for (int64_t r = 0; r < n; ++r) {
    const float* s = src + pos[r] * d;
    for (int64_t t = 0; t < d; ++t) dst[t * np + r] = s[t] * mul;
  }
}

// Applies the key bias, the element mask and causality to a score tile S[rows, ld] whose element
// (r, c) is query qpos[r], key kpos[c] (transposed = false) or, transposed, S[c, r] for key c.
struct TileMask {
  const float* key_bias = nullptr;  // [N] additive, or null
  const uint8_t* mask = nullptr;    // element mask of the block pair, or null
  int64_t mask_ld = 0;              // key block size
  int64_t mask_r0 = 0, mask_c0 = 0; // chunk offsets inside the block pair
  bool causal = false;
};

void apply_mask(float* S, int64_t ld, const int64_t* qpos, int64_t rn, const int64_t* kpos, int64_t cn,
                const TileMask& m) {
  for (int64_t r = 0; r < rn; ++r) {
    float* s = S + r * ld;
    if (m.key_bias)
      for (int64_t c = 0; c < cn; ++c) s[c] += m.key_bias[kpos[c]];
    if (m.mask) {
      const uint8_t* mr = m.mask + (m.mask_r0 + r) * m.mask_ld + m.mask_c0;
      for (int64_t c = 0; c < cn; ++c)
        if (!mr[c]) s[c] = -kInf;
    }
    if (m.causal)
      for (int64_t c = 0; c < cn; ++c)
        if (kpos[c] > qpos[r]) s[c] = -kInf;
  }
}

void apply_mask_transposed(float* St, int64_t ld, const int64_t* qpos, int64_t rn, const int64_t* kpos, int64_t cn,
                           const TileMask& m) {
  for (int64_t c = 0; c < cn; ++c) {
    float* s = St + c * ld;
    if (m.key_bias) {
      const float bias = m.key_bias[kpos[c]];
      for (int64_t r = 0; r < rn; ++r) s[r] += bias;
    }
    if (m.mask) {
      const uint8_t* mc = m.mask + m.mask_r0 * m.mask_ld + m.mask_c0 + c;
      for (int64_t r = 0; r < rn; ++r)
        if (!mc[r * m.mask_ld]) s[r] = -kInf;
    }
    if (m.causal)
      for (int64_t r = 0; r < rn; ++r)
        if (kpos[c] > qpos[r]) s[r] = -kInf;
  }
}

struct Problem {
  const SparsePattern* pattern;
  Dims dims;
  const float *q, *k, *v, *key_mask;
  int64_t mask_batch;
  float scale;
  bool causal;
  const float* key_bias(int64_t b) const {
    return key_mask ? key_mask + (mask_batch == 1 ? 0 : b) * dims.N : nullptr;
  }
};

// The block list of batch b, head h: one shared list, one per head, or one per (batch, head).
int64_t csr_base(const SparseSegment& seg, int64_t b, int64_t h, int64_t H, int64_t nblocks) {
  const int64_t list = seg.heads == 1 ? 0 : seg.heads == H ? h : b * H + h;
  return list * (nblocks + 1);
}

// pos[i] = the sequence position of segment row row0 + i (i < n; at: row -> position), and the
// smallest and largest of them (N and -1 when n = 0).
template <class At>
void stage_positions(At at, int64_t row0, int64_t n, int64_t N, int64_t* pos, int64_t& lo, int64_t& hi) {
  lo = N, hi = -1;
  for (int64_t i = 0; i < n; ++i) {
    pos[i] = at(row0 + i);
    lo = std::min(lo, pos[i]);
    hi = std::max(hi, pos[i]);
  }
}

// The key tiles a query chunk sees (chunk ch of head h, query positions in [qmin, qmax]): every key
// block listed for its query block, cut into tiles of at most kTile keys, skipping blocks and tiles
// wholly in the future when causal. visit(cn) runs with the tile's key positions in kpos[0, cn) and
// its element mask in tm (the block pair's byte mask, the chunk's offsets, the causal flag).
template <class Visit>
void for_each_key_tile(const Problem& P, const SparseSegment& seg, int64_t b, int64_t h, const Chunk& ch,
                       int64_t qmin, int64_t qmax, int64_t* kpos, TileMask& tm, Visit&& visit) {
  const int64_t base = csr_base(seg, b, h, P.dims.H, seg.q_blocks()) + ch.block;
  for (int64_t e = seg.row_ptr[static_cast<size_t>(base)]; e < seg.row_ptr[static_cast<size_t>(base + 1)]; ++e) {
    const int64_t kb = seg.cols[static_cast<size_t>(e)];
    if (P.causal && seg.k_block_min[static_cast<size_t>(kb)] > qmax) continue;
    const int64_t k0 = seg.k_bounds[static_cast<size_t>(kb)], ksize = seg.k_bounds[static_cast<size_t>(kb) + 1] - k0;
    const int64_t moff = seg.mask_offset[static_cast<size_t>(e)];
    tm.mask = moff >= 0 ? seg.masks.data() + moff : nullptr;
    tm.mask_ld = ksize;
    tm.mask_r0 = ch.offset;
    for (int64_t c0 = 0; c0 < ksize; c0 += kTile) {
      const int64_t cn = std::min(kTile, ksize - c0);
      int64_t kmin, kmax;
      stage_positions([&](int64_t c) { return seg.k_at(c); }, k0 + c0, cn, P.dims.N, kpos, kmin, kmax);
      if (P.causal && kmin > qmax) continue;
      tm.mask_c0 = c0;
      tm.causal = P.causal && kmax > qmin;
      visit(cn);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The three passes. The side a task owns (its query rows, or its key rows) is staged transposed
// once per task; the other side is staged as rows per tile. Scores are computed as S^T = K . Q^T
// where the query side is fixed (forward, pass A) and as S = Q . K^T where the key side is (pass B),
// so no tile is ever transposed: products that need the other orientation read the tile with
// swapped strides, and the forward's online softmax runs on 16 query rows per vector.

// Forward over one segment: updates the running (unnormalised O, row max m, row sum l) of each row.
// O: [B*H, N, d]; m, l: [B*H, N].
void forward_segment(const Problem& P, const SparseSegment& seg, float* O, float* M, float* L) {
  const Dims D = P.dims;
  const auto chunks = chunks_of(seg.q_bounds);
  const int64_t nch = static_cast<int64_t>(chunks.size());
  const int64_t BH = D.B * D.H, d = D.d, dp = D.dp;
  kernels::parallel_for(BH * nch, 1, [&](int64_t tb, int64_t te) {
    // QsT [d, T]; Oacc, Kc, Vc [T, dp]; St [T, T]; m, l, corr [T].
    float* QsT = scratch(static_cast<size_t>(kTile * (d + 3 * dp + kTile) + 3 * kTile));
    float* Oacc = QsT + d * kTile;
    float* Kc = Oacc + kTile * dp;
    float* Vc = Kc + kTile * dp;
    float* St = Vc + kTile * dp;
    float* m = St + kTile * kTile;
    float* l = m + kTile;
    float* corr = l + kTile;
    int64_t qpos[kTile], kpos[kTile];
    for (int64_t task = tb; task < te; ++task) {
      const int64_t bh = task / nch, b = bh / D.H, h = bh % D.H;
      const Chunk ch = chunks[static_cast<size_t>(task % nch)];
      const int64_t rn = ch.count, rp = round16(rn), row0 = seg.q_bounds[static_cast<size_t>(ch.block)] + ch.offset;
      int64_t qmin, qmax;
      stage_positions([&](int64_t r) { return seg.q_at(r); }, row0, rn, D.N, qpos, qmin, qmax);
      const float* kh = P.k + bh * D.N * d;
      const float* vh = P.v + bh * D.N * d;
      float* Oh = O + bh * D.N * d;
      stage_cols(P.q + bh * D.N * d, qpos, rn, rp, d, P.scale, QsT);
      stage_rows(Oh, qpos, rn, d, dp, 1.f, Oacc);
      for (int64_t r = 0; r < rp; ++r) {
        m[r] = r < rn ? M[bh * D.N + qpos[r]] : -kInf;
        l[r] = r < rn ? L[bh * D.N + qpos[r]] : 0.f;
      }
      TileMask tm;
      tm.key_bias = P.key_bias(b);
      for_each_key_tile(P, seg, b, h, ch, qmin, qmax, kpos, tm, [&](int64_t cn) {
        stage_rows(kh, kpos, cn, d, dp, 1.f, Kc);
        stage_rows(vh, kpos, cn, d, dp, 1.f, Vc);
        gemm(cn, rp, d, Kc, dp, 1, QsT, rp, St, rp, false);  // St [cn, rp] = K . Qs^T
        apply_mask_transposed(St, rp, qpos, rn, kpos, cn, tm);
        // Online softmax, 16 query rows per vector: new max, rescale factor, probabilities, sums.
        for (int64_t r = 0; r < rp; r += 16) {
          v16 mx = vsplat(-kInf);
          for (int64_t c = 0; c < cn; ++c) mx = vmax(mx, vload(St + c * rp + r));
          const v16 m_old = vload(m + r), m_new = vmax(m_old, mx);
          const v16 shift = m_new == vsplat(-kInf) ? v16{} : m_new;  // rows with nothing visible yet
          const v16 cr = vexp(m_old - shift);                         // 0 when m_old = -inf
          v16 sum{};
          for (int64_t c = 0; c < cn; ++c) {
            const v16 p = vexp(vload(St + c * rp + r) - shift);
            vstore(St + c * rp + r, p);
            sum += p;
          }
          vstore(l + r, vload(l + r) * cr + sum);
          vstore(m + r, m_new);
          vstore(corr + r, cr);
        }
        for (int64_t r = 0; r < rn; ++r)
          if (corr[r] != 1.f) {
            float* o = Oacc + r * dp;
            const v16 cv = vsplat(corr[r]);
            for (int64_t t = 0; t < dp; t += 16) vstore(o + t, vload(o + t) * cv);
          }
        gemm(rn, dp, cn, St, 1, rp, Vc, dp, Oacc, dp, true);  // Oacc [rn, dp] += P . V (P = St^T)
      });
      for (int64_t r = 0; r < rn; ++r) {
        std::memcpy(Oh + qpos[r] * d, Oacc + r * dp, static_cast<size_t>(d) * sizeof(float));
        M[bh * D.N + qpos[r]] = m[r];
        L[bh * D.N + qpos[r]] = l[r];
      }
    }
  });
}

// Backward pass A over one segment's query blocks: dq += scale * sum_j dS_ij k_j.
void backward_queries(const Problem& P, const SparseSegment& seg, const float* lse, const float* delta,
                      const float* dout, float* dq) {
  const Dims D = P.dims;
  const auto chunks = chunks_of(seg.q_bounds);
  const int64_t nch = static_cast<int64_t>(chunks.size());
  const int64_t BH = D.B * D.H, d = D.d, dp = D.dp;
  kernels::parallel_for(BH * nch, 1, [&](int64_t tb, int64_t te) {
    // QsT, dOT [d, T]; dQacc, Kc, Vc [T, dp]; St, dSt [T, T]; Lv, Dv [T].
    float* QsT = scratch(static_cast<size_t>(kTile * (2 * d + 3 * dp + 2 * kTile) + 2 * kTile));
    float* dOT = QsT + d * kTile;
    float* dQacc = dOT + d * kTile;
    float* Kc = dQacc + kTile * dp;
    float* Vc = Kc + kTile * dp;
    float* St = Vc + kTile * dp;
    float* dSt = St + kTile * kTile;
    float* Lv = dSt + kTile * kTile;
    float* Dv = Lv + kTile;
    int64_t qpos[kTile], kpos[kTile];
    for (int64_t task = tb; task < te; ++task) {
      const int64_t bh = task / nch, b = bh / D.H, h = bh % D.H;
      const Chunk ch = chunks[static_cast<size_t>(task % nch)];
      const int64_t rn = ch.count, rp = round16(rn), row0 = seg.q_bounds[static_cast<size_t>(ch.block)] + ch.offset;
      int64_t qmin, qmax;
      stage_positions([&](int64_t r) { return seg.q_at(r); }, row0, rn, D.N, qpos, qmin, qmax);
      const float* kh = P.k + bh * D.N * d;
      const float* vh = P.v + bh * D.N * d;
      stage_cols(P.q + bh * D.N * d, qpos, rn, rp, d, P.scale, QsT);
      stage_cols(dout + bh * D.N * d, qpos, rn, rp, d, 1.f, dOT);
      std::fill(dQacc, dQacc + rn * dp, 0.f);
      for (int64_t r = 0; r < rp; ++r) {
        Lv[r] = r < rn ? lse[bh * D.N + qpos[r]] : kInf;
        Dv[r] = r < rn ? delta[bh * D.N + qpos[r]] : 0.f;
      }
      TileMask tm;
      tm.key_bias = P.key_bias(b);
      for_each_key_tile(P, seg, b, h, ch, qmin, qmax, kpos, tm, [&](int64_t cn) {
        stage_rows(kh, kpos, cn, d, dp, 1.f, Kc);
        stage_rows(vh, kpos, cn, d, dp, 1.f, Vc);
        gemm(cn, rp, d, Kc, dp, 1, QsT, rp, St, rp, false);   // St [cn, rp] = K . Qs^T
        apply_mask_transposed(St, rp, qpos, rn, kpos, cn, tm);
        gemm(cn, rp, d, Vc, dp, 1, dOT, rp, dSt, rp, false);  // dPt [cn, rp] = V . dO^T
        for (int64_t c = 0; c < cn; ++c) {
          const float* s = St + c * rp;
          float* g = dSt + c * rp;
          for (int64_t r = 0; r < rp; r += 16) {
            const v16 p = vexp(vload(s + r) - vload(Lv + r));
            vstore(g + r, p * (vload(g + r) - vload(Dv + r)));  // dSt
          }
        }
        gemm(rn, dp, cn, dSt, 1, rp, Kc, dp, dQacc, dp, true);  // dQacc [rn, dp] += dS . K (dS = dSt^T)
      });
      float* dqh = dq + bh * D.N * d;
      for (int64_t r = 0; r < rn; ++r) {
        float* o = dqh + qpos[r] * d;
        const float* a = dQacc + r * dp;
        for (int64_t t = 0; t < d; ++t) o[t] += P.scale * a[t];
      }
    }
  });
}

// Backward pass B over one segment's key blocks: dk += sum_i dS_ij (scale q_i), dv += sum_i P_ij dO_i.
void backward_keys(const Problem& P, const SparseSegment& seg, const float* lse, const float* delta,
                   const float* dout, float* dk, float* dv) {
  const Dims D = P.dims;
  const auto chunks = chunks_of(seg.k_bounds);
  const int64_t nch = static_cast<int64_t>(chunks.size()), nkb = seg.k_blocks();
  const int64_t BH = D.B * D.H, d = D.d, dp = D.dp;
  kernels::parallel_for(BH * nch, 1, [&](int64_t tb, int64_t te) {
    // KcT, VcT [d, T]; dKacc, dVacc, Qs, dOs [T, dp]; S, dS [T, T].
    float* KcT = scratch(static_cast<size_t>(kTile * (2 * d + 4 * dp + 2 * kTile)));
    float* VcT = KcT + d * kTile;
    float* dKacc = VcT + d * kTile;
    float* dVacc = dKacc + kTile * dp;
    float* Qs = dVacc + kTile * dp;
    float* dOs = Qs + kTile * dp;
    float* S = dOs + kTile * dp;
    float* dS = S + kTile * kTile;
    int64_t qpos[kTile], kpos[kTile];
    for (int64_t task = tb; task < te; ++task) {
      const int64_t bh = task / nch, b = bh / D.H, h = bh % D.H;
      const Chunk ch = chunks[static_cast<size_t>(task % nch)];
      const int64_t cn = ch.count, cp = round16(cn), col0 = seg.k_bounds[static_cast<size_t>(ch.block)] + ch.offset;
      const int64_t ksize = seg.k_bounds[static_cast<size_t>(ch.block) + 1] - seg.k_bounds[static_cast<size_t>(ch.block)];
      int64_t kmin, kmax;
      stage_positions([&](int64_t c) { return seg.k_at(c); }, col0, cn, D.N, kpos, kmin, kmax);
      const float* qh = P.q + bh * D.N * d;
      const float* dOh = dout + bh * D.N * d;
      const float* lse_h = lse + bh * D.N;
      const float* delta_h = delta + bh * D.N;
      stage_cols(P.k + bh * D.N * d, kpos, cn, cp, d, 1.f, KcT);
      stage_cols(P.v + bh * D.N * d, kpos, cn, cp, d, 1.f, VcT);
      std::fill(dKacc, dKacc + cn * dp, 0.f);
      std::fill(dVacc, dVacc + cn * dp, 0.f);
      TileMask tm;
      tm.key_bias = P.key_bias(b);
      const int64_t base = csr_base(seg, b, h, D.H, nkb) + ch.block;
      for (int64_t te2 = seg.col_ptr[static_cast<size_t>(base)]; te2 < seg.col_ptr[static_cast<size_t>(base + 1)]; ++te2) {
        const int64_t qb = seg.t_rows[static_cast<size_t>(te2)], e = seg.t_entry[static_cast<size_t>(te2)];
        if (P.causal && kmin > seg.q_block_max[static_cast<size_t>(qb)]) continue;
        const int64_t q0 = seg.q_bounds[static_cast<size_t>(qb)], qsize = seg.q_bounds[static_cast<size_t>(qb) + 1] - q0;
        const int64_t moff = seg.mask_offset[static_cast<size_t>(e)];
        tm.mask = moff >= 0 ? seg.masks.data() + moff : nullptr;
        tm.mask_ld = ksize;
        tm.mask_c0 = ch.offset;
        for (int64_t r0 = 0; r0 < qsize; r0 += kTile) {
          const int64_t rn = std::min(kTile, qsize - r0);
          int64_t qmin = D.N, qmax = -1;
          for (int64_t r = 0; r < rn; ++r) {
            qpos[r] = seg.q_at(q0 + r0 + r);
            qmin = std::min(qmin, qpos[r]);
            qmax = std::max(qmax, qpos[r]);
          }
          if (P.causal && kmin > qmax) continue;
          tm.mask_r0 = r0;
          tm.causal = P.causal && kmax > qmin;
          stage_rows(qh, qpos, rn, d, dp, P.scale, Qs);
          stage_rows(dOh, qpos, rn, d, dp, 1.f, dOs);
          gemm(rn, cp, d, Qs, dp, 1, KcT, cp, S, cp, false);   // S [rn, cp] = Qs . K^T
          apply_mask(S, cp, qpos, rn, kpos, cn, tm);
          gemm(rn, cp, d, dOs, dp, 1, VcT, cp, dS, cp, false);  // dP [rn, cp] = dO . V^T
          for (int64_t r = 0; r < rn; ++r) {
            float* s = S + r * cp;
            float* g = dS + r * cp;
            for (int64_t c = cn; c < cp; ++c) s[c] = -kInf;
            const v16 lv = vsplat(lse_h[qpos[r]]), dv = vsplat(delta_h[qpos[r]]);
            for (int64_t c = 0; c < cp; c += 16) {
              const v16 p = vexp(vload(s + c) - lv);
              vstore(s + c, p);                        // P
              vstore(g + c, p * (vload(g + c) - dv));  // dS
            }
          }
          gemm(cn, dp, rn, S, 1, cp, dOs, dp, dVacc, dp, true);  // dV [cn, dp] += P^T . dO
          gemm(cn, dp, rn, dS, 1, cp, Qs, dp, dKacc, dp, true);  // dK [cn, dp] += dS^T . Qs
        }
      }
      float* dkh = dk + bh * D.N * d;
      float* dvh = dv + bh * D.N * d;
      for (int64_t c = 0; c < cn; ++c) {
        float* ok = dkh + kpos[c] * d;
        float* ov = dvh + kpos[c] * d;
        const float* ak = dKacc + c * dp;
        const float* av = dVacc + c * dp;
        for (int64_t t = 0; t < d; ++t) ok[t] += ak[t], ov[t] += av[t];
      }
    }
  });
}

void check_pattern_fits(const SparsePattern& p, const SparseAttentionShape& s) {
  if (p.length != s.length) fail(fmt::format("pattern built for N = {}, input has N = {}", p.length, s.length));
  for (const auto& seg : p.segments)
    if (seg.heads != 1 && seg.heads != s.heads && seg.heads != s.batch * s.heads)
      fail(fmt::format("a segment has {} head patterns for {} batches x {} heads (need 1, H or B H)", seg.heads,
                       s.batch, s.heads));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Patterns

void SparseSegment::finalize(int64_t N) {
  auto check_side = [&](const std::vector<int64_t>& pos, const std::vector<int64_t>& bounds, const char* side) {
    if (bounds.empty() || bounds[0] != 0) fail(fmt::format("{} bounds must start at 0", side));
    for (size_t i = 1; i < bounds.size(); ++i)
      if (bounds[i] <= bounds[i - 1]) fail(fmt::format("{} bounds must increase strictly", side));
    const int64_t rows = bounds.back();
    if (pos.empty()) {
      if (rows != N) fail(fmt::format("{} side: identity order needs bounds ending at N = {}, got {}", side, N, rows));
      return;
    }
    if (static_cast<int64_t>(pos.size()) != rows)
      fail(fmt::format("{} side: {} positions but bounds end at {}", side, pos.size(), rows));
    std::vector<uint8_t> seen(static_cast<size_t>(N), 0);
    for (int64_t p : pos) {
      if (p < 0 || p >= N) fail(fmt::format("{} position {} outside [0, {})", side, p, N));
      if (seen[static_cast<size_t>(p)]++) fail(fmt::format("{} position {} appears twice in one segment", side, p));
    }
  };
  check_side(q_pos, q_bounds, "query");
  check_side(k_pos, k_bounds, "key");
  const int64_t nqb = q_blocks(), nkb = k_blocks();
  if (heads < 1) fail("a segment needs at least one head pattern");
  if (static_cast<int64_t>(row_ptr.size()) != heads * (nqb + 1)) fail("row_ptr has the wrong size");
  if (mask_offset.size() != cols.size()) fail("mask_offset needs one value per entry");
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t* rp = row_ptr.data() + h * (nqb + 1);
    if (h == 0 && rp[0] != 0) fail("row_ptr must start at 0");
    if (h > 0 && rp[0] != row_ptr[static_cast<size_t>(h * (nqb + 1) - 1)]) fail("row_ptr of consecutive heads must chain");
    for (int64_t qb = 0; qb < nqb; ++qb) {
      if (rp[qb + 1] < rp[qb] || rp[qb + 1] > static_cast<int64_t>(cols.size())) fail("row_ptr must not decrease");
      for (int64_t e = rp[qb]; e < rp[qb + 1]; ++e) {
        const int32_t kb = cols[static_cast<size_t>(e)];
        if (kb < 0 || kb >= nkb) fail(fmt::format("key block {} outside [0, {})", kb, nkb));
        if (e > rp[qb] && cols[static_cast<size_t>(e - 1)] >= kb) fail("key blocks of a query block must increase");
        const int64_t off = mask_offset[static_cast<size_t>(e)];
        const int64_t area = (q_bounds[static_cast<size_t>(qb) + 1] - q_bounds[static_cast<size_t>(qb)]) *
                             (k_bounds[static_cast<size_t>(kb) + 1] - k_bounds[static_cast<size_t>(kb)]);
        if (off < -1 || (off >= 0 && off + area > static_cast<int64_t>(masks.size()))) fail("mask offset out of range");
      }
    }
  }
  if (static_cast<int64_t>(cols.size()) != row_ptr.back()) fail("row_ptr must end at the number of entries");
  // Transposed index: per head, per key block, the query blocks in ascending order.
  col_ptr.assign(static_cast<size_t>(heads * (nkb + 1)), 0);
  t_rows.assign(cols.size(), 0);
  t_entry.assign(cols.size(), 0);
  for (int64_t h = 0; h < heads; ++h) {
    int64_t* cp = col_ptr.data() + h * (nkb + 1);
    const int64_t* rp = row_ptr.data() + h * (nqb + 1);
    std::vector<int64_t> count(static_cast<size_t>(nkb), 0);
    for (int64_t e = rp[0]; e < rp[nqb]; ++e) ++count[static_cast<size_t>(cols[static_cast<size_t>(e)])];
    cp[0] = rp[0];
    for (int64_t kb = 0; kb < nkb; ++kb) cp[kb + 1] = cp[kb] + count[static_cast<size_t>(kb)];
    std::vector<int64_t> fill(cp, cp + nkb);
    for (int64_t qb = 0; qb < nqb; ++qb)
      for (int64_t e = rp[qb]; e < rp[qb + 1]; ++e) {
        const int64_t at = fill[static_cast<size_t>(cols[static_cast<size_t>(e)])]++;
        t_rows[static_cast<size_t>(at)] = static_cast<int32_t>(qb);
        t_entry[static_cast<size_t>(at)] = e;
      }
  }
  q_block_max.assign(static_cast<size_t>(nqb), -1);
  k_block_min.assign(static_cast<size_t>(nkb), N);
  for (int64_t qb = 0; qb < nqb; ++qb)
    for (int64_t r = q_bounds[static_cast<size_t>(qb)]; r < q_bounds[static_cast<size_t>(qb) + 1]; ++r)
      q_block_max[static_cast<size_t>(qb)] = std::max(q_block_max[static_cast<size_t>(qb)], q_at(r));
  for (int64_t kb = 0; kb < nkb; ++kb)
    for (int64_t c = k_bounds[static_cast<size_t>(kb)]; c < k_bounds[static_cast<size_t>(kb) + 1]; ++c)
      k_block_min[static_cast<size_t>(kb)] = std::min(k_block_min[static_cast<size_t>(kb)], k_at(c));
}

std::vector<uint8_t> SparsePattern::coverage(int64_t head) const {
  const int64_t N = length;
  std::vector<uint8_t> cov(static_cast<size_t>(N * N), 0);
  for (const auto& seg : segments) {
    const int64_t h = seg.heads == 1 ? 0 : head, nqb = seg.q_blocks();
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t q0 = seg.q_bounds[static_cast<size_t>(qb)], qn = seg.q_bounds[static_cast<size_t>(qb) + 1] - q0;
      const int64_t base = h * (nqb + 1) + qb;
      for (int64_t e = seg.row_ptr[static_cast<size_t>(base)]; e < seg.row_ptr[static_cast<size_t>(base + 1)]; ++e) {
        const int64_t kb = seg.cols[static_cast<size_t>(e)];
        const int64_t k0 = seg.k_bounds[static_cast<size_t>(kb)], kn = seg.k_bounds[static_cast<size_t>(kb) + 1] - k0;
        const int64_t off = seg.mask_offset[static_cast<size_t>(e)];
        for (int64_t r = 0; r < qn; ++r)
          for (int64_t c = 0; c < kn; ++c)
            if (off < 0 || seg.masks[static_cast<size_t>(off + r * kn + c)])
              ++cov[static_cast<size_t>(seg.q_at(q0 + r) * N + seg.k_at(k0 + c))];
      }
    }
  }
  return cov;
}

double SparsePattern::computed_pairs(int64_t heads, bool causal) const {
  double total = 0;
  for (const auto& seg : segments) {
    const int64_t nqb = seg.q_blocks();
    const int64_t patterns = seg.heads == 1 ? 1 : seg.heads;  // B H lists: summed over the batch too
    const double repeat = seg.heads == 1 ? static_cast<double>(heads) : 1.0;
    for (int64_t h = 0; h < patterns; ++h)
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const int64_t base = h * (nqb + 1) + qb;
        const double qn = static_cast<double>(seg.q_bounds[static_cast<size_t>(qb) + 1] - seg.q_bounds[static_cast<size_t>(qb)]);
        for (int64_t e = seg.row_ptr[static_cast<size_t>(base)]; e < seg.row_ptr[static_cast<size_t>(base + 1)]; ++e) {
          const int64_t kb = seg.cols[static_cast<size_t>(e)];
          if (causal && seg.k_block_min[static_cast<size_t>(kb)] > seg.q_block_max[static_cast<size_t>(qb)]) continue;
          total += repeat * qn *
                   static_cast<double>(seg.k_bounds[static_cast<size_t>(kb) + 1] - seg.k_bounds[static_cast<size_t>(kb)]);
        }
      }
  }
  return total;
}

std::vector<int64_t> uniform_bounds(int64_t n, int64_t block) {
  if (block < 1) fail("block size must be at least 1");
  std::vector<int64_t> b;
  for (int64_t i = 0; i < n; i += block) b.push_back(i);
  b.push_back(n);
  if (n == 0) b = {0};
  return b;
}

SparseSegment build_segment(int64_t length, SegmentAxes axes, int64_t heads, const BlockLister& blocks,
                            const ElementRule& rule) {
  SparseSegment s;
  s.heads = heads;
  s.q_pos = std::move(axes.q_pos);
  s.k_pos = std::move(axes.k_pos);
  s.q_bounds = std::move(axes.q_bounds);
  s.k_bounds = std::move(axes.k_bounds);
  const int64_t nqb = s.q_blocks(), nkb = s.k_blocks();
  std::vector<int32_t> list;
  std::vector<uint8_t> tile;
  s.row_ptr.push_back(0);
  for (int64_t h = 0; h < heads; ++h) {
    if (h > 0) s.row_ptr.push_back(s.row_ptr.back());
    for (int64_t qb = 0; qb < nqb; ++qb) {
      list.clear();
      blocks(h, qb, list);
      std::sort(list.begin(), list.end());
      list.erase(std::unique(list.begin(), list.end()), list.end());
      const int64_t q0 = s.q_bounds[static_cast<size_t>(qb)], qn = s.q_bounds[static_cast<size_t>(qb) + 1] - q0;
      for (int32_t kb : list) {
        if (kb < 0 || kb >= nkb) fail(fmt::format("block lister gave key block {} outside [0, {})", kb, nkb));
        int64_t offset = -1;
        if (rule) {
          const int64_t k0 = s.k_bounds[static_cast<size_t>(kb)], kn = s.k_bounds[static_cast<size_t>(kb) + 1] - k0;
          tile.resize(static_cast<size_t>(qn * kn));
          int64_t allowed = 0;
          for (int64_t r = 0; r < qn; ++r) {
            const int64_t i = s.q_at(q0 + r);
            for (int64_t c = 0; c < kn; ++c) {
              const bool ok = rule(h, i, s.k_at(k0 + c));
              tile[static_cast<size_t>(r * kn + c)] = ok;
              allowed += ok;
            }
          }
          if (allowed == 0) continue;
          if (allowed < qn * kn) {
            offset = static_cast<int64_t>(s.masks.size());
            s.masks.insert(s.masks.end(), tile.begin(), tile.end());
          }
        }
        s.cols.push_back(kb);
        s.mask_offset.push_back(offset);
      }
      s.row_ptr.push_back(static_cast<int64_t>(s.cols.size()));
    }
  }
  if (nqb == 0) s.row_ptr.assign(static_cast<size_t>(heads), 0);
  s.finalize(length);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Kernels

void block_sparse_forward(const SparsePattern& p, const SparseAttentionShape& s, const float* q, const float* k,
                          const float* v, const float* key_mask, int64_t mask_batch, float scale, bool causal,
                          float* o, float* lse) {
  check_pattern_fits(p, s);
  const Dims D{s.batch, s.heads, s.length, s.head_dim, round16(s.head_dim)};
  const int64_t rows = D.B * D.H * D.N;
  // Running state: o holds the unnormalised sum, m the row max, l the row sum.
  std::fill(o, o + rows * D.d, 0.f);
  Tensor ml = Tensor::empty({2, rows});
  float* m = ml.data();
  float* l = m + rows;
  std::fill(m, m + rows, -kInf);
  std::fill(l, l + rows, 0.f);
  const Problem P{&p, D, q, k, v, key_mask, mask_batch, scale, causal};
  for (const auto& seg : p.segments)
    if (seg.q_blocks() > 0 && seg.k_blocks() > 0) forward_segment(P, seg, o, m, l);
  kernels::parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / std::max<int64_t>(D.d, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* orow = o + r * D.d;
      if (l[r] > 0.f) {
        const float inv = 1.f / l[r];
        for (int64_t t = 0; t < D.d; ++t) orow[t] *= inv;
        lse[r] = m[r] + std::log(l[r]);
      } else {
        std::fill(orow, orow + D.d, 0.f);
        lse[r] = kInf;
      }
    }
  });
}

void block_sparse_backward(const SparsePattern& p, const SparseAttentionShape& s, const float* q, const float* k,
                           const float* v, const float* key_mask, int64_t mask_batch, float scale, bool causal,
                           const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  check_pattern_fits(p, s);
  const Dims D{s.batch, s.heads, s.length, s.head_dim, round16(s.head_dim)};
  const int64_t rows = D.B * D.H * D.N;
  // delta_i = dO_i . O_i = sum_j P_ij dP_ij
  Tensor delta_t = Tensor::empty({rows});
  float* delta = delta_t.data();
  kernels::parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / std::max<int64_t>(D.d, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float acc = 0;
      for (int64_t t = 0; t < D.d; ++t) acc += dout[r * D.d + t] * o[r * D.d + t];
      delta[r] = acc;
    }
  });
  std::fill(dq, dq + rows * D.d, 0.f);
  std::fill(dk, dk + rows * D.d, 0.f);
  std::fill(dv, dv + rows * D.d, 0.f);
  const Problem P{&p, D, q, k, v, key_mask, mask_batch, scale, causal};
  for (const auto& seg : p.segments) {
    if (seg.q_blocks() == 0 || seg.k_blocks() == 0) continue;
    backward_queries(P, seg, lse, delta, dout, dq);
    backward_keys(P, seg, lse, delta, dout, dk, dv);
  }
}

double block_sparse_attention_flops(const SparsePattern& pattern, int64_t batch, int64_t heads, int64_t head_dim,
                                    bool causal) {
  return 4.0 * static_cast<double>(batch) * static_cast<double>(head_dim) * pattern.computed_pairs(heads, causal);
}

Cost block_sparse_mixer_cost(const SparsePattern& pattern, const CostArgs& a, bool causal) {
  const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
  Cost c;
  c.flops = 8 * B * N * D * D + block_sparse_attention_flops(pattern, a.batch, a.heads, a.d_model / a.heads, causal);
  c.activation_bytes = block_sparse_activation_bytes(B, N, D, H);
  c.peak_bytes = 4 * (9 * B * N * D + B * H * N + D * D);
  return c;
}

Var block_sparse_attention(const Var& q, const Var& k, const Var& v, std::shared_ptr<const SparsePattern> pattern,
                           float scale, bool causal, const Tensor* key_mask) {
  if (!pattern) fail("no pattern");
  if (q.rank() != 4 || k.shape() != q.shape() || v.shape() != q.shape())
    fail(fmt::format("q, k, v must all be [B, H, N, d]; got {}, {}, {}", shape_str(q.shape()), shape_str(k.shape()),
                     shape_str(v.shape())));
  const SparseAttentionShape s{q.dim(0), q.dim(1), q.dim(2), q.dim(3)};
  Tensor mask;
  int64_t mask_batch = 0;
  if (key_mask) {
    mask = *key_mask;
    mask_batch = mask.rank() > 0 ? mask.dim(0) : 0;
    if ((mask_batch != 1 && mask_batch != s.batch) || mask.numel() != mask_batch * s.length)
      fail(fmt::format("key mask {} does not fit [B or 1, 1, 1, N] for B = {}, N = {}", shape_str(mask.shape()), s.batch,
                       s.length));
  }
  Tensor o = Tensor::empty(q.shape());
  Tensor lse = Tensor::empty({s.batch, s.heads, s.length});
  block_sparse_forward(*pattern, s, q.value().data(), k.value().data(), v.value().data(),
                       mask.defined() ? mask.data() : nullptr, mask_batch, scale, causal, o.data(), lse.data());
  const GradSink gq = q.sink(), gk = k.sink(), gv = v.sink();
  const bool wanted = gq.wanted() || gk.wanted() || gv.wanted();
  const Tensor qv = wanted ? q.value() : Tensor(), kv = wanted ? k.value() : Tensor(), vv = wanted ? v.value() : Tensor();
  const Tensor ov = wanted ? o : Tensor(), lv = wanted ? lse : Tensor();
  return make_op_result(std::move(o), {q, k, v},
                        [gq, gk, gv, qv, kv, vv, ov, lv, mask, mask_batch, pattern, s, scale, causal](const Tensor& g) {
                          Tensor dq = Tensor::empty(qv.shape()), dk = Tensor::empty(qv.shape()),
                                 dv = Tensor::empty(qv.shape());
                          block_sparse_backward(*pattern, s, qv.data(), kv.data(), vv.data(),
                                                mask.defined() ? mask.data() : nullptr, mask_batch, scale, causal,
                                                ov.data(), lv.data(), g.data(), dq.data(), dk.data(), dv.data());
                          gq.accumulate(dq);
                          gk.accumulate(dk);
                          gv.accumulate(dv);
                        });
}

SparsePattern block_diagonal_pattern(int64_t length, int64_t block) {
  SparsePattern p;
  p.length = length;
  const auto bounds = uniform_bounds(length, block);
  p.segments.push_back(build_segment(length, {{}, {}, bounds, bounds}, 1,
                                     [](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
                                       kbs.push_back(static_cast<int32_t>(qb));
                                     }));
  return p;
}

}  // namespace ab
