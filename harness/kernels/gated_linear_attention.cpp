// Gated linear attention: recurrent, parallel and chunked forms with hand-written backward
// (see gated_linear_attention.hpp for the maths). Scalar decays, chunked: the SSD path (batched
// oneDNN matmuls, below). Otherwise TBB over batch * head; per (batch, head) the loops are
// sequential over positions or chunks, the inner loops run over dk or dv (vectorised).
#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/params.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "core/backend/onednn.hpp"
#include "kernels/detail/vec.hpp"

namespace ab {

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("gated_linear_attention: " + what);
}

struct Dims {
  int64_t B, H, Hq, Hk, N, K, V;
  bool vec;  // per-key-dimension decay
};

Dims check_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g) {
  require(q.rank() == 4 && k.rank() == 4 && v.rank() == 4,
          fmt::format("q {}, k {}, v {} must be rank 4", shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape())));
  Dims d{v.dim(0), v.dim(1), q.dim(1), k.dim(1), v.dim(2), q.dim(3), v.dim(3), false};
  require(q.dim(0) == d.B && k.dim(0) == d.B && q.dim(2) == d.N && k.dim(2) == d.N && k.dim(3) == d.K,
          fmt::format("q {}, k {} do not fit v {}", shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape())));
  require((d.Hq == 1 || d.Hq == d.H) && (d.Hk == 1 || d.Hk == d.H),
          fmt::format("q and k heads ({}, {}) must be 1 or {}", d.Hq, d.Hk, d.H));
  const Shape scalar{d.B, d.H, d.N}, vector{d.B, d.H, d.N, d.K};
  require(g.shape() == scalar || g.shape() == vector,
          fmt::format("log_alpha {} must be {} or {}", shape_str(g.shape()), shape_str(scalar), shape_str(vector)));
  d.vec = g.rank() == 4;
  return d;
}

// Reverses the sequence axis (dim 2) of a [B, H', N, *] or [B, H', N] tensor.
Tensor flip_seq(const Tensor& t) {
  const int64_t outer = t.dim(0) * t.dim(1), N = t.dim(2), inner = t.numel() / std::max<int64_t>(1, outer * N);
  Tensor y = Tensor::empty(t.shape());
  const float* src = t.data();
  float* dst = y.data();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t n = 0; n < N; ++n)
      std::copy(src + (o * N + n) * inner, src + (o * N + n + 1) * inner, dst + (o * N + (N - 1 - n)) * inner);
  return y;
}

// Pointers of one (batch, head). Gate value of position t, key dim i: g[t * gs + (vec ? i : 0)].
struct Slice {
  const float *q, *k, *v, *g;
  int64_t N, K, V, gs;
  bool vec;
  float gate(int64_t t, int64_t i) const { return g[t * gs + (vec ? i : 0)]; }
};

Slice slice_of(const Dims& d, const float* q, const float* k, const float* v, const float* g, int64_t bh) {
  const int64_t b = bh / d.H, h = bh % d.H;
  const int64_t hq = d.Hq == 1 ? 0 : h, hk = d.Hk == 1 ? 0 : h;
  const int64_t gs = d.vec ? d.K : 1;
  return {q + (b * d.Hq + hq) * d.N * d.K, k + (b * d.Hk + hk) * d.N * d.K, v + bh * d.N * d.V, g + bh * d.N * gs,
          d.N, d.K, d.V, gs, d.vec};
}

// Not vec::dot: its fixed order of 16 partial sums would move the results of gla, mamba2 and
// retnet by about an ulp; share it when a change of results is acceptable.
inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
using vec::axpy;

// ---------------------------------------------------------------------------------------------
// Recurrent form. o: [N, V]
void recurrent_forward(const Slice& s, float* o) {
  const int64_t K = s.K, V = s.V;
  std::vector<float> S(static_cast<size_t>(K * V), 0.f);  // [K, V]
  for (int64_t t = 0; t < s.N; ++t) {
    const float* kt = s.k + t * K;
    const float* vt = s.v + t * V;
    const float* qt = s.q + t * K;
    float* ot = o + t * V;
    std::fill(ot, ot + V, 0.f);
    for (int64_t i = 0; i < K; ++i) {
      float* row = S.data() + i * V;
      const float a = std::exp(s.gate(t, i)), ki = kt[i];
      for (int64_t j = 0; j < V; ++j) row[j] = a * row[j] + ki * vt[j];
      axpy(ot, row, qt[i], V);
    }
  }
}

// do: [N, V] -> dq, dk: [N, K], dv: [N, V]
void recurrent_backward(const Slice& s, const float* dO, float* dq, float* dk, float* dv) {
  const int64_t K = s.K, V = s.V;
  std::vector<float> S(static_cast<size_t>(K * V), 0.f);
  for (int64_t t = 0; t < s.N; ++t) {  // dq_t = S_t do_t
    const float* kt = s.k + t * K;
    const float* vt = s.v + t * V;
    for (int64_t i = 0; i < K; ++i) {
      float* row = S.data() + i * V;
      const float a = std::exp(s.gate(t, i)), ki = kt[i];
      for (int64_t j = 0; j < V; ++j) row[j] = a * row[j] + ki * vt[j];
      dq[t * K + i] = dot(row, dO + t * V, V);
    }
  }
  std::fill(S.begin(), S.end(), 0.f);  // now dS_t = diag(alpha_{t+1}) dS_{t+1} + q_t do_t^T
  for (int64_t t = s.N - 1; t >= 0; --t) {
    const float* qt = s.q + t * K;
    const float* kt = s.k + t * K;
    const float* vt = s.v + t * V;
    const float* dot_ = dO + t * V;
    float* dvt = dv + t * V;
    std::fill(dvt, dvt + V, 0.f);
    for (int64_t i = 0; i < K; ++i) {
      float* row = S.data() + i * V;
      axpy(row, dot_, qt[i], V);
      dk[t * K + i] = dot(row, vt, V);
      axpy(dvt, row, kt[i], V);
      const float a = std::exp(s.gate(t, i));
      for (int64_t j = 0; j < V; ++j) row[j] *= a;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Parallel form: scores A[t, u] = sum_i q_t[i] k_u[i] exp(G_t[i] - G_u[i]) for u <= t.
struct Cumulative {
  std::vector<double> G;  // [N, gs], inclusive cumulative sums
  explicit Cumulative(const Slice& s) : G(static_cast<size_t>(s.N * s.gs)) {
    for (int64_t i = 0; i < s.gs; ++i) {
      double acc = 0;
      for (int64_t t = 0; t < s.N; ++t) G[t * s.gs + i] = acc += s.g[t * s.gs + i];
    }
  }
};

// A: [N, N] from the tracking allocator (so memory figures see the quadratic buffer); u > t unset.
Tensor parallel_scores(const Slice& s, const Cumulative& c) {
  const int64_t N = s.N, K = s.K, gs = s.gs;
  Tensor A = Tensor::empty({N, N});
  for (int64_t t = 0; t < N; ++t)
    for (int64_t u = 0; u <= t; ++u) {
      float a;
      if (!s.vec) {
        a = dot(s.q + t * K, s.k + u * K, K) * static_cast<float>(std::exp(c.G[t] - c.G[u]));
      } else {
        a = 0.f;
        for (int64_t i = 0; i < K; ++i)
          a += s.q[t * K + i] * s.k[u * K + i] * static_cast<float>(std::exp(c.G[t * gs + i] - c.G[u * gs + i]));
      }
      A[t * N + u] = a;
    }
  return A;
}

void parallel_forward(const Slice& s, float* o) {
  const Cumulative c(s);
  const Tensor A = parallel_scores(s, c);
  for (int64_t t = 0; t < s.N; ++t) {
    float* ot = o + t * s.V;
    std::fill(ot, ot + s.V, 0.f);
    for (int64_t u = 0; u <= t; ++u) axpy(ot, s.v + u * s.V, A[t * s.N + u], s.V);
  }
}

void parallel_backward(const Slice& s, const float* dO, float* dq, float* dk, float* dv) {
  const int64_t N = s.N, K = s.K, V = s.V, gs = s.gs;
  const Cumulative c(s);
  const Tensor A = parallel_scores(s, c);
  std::fill(dq, dq + N * K, 0.f);
  std::fill(dk, dk + N * K, 0.f);
  std::fill(dv, dv + N * V, 0.f);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t u = 0; u <= t; ++u) {
      axpy(dv + u * V, dO + t * V, A[t * N + u], V);
      const float dA = dot(dO + t * V, s.v + u * V, V);
      if (!s.vec) {
        const float e = static_cast<float>(std::exp(c.G[t] - c.G[u]));
        axpy(dq + t * K, s.k + u * K, dA * e, K);
        axpy(dk + u * K, s.q + t * K, dA * e, K);
        continue;
      }
      for (int64_t i = 0; i < K; ++i) {
        const float e = static_cast<float>(std::exp(c.G[t * gs + i] - c.G[u * gs + i]));
        dq[t * K + i] += dA * e * s.k[u * K + i];
        dk[u * K + i] += dA * e * s.q[t * K + i];
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunked form. Per chunk [c0, c0 + L): b = cumulative log decays from the chunk start
// (inclusive), intra scores A[l, m] = sum_i q_l[i] k_m[i] exp(b_l[i] - b_m[i]) (m <= l), and the
// decayed rows qe_l = q_l * exp(b_l), ke_m = k_m * exp(b_last - b_m) for the state passing.
// Scalar decays also keep the chunk's pairwise decay matrix D [C, C] (D[l, m] = exp(b_l - b_m),
// m <= l; built once per chunk_prepare instead of one exp per pair in every intra_* pass) and a
// transposed copy yT [max(K, V), C] of the rows a score pass multiplies against.
struct ChunkScratch {
  std::vector<float> b, A, dA, qe, ke, ebl, xt, yt, D, yT;  // [C, gs], [C, C] x2, [C, K] x2, [K], [C, K] x2, [C, C], [max(K, V), C]
  std::vector<float> sT, row;  // backward: a state (gradient) transposed [V, K], one [K] row
  ChunkScratch(int64_t C, int64_t K, int64_t V, int64_t gs)
      : b(static_cast<size_t>(C * gs)), A(static_cast<size_t>(C * C)), dA(static_cast<size_t>(C * C)),
        qe(static_cast<size_t>(C * K)), ke(static_cast<size_t>(C * K)), ebl(static_cast<size_t>(K)),
        xt(static_cast<size_t>(C * K)), yt(static_cast<size_t>(C * K)), D(gs == 1 ? static_cast<size_t>(C * C) : 0),
        yT(static_cast<size_t>(C * std::max(K, V))), sT(static_cast<size_t>(K * V)), row(static_cast<size_t>(K)) {}
};

// r[K] = M [K, V] x (x [V]) for a series of x against one M: M is transposed once into w.sT [V, K]
// (transpose_state), then each product is V axpys of length K (vectorised, no horizontal sum; the
// K dot products of length V with a 16-lane reduction each were latency-bound, 2/3 of backward).
void transpose_state(const float* M, int64_t K, int64_t V, ChunkScratch& w) {
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < V; ++j) w.sT[j * K + i] = M[i * V + j];
}
const float* state_times(const float* x, int64_t K, int64_t V, ChunkScratch& w) {
  float* r = w.row.data();
  std::fill(r, r + K, 0.f);
  for (int64_t j = 0; j < V; ++j) axpy(r, w.sT.data() + j * K, x[j], K);
  return r;
}

// S[l, m] = X_l . Y_m for m <= l < L (X [L, n], Y [L, n] rows), as rank-1 updates of each row of S
// over a transposed Y (w.yT), so the inner loop runs over m (vectorised) and no dot product of
// length n (16 or 32 here) ends in a horizontal sum.
constexpr int64_t kFullChunk = 64;  // the default chunk (GatedLinearAttentionOptions::chunk)
void lower_products(const float* X, const float* Y, int64_t L, int64_t n, ChunkScratch& w, float* S) {
  float* yT = w.yT.data();
  for (int64_t m = 0; m < L; ++m)
    for (int64_t i = 0; i < n; ++i) yT[i * L + m] = Y[m * n + i];
  if (L == kFullChunk) {
    // Full chunks of the default length: whole rows in a fixed-size register accumulator (the
    // upper triangle is computed and dropped; cheaper than a variable trip count per (l, i)).
    for (int64_t l = 0; l < L; ++l) {
      float acc[kFullChunk] = {};
      for (int64_t i = 0; i < n; ++i) {
        const float x = X[l * n + i];
        const float* y = yT + i * kFullChunk;
#pragma omp simd
        for (int64_t m = 0; m < kFullChunk; ++m) acc[m] += x * y[m];
      }
      std::copy(acc, acc + l + 1, S + l * L);
    }
    return;
  }
  for (int64_t l = 0; l < L; ++l) {
    float* s = S + l * L;
    std::fill(s, s + l + 1, 0.f);
    for (int64_t i = 0; i < n; ++i) {
      const float x = X[l * n + i];
      const float* y = yT + i * L;
#pragma omp simd
      for (int64_t m = 0; m <= l; ++m) s[m] += x * y[m];
    }
  }
}

// Fills b, qe, ke and ebl = exp(b_last) for the chunk starting at c0 of length L.
void chunk_prepare(const Slice& s, int64_t c0, int64_t L, ChunkScratch& w) {
  const int64_t K = s.K, gs = s.gs;
  for (int64_t i = 0; i < gs; ++i) {
    float acc = 0.f;
    for (int64_t l = 0; l < L; ++l) w.b[l * gs + i] = acc += s.g[(c0 + l) * gs + i];
  }
  const float* bl = w.b.data() + (L - 1) * gs;
  for (int64_t l = 0; l < L; ++l) {
    const float* ql = s.q + (c0 + l) * K;
    const float* kl = s.k + (c0 + l) * K;
    const float* bb = w.b.data() + l * gs;
    float* qe = w.qe.data() + l * K;
    float* ke = w.ke.data() + l * K;
    if (!s.vec) {
      const float eq = std::exp(bb[0]), ek = std::exp(bl[0] - bb[0]);
      for (int64_t i = 0; i < K; ++i) {
        qe[i] = ql[i] * eq;
        ke[i] = kl[i] * ek;
      }
    } else {
      for (int64_t i = 0; i < K; ++i) {
        qe[i] = ql[i] * std::exp(bb[i]);
        ke[i] = kl[i] * std::exp(bl[i] - bb[i]);
      }
    }
  }
  for (int64_t i = 0; i < K; ++i) w.ebl[i] = std::exp(bl[s.vec ? i : 0]);
  if (!s.vec) {
    // D[l, m] = prod_{m < u <= l} alpha_u = D[l - 1, m] alpha_l: one exp per row, the rest a
    // vectorised product (at most C - 1 roundings, ~4e-6 relative at C = 64; exp of the float
    // cumulative sums b_l - b_m carries a comparable error from the sums themselves).
    for (int64_t l = 0; l < L; ++l) {
      float* d = w.D.data() + l * L;
      d[l] = 1.f;
      if (l == 0) continue;
      const float a = std::exp(s.g[c0 + l]);
      const float* prev = d - L;
#pragma omp simd
      for (int64_t m = 0; m < l; ++m) d[m] = prev[m] * a;
    }
  }
}

// Decay factor exp(b_l[i] - b_m[i]) inside the chunk.
inline float rel_decay(const ChunkScratch& w, int64_t gs, int64_t l, int64_t m, int64_t i) {
  return std::exp(w.b[l * gs + i] - w.b[m * gs + i]);
}

// Per-key-dimension decays inside a chunk are handled in sub-blocks of kSub positions (fla's
// secondary chunking): pairs in one sub-block take exp(b_l - b_m) pairwise; for a sub-block I
// starting at p > 0 and every m < p, exp(b_l - b_m) = exp(b_l - b_r) exp(b_r - b_m) with r = p - 1,
// both factors <= 1 (no overflow), so those scores are plain dot products of decayed rows.
constexpr int64_t kSub = 16;

// Rows x_l * exp(b_l - b_r) for l in [p, e) -> w.xt (from row 0), y_m * exp(b_r - b_m) for m < p -> w.yt.
void decayed_rows(const Slice& s, const float* X, const float* Y, int64_t p, int64_t e, ChunkScratch& w) {
  const int64_t K = s.K;
  const float* br = w.b.data() + (p - 1) * K;
  if (X)
    for (int64_t l = p; l < e; ++l)
      for (int64_t i = 0; i < K; ++i) w.xt[(l - p) * K + i] = X[l * K + i] * std::exp(w.b[l * K + i] - br[i]);
  if (Y)
    for (int64_t m = 0; m < p; ++m)
      for (int64_t i = 0; i < K; ++i) w.yt[m * K + i] = Y[m * K + i] * std::exp(br[i] - w.b[m * K + i]);
}

// A[l, m] = sum_i q_l[i] k_m[i] exp(b_l[i] - b_m[i]) for m <= l < L (rows of the chunk: Q, Kc).
void intra_scores(const Slice& s, const float* Q, const float* Kc, int64_t L, ChunkScratch& w, float* A) {
  const int64_t K = s.K, gs = s.gs;
  if (!s.vec) {
    lower_products(Q, Kc, L, K, w, A);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t m = 0; m <= l; ++m) A[l * L + m] *= w.D[l * L + m];
    return;
  }
  for (int64_t p = 0; p < L; p += kSub) {
    const int64_t e = std::min(L, p + kSub);
    for (int64_t l = p; l < e; ++l)  // diagonal sub-block
      for (int64_t m = p; m <= l; ++m) {
        float a = 0.f;
        for (int64_t i = 0; i < K; ++i) a += Q[l * K + i] * Kc[m * K + i] * rel_decay(w, gs, l, m, i);
        A[l * L + m] = a;
      }
    if (p == 0) continue;
    decayed_rows(s, Q, Kc, p, e, w);
    for (int64_t l = p; l < e; ++l)
      for (int64_t m = 0; m < p; ++m) A[l * L + m] = dot(w.xt.data() + (l - p) * K, w.yt.data() + m * K, K);
  }
}

// dQ_l += sum_{m <= l} dA[l, m] k_m * exp(b_l - b_m)
void intra_dq(const Slice& s, const float* Kc, int64_t L, ChunkScratch& w, const float* dA, float* dQ) {
  const int64_t K = s.K, gs = s.gs;
  if (!s.vec) {
    for (int64_t l = 0; l < L; ++l)
      for (int64_t m = 0; m <= l; ++m) axpy(dQ + l * K, Kc + m * K, dA[l * L + m] * w.D[l * L + m], K);
    return;
  }
  std::vector<float> tmp(static_cast<size_t>(K));
  for (int64_t p = 0; p < L; p += kSub) {
    const int64_t e = std::min(L, p + kSub);
    for (int64_t l = p; l < e; ++l)
      for (int64_t m = p; m <= l; ++m)
        for (int64_t i = 0; i < K; ++i) dQ[l * K + i] += dA[l * L + m] * Kc[m * K + i] * rel_decay(w, gs, l, m, i);
    if (p == 0) continue;
    decayed_rows(s, nullptr, Kc, p, e, w);
    const float* br = w.b.data() + (p - 1) * K;
    for (int64_t l = p; l < e; ++l) {
      std::fill(tmp.begin(), tmp.end(), 0.f);
      for (int64_t m = 0; m < p; ++m) axpy(tmp.data(), w.yt.data() + m * K, dA[l * L + m], K);
      for (int64_t i = 0; i < K; ++i) dQ[l * K + i] += std::exp(w.b[l * K + i] - br[i]) * tmp[i];
    }
  }
}

// dKc_m += sum_{l >= m} dA[l, m] q_l * exp(b_l - b_m)
void intra_dk(const Slice& s, const float* Q, int64_t L, ChunkScratch& w, const float* dA, float* dKc) {
  const int64_t K = s.K, gs = s.gs;
  if (!s.vec) {
    for (int64_t l = 0; l < L; ++l)
      for (int64_t m = 0; m <= l; ++m) axpy(dKc + m * K, Q + l * K, dA[l * L + m] * w.D[l * L + m], K);
    return;
  }
  std::vector<float> tmp(static_cast<size_t>(K));
  for (int64_t p = 0; p < L; p += kSub) {
    const int64_t e = std::min(L, p + kSub);
    for (int64_t l = p; l < e; ++l)
      for (int64_t m = p; m <= l; ++m)
        for (int64_t i = 0; i < K; ++i) dKc[m * K + i] += dA[l * L + m] * Q[l * K + i] * rel_decay(w, gs, l, m, i);
    if (p == 0) continue;
    decayed_rows(s, Q, nullptr, p, e, w);
    const float* br = w.b.data() + (p - 1) * K;
    for (int64_t m = 0; m < p; ++m) {
      std::fill(tmp.begin(), tmp.end(), 0.f);
      for (int64_t l = p; l < e; ++l) axpy(tmp.data(), w.xt.data() + (l - p) * K, dA[l * L + m], K);
      for (int64_t i = 0; i < K; ++i) dKc[m * K + i] += std::exp(br[i] - w.b[m * K + i]) * tmp[i];
    }
  }
}

// dA[l, m] = do_l . v_m for m <= l (rows of the chunk).
void intra_dscores(const Slice& s, const float* dO, const float* Vc, int64_t L, ChunkScratch& w, float* dA) {
  lower_products(dO, Vc, L, s.V, w, dA);
}

// S <- diag(exp(b_last)) S + ke^T v_chunk
void chunk_state_update(const Slice& s, int64_t c0, int64_t L, const ChunkScratch& w, float* S) {
  const int64_t K = s.K, V = s.V;
  for (int64_t i = 0; i < K; ++i) {
    float* row = S + i * V;
    const float a = w.ebl[i];
    for (int64_t j = 0; j < V; ++j) row[j] *= a;
  }
  for (int64_t m = 0; m < L; ++m) {
    const float* vm = s.v + (c0 + m) * V;
    const float* ke = w.ke.data() + m * K;
    for (int64_t i = 0; i < K; ++i) axpy(S + i * V, vm, ke[i], V);
  }
}

void chunked_forward(const Slice& s, int64_t C, float* o) {
  const int64_t K = s.K, V = s.V;
  ChunkScratch w(C, K, V, s.gs);
  std::vector<float> S(static_cast<size_t>(K * V), 0.f);
  for (int64_t c0 = 0; c0 < s.N; c0 += C) {
    const int64_t L = std::min(C, s.N - c0);
    chunk_prepare(s, c0, L, w);
    intra_scores(s, s.q + c0 * K, s.k + c0 * K, L, w, w.A.data());
    for (int64_t l = 0; l < L; ++l) {  // o_l = sum_{m<=l} A[l, m] v_m + qe_l^T S_prev
      float* ol = o + (c0 + l) * V;
      std::fill(ol, ol + V, 0.f);
      for (int64_t m = 0; m <= l; ++m) axpy(ol, s.v + (c0 + m) * V, w.A[l * L + m], V);
      const float* qe = w.qe.data() + l * K;
      for (int64_t i = 0; i < K; ++i) axpy(ol, S.data() + i * V, qe[i], V);
    }
    chunk_state_update(s, c0, L, w, S.data());
  }
}

void chunked_backward(const Slice& s, int64_t C, const float* dO, float* dq, float* dk, float* dv) {
  const int64_t K = s.K, V = s.V, gs = s.gs;
  ChunkScratch w(C, K, V, gs);
  std::vector<float> S(static_cast<size_t>(K * V), 0.f);
  // Forward sweep: dq_l[i] = sum_{m<=l} dA[l, m] k_m[i] exp(b_l[i] - b_m[i]) + exp(b_l[i]) S_prev[i, :] . do_l
  for (int64_t c0 = 0; c0 < s.N; c0 += C) {
    const int64_t L = std::min(C, s.N - c0);
    chunk_prepare(s, c0, L, w);
    float* dQ = dq + c0 * K;
    std::fill(dQ, dQ + L * K, 0.f);
    intra_dscores(s, dO + c0 * V, s.v + c0 * V, L, w, w.dA.data());
    intra_dq(s, s.k + c0 * K, L, w, w.dA.data(), dQ);
    transpose_state(S.data(), K, V, w);
    for (int64_t l = 0; l < L; ++l) {
      const float* sd = state_times(dO + (c0 + l) * V, K, V, w);  // S_prev do_l [K]
      const float* bb = w.b.data() + l * gs;
      for (int64_t i = 0; i < K; ++i) dQ[l * K + i] += std::exp(bb[s.vec ? i : 0]) * sd[i];
    }
    chunk_state_update(s, c0, L, w, S.data());
  }
  // Reverse sweep with dS = the gradient of the state after the current chunk.
  std::vector<float>& dS = S;
  std::fill(dS.begin(), dS.end(), 0.f);
  const int64_t last = ((s.N - 1) / C) * C;
  for (int64_t c0 = last; c0 >= 0; c0 -= C) {
    const int64_t L = std::min(C, s.N - c0);
    chunk_prepare(s, c0, L, w);
    intra_scores(s, s.q + c0 * K, s.k + c0 * K, L, w, w.A.data());
    intra_dscores(s, dO + c0 * V, s.v + c0 * V, L, w, w.dA.data());
    float* dKc = dk + c0 * K;
    float* dVc = dv + c0 * V;
    std::fill(dKc, dKc + L * K, 0.f);
    std::fill(dVc, dVc + L * V, 0.f);
    intra_dk(s, s.q + c0 * K, L, w, w.dA.data(), dKc);
    for (int64_t l = 0; l < L; ++l)  // dv_m += sum_{l >= m} A[l, m] do_l
      for (int64_t m = 0; m <= l; ++m) axpy(dVc + m * V, dO + (c0 + l) * V, w.A[l * L + m], V);
    // From the state after the chunk: S_next += ke_m v_m^T
    const float* bl = w.b.data() + (L - 1) * gs;
    transpose_state(dS.data(), K, V, w);
    for (int64_t m = 0; m < L; ++m) {
      const float* ke = w.ke.data() + m * K;
      const float* bb = w.b.data() + m * gs;
      const float es = s.vec ? 0.f : std::exp(bl[0] - bb[0]);  // exp(b_last - b_m), scalar decays
      const float* dsv = state_times(s.v + (c0 + m) * V, K, V, w);  // dS v_m [K]
      for (int64_t i = 0; i < K; ++i) {
        dKc[m * K + i] += (s.vec ? std::exp(bl[i] - bb[i]) : es) * dsv[i];
        axpy(dVc + m * V, dS.data() + i * V, ke[i], V);
      }
    }
    // dS_prev = diag(exp(b_last)) dS + sum_l qe_l do_l^T
    for (int64_t i = 0; i < K; ++i) {
      float* row = dS.data() + i * V;
      const float a = w.ebl[i];
      for (int64_t j = 0; j < V; ++j) row[j] *= a;
    }
    for (int64_t l = 0; l < L; ++l) {
      const float* qe = w.qe.data() + l * K;
      const float* dol = dO + (c0 + l) * V;
      for (int64_t i = 0; i < K; ++i) axpy(dS.data() + i * V, dol, qe[i], V);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Shared q and k with scalar decays (Mamba-2's SSD with one group, ngroups = 1): q and k [N, K]
// serve every head, so each chunk's score block Q_c K_c^T is formed once for all heads, and every
// product is a batched oneDNN matmul over the chunks (the SSD algorithm of Dao & Gu 2024, §7).
// Per chunk c of C positions and head h (b local cumulative log decays, D_hc[l, m] = exp(b_l - b_m)
// for m <= l, else 0; eb = exp(b), es = exp(b_last - b), ebl = exp(b_last), all <= 1):
//   CB_c  = Q_c K_c^T                                   [C, C], shared by the heads
//   O_hc  = (CB_c o D_hc) X_hc + diag(eb_h) (Q_c S_c)_h   S_c [K, H V]: the states of all heads before c
//   U_c   = K_c^T Xs_c,  Xs_c[m, (h, j)] = es_h,m X_h[m, j]
//   S_c+1 = diag_h(ebl_hc) S_c + U_c                     (the only sequential step; elementwise)
// The heads' states side by side ([K, H V]) make Q_c S_c and K_c^T Xs_c single wide GEMMs rather
// than H products of headdim (16) columns; only (CB o D_h) X_h stays per head (batched over heads
// and chunks). Backward (dO_h, Z_c = dS_c, R_c = Z_c+1 the gradient of the state after chunk c,
// E_hc = (dO_hc X_hc^T) o D_hc, G_c = sum_h E_hc):
//   Z_c = Q_c^T dOs_c + ebl_c Z_c+1,  dOs_c[l, (h, j)] = eb_h,l dO_h[l, j]
//   dX_hc = (CB_c o D_hc)^T dO_hc + diag(es_h) (K_c R_c)_h
//   dQ_c = G_c K_c + dOs_c S_c^T,  dK_c = G_c^T Q_c + Xs_c R_c^T   (summed over heads, as shared)
//   q_l . dq_hl = sum_m (E_hc o CB_c)[l, m] + eb_h,l dO_h[l] . (Q_c S_c)_h[l]
//   k_m . dk_hm = sum_l (E_hc o CB_c)[l, m] + es_h,m X_h[m] . (K_c R_c)_h[m]
// and dlog_alpha_h,t = sum_{u >= t} (q_u . dq_hu - k_u . dk_hu), as for the other paths.
// A last partial chunk is zero-padded (decay 1, q = k = v = 0 there: adds nothing).
// With one q and k per head (RetNet) the same code runs per (batch, head) with H = 1: its products
// are then batched over the chunks only.
// The matmuls run in fp32 whatever the process-wide matmul precision (the scans stay fp32).
struct Ssd {
  int64_t H, N, K, V, C, nc, Np, HV;
};

// Scalar decays with q and k shared by all heads (one call per batch element) or one q and k per
// head (RetNet; then each (batch, head) is a call with H = 1). One value column per head (gsa's
// slot pass) stays on the loops: its products are matrix-vector ones, and gsa's declared peak
// describes the loops' buffers.
bool ssd_applies(const Dims& d, const GatedLinearAttentionOptions& opt) {
  return opt.form == GlaForm::chunked && !d.vec && d.V > 1 && d.Hq == d.Hk && (d.Hq == 1 || d.Hq == d.H);
}

Ssd ssd_dims(const Dims& d, int64_t C) {
  const int64_t nc = (d.N + C - 1) / C, H = d.Hq == 1 ? d.H : 1;
  return {H, d.N, d.K, d.V, C, nc, nc * C, H * d.V};
}

struct Fp32Matmuls {  // the SSD products in fp32 (restores the caller's precision)
  kernels::MatmulPrecision saved = kernels::matmul_precision();
  Fp32Matmuls() {
    if (saved != kernels::MatmulPrecision::fp32) kernels::set_matmul_precision(kernels::MatmulPrecision::fp32);
  }
  ~Fp32Matmuls() {
    if (saved != kernels::MatmulPrecision::fp32) kernels::set_matmul_precision(saved);
  }
};

// src [outer, rows, w] -> [outer, rows_p, w], zero rows appended (or src itself when rows_p == rows).
const float* padded(const float* src, int64_t outer, int64_t rows, int64_t rows_p, int64_t w, Tensor& keep) {
  if (rows_p == rows) return src;
  keep = Tensor::zeros({outer, rows_p, w});
  for (int64_t o = 0; o < outer; ++o) std::copy(src + o * rows * w, src + (o + 1) * rows * w, keep.data() + o * rows_p * w);
  return keep.data();
}

// Per head, over the padded positions: alpha = exp(g) (1 in the padding), eb, es [H, Np]; ebl [nc, H].
struct SsdDecays {
  Tensor alpha, eb, es, ebl;
};
SsdDecays ssd_decays(const Ssd& s, const float* g) {  // g: [H, N]
  SsdDecays r{Tensor::empty({s.H, s.Np}), Tensor::empty({s.H, s.Np}), Tensor::empty({s.H, s.Np}),
              Tensor::empty({s.nc, s.H})};
  kernels::parallel_for(s.H, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> b(static_cast<size_t>(s.C));
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t c = 0; c < s.nc; ++c) {
        const int64_t t0 = h * s.Np + c * s.C;
        double acc = 0;
        for (int64_t l = 0; l < s.C; ++l) {
          const int64_t t = c * s.C + l;
          const float gt = t < s.N ? g[h * s.N + t] : 0.f;
          b[l] = static_cast<float>(acc += gt);
          r.alpha[t0 + l] = std::exp(gt);
        }
        const float last = b[s.C - 1];
        for (int64_t l = 0; l < s.C; ++l) {
          r.eb[t0 + l] = std::exp(b[l]);
          r.es[t0 + l] = std::exp(last - b[l]);
        }
        r.ebl[c * s.H + h] = std::exp(last);
      }
  });
  return r;
}

// Row l of D_hc from row l - 1 (D[l, m] = D[l - 1, m] alpha_l, D[l, l] = 1): one exp per position
// (in ssd_decays) instead of one per pair.
inline void next_decay_row(float* d, int64_t l, float alpha_l) {
#pragma omp simd
  for (int64_t m = 0; m < l; ++m) d[m] *= alpha_l;
  d[l] = 1.f;
}

// Heads per batched matmul of the [C, C] blocks: at most as many block elements as v has
// (N H V) and 4 MiB, at least one head.
int64_t ssd_head_group(const Ssd& s) {
  const int64_t budget = std::min<int64_t>(s.Np * s.HV, int64_t{1} << 20);
  return std::clamp<int64_t>(budget / std::max<int64_t>(1, s.nc * s.C * s.C), 1, s.H);
}

// M [hg, nc, C, C] = CB o D_h for heads [h0, h0 + hg).
void ssd_masked_scores(const Ssd& s, const SsdDecays& dec, const float* CB, int64_t h0, int64_t hg, float* M) {
  const int64_t C = s.C;
  kernels::parallel_for(hg * s.nc, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> d(static_cast<size_t>(C));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = h0 + i / s.nc, c = i % s.nc;
      const float* al = dec.alpha.data() + h * s.Np + c * C;
      const float* cb = CB + c * C * C;
      float* mb = M + i * C * C;
      for (int64_t l = 0; l < C; ++l) {
        next_decay_row(d.data(), l, al[l]);
        float* row = mb + l * C;
#pragma omp simd
        for (int64_t m = 0; m <= l; ++m) row[m] = cb[l * C + m] * d[m];
        std::fill(row + l + 1, row + C, 0.f);
      }
    }
  });
}

// dst[t, (h, j)] = scale_h[t] * src_h[t, j] for all heads: [H, Np, V] -> [Np, H V].
void ssd_scaled_transpose(const Ssd& s, const float* src, const float* scale, float* dst) {
  kernels::parallel_for(s.Np, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t h = 0; h < s.H; ++h) {
        const float a = scale[h * s.Np + t];
        const float* x = src + (h * s.Np + t) * s.V;
        float* y = dst + t * s.HV + h * s.V;
        for (int64_t j = 0; j < s.V; ++j) y[j] = a * x[j];
      }
  });
}

// The chunk states S_c [nc, K, H V] from U (in place): S_0 = 0, S_c+1 = ebl_c S_c + U_c.
void ssd_state_scan(const Ssd& s, const SsdDecays& dec, float* U) {
  const int64_t per = s.K * s.HV;
  kernels::parallel_for(s.K, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> prev(static_cast<size_t>(s.HV));
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(prev.begin(), prev.end(), 0.f);
      for (int64_t c = 0; c < s.nc; ++c) {
        float* u = U + c * per + i * s.HV;
        const float* a = dec.ebl.data() + c * s.H;
        for (int64_t h = 0; h < s.H; ++h)
          for (int64_t j = 0; j < s.V; ++j) {
            const float p = prev[h * s.V + j];
            prev[h * s.V + j] = a[h] * p + u[h * s.V + j];
            u[h * s.V + j] = p;
          }
      }
    }
  });
}

// The state gradients after each chunk R [nc, K, H V] from W_c = Q_c^T dOs_c (in place):
// Z_nc = 0, Z_c = W_c + ebl_c Z_c+1, R_c = Z_c+1.
void ssd_state_grad_scan(const Ssd& s, const SsdDecays& dec, float* W) {
  const int64_t per = s.K * s.HV;
  kernels::parallel_for(s.K, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> next(static_cast<size_t>(s.HV));
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(next.begin(), next.end(), 0.f);
      for (int64_t c = s.nc - 1; c >= 0; --c) {
        float* w = W + c * per + i * s.HV;
        const float* a = dec.ebl.data() + c * s.H;
        for (int64_t h = 0; h < s.H; ++h)
          for (int64_t j = 0; j < s.V; ++j) {
            const float z = next[h * s.V + j];
            next[h * s.V + j] = w[h * s.V + j] + a[h] * z;
            w[h * s.V + j] = z;
          }
      }
    }
  });
}

// One batch element. q, k: [N, K]; v: [H, N, V]; g: [H, N] -> o [H, N, V].
// What forward and backward both start from: q, k [Np, K] and v [H, Np, V] padded, the decays and
// the shared score blocks CB [nc, C, C].
struct SsdInputs {
  Tensor qk, kk, vk;  // the padded copies (when N is not a multiple of C)
  const float *Q, *Kc, *X;
  SsdDecays dec;
  Tensor CB;
  SsdInputs(const Ssd& s, const float* q, const float* k, const float* v, const float* g)
      : Q(padded(q, 1, s.N, s.Np, s.K, qk)), Kc(padded(k, 1, s.N, s.Np, s.K, kk)),
        X(padded(v, s.H, s.N, s.Np, s.V, vk)), dec(ssd_decays(s, g)), CB(Tensor::empty({s.nc, s.C, s.C})) {
    kernels::matmul(Q, Kc, CB.data(), s.nc, s.nc, s.C, s.C, s.K, false, true);
  }
};

void ssd_forward(const Ssd& s, const float* q, const float* k, const float* v, const float* g, float* o) {
  const int64_t C = s.C, nc = s.nc;
  const SsdInputs in(s, q, k, v, g);
  const float *Q = in.Q, *Kc = in.Kc, *X = in.X;
  const SsdDecays& dec = in.dec;
  const Tensor& CB = in.CB;
  Tensor ok;
  float* O = o;
  if (s.Np != s.N) {
    ok = Tensor::empty({s.H, s.Np, s.V});
    O = ok.data();
  }
  // Inter-chunk: states, then Y = Q_c S_c (into the buffer of Xs, no longer needed).
  Tensor Xs = Tensor::empty({s.Np, s.HV}), S = Tensor::empty({nc, s.K, s.HV});
  ssd_scaled_transpose(s, X, dec.es.data(), Xs.data());
  kernels::matmul(Kc, Xs.data(), S.data(), nc, nc, s.K, s.HV, C, true, false);
  ssd_state_scan(s, dec, S.data());
  Tensor& Y = Xs;
  kernels::matmul(Q, S.data(), Y.data(), nc, nc, C, s.HV, s.K, false, false);
  // Intra-chunk, per group of heads: O_h = (CB o D_h) X_h.
  const int64_t G = ssd_head_group(s);
  Tensor M = Tensor::empty({G * nc, C, C});
  for (int64_t h0 = 0; h0 < s.H; h0 += G) {
    const int64_t hg = std::min(G, s.H - h0);
    ssd_masked_scores(s, dec, CB.data(), h0, hg, M.data());
    kernels::matmul(M.data(), X + h0 * s.Np * s.V, O + h0 * s.Np * s.V, hg * nc, hg * nc, C, s.V, C, false, false);
  }
  kernels::parallel_for(s.H * s.Np, 256, [&](int64_t i0, int64_t i1) {  // O_h += diag(eb_h) Y_h
    for (int64_t ht = i0; ht < i1; ++ht)
      axpy(O + ht * s.V, Y.data() + (ht % s.Np) * s.HV + (ht / s.Np) * s.V, dec.eb[ht], s.V);
  });
  if (O != o)
    for (int64_t h = 0; h < s.H; ++h) std::copy(O + h * s.Np * s.V, O + (h * s.Np + s.N) * s.V, o + h * s.N * s.V);
}

// One batch element: the gradients of q and k summed over heads [N, K], dv [H, N, V] and, when dg
// is not null, dlog_alpha [H, N].
void ssd_backward(const Ssd& s, const float* q, const float* k, const float* v, const float* g, const float* dout,
                  float* dq, float* dk, float* dv, float* dg) {
  const int64_t C = s.C, nc = s.nc, per = C * C;
  const SsdInputs in(s, q, k, v, g);
  const float *Q = in.Q, *Kc = in.Kc, *X = in.X;
  const SsdDecays& dec = in.dec;
  const Tensor& CB = in.CB;
  Tensor dok, dvk;
  const float* dO = padded(dout, s.H, s.N, s.Np, s.V, dok);
  float* dX = dv;
  if (s.Np != s.N) {
    dvk = Tensor::empty({s.H, s.Np, s.V});
    dX = dvk.data();
  }
  // The gate sums q . dq_h and k . dk_h per (head, position) [H, Np], and dQ, dK; the inter-chunk
  // parts first, in an order that frees each [Np, H V] buffer as soon as it is used.
  Tensor qdq = Tensor::zeros({s.H, s.Np}), kdk = Tensor::zeros({s.H, s.Np});
  Tensor dQ = Tensor::empty({s.Np, s.K}), dK = Tensor::empty({s.Np, s.K});
  {
    // The forward's states S_c; Y = Q_c S_c only for its part of q . dq.
    Tensor Xs = Tensor::empty({s.Np, s.HV}), S = Tensor::empty({nc, s.K, s.HV});
    ssd_scaled_transpose(s, X, dec.es.data(), Xs.data());
    kernels::matmul(Kc, Xs.data(), S.data(), nc, nc, s.K, s.HV, C, true, false);
    ssd_state_scan(s, dec, S.data());
    if (dg) {
      Tensor Y = Tensor::empty({s.Np, s.HV});
      kernels::matmul(Q, S.data(), Y.data(), nc, nc, C, s.HV, s.K, false, false);
      kernels::parallel_for(s.H * s.Np, 256, [&](int64_t i0, int64_t i1) {
        for (int64_t ht = i0; ht < i1; ++ht)
          qdq[ht] = dec.eb[ht] * dot(dO + ht * s.V, Y.data() + (ht % s.Np) * s.HV + (ht / s.Np) * s.V, s.V);
      });
    }
    // The state gradients R_c, then dQ's and dK's inter-chunk parts.
    Tensor R = Tensor::empty({nc, s.K, s.HV});
    {
      Tensor dOs = Tensor::empty({s.Np, s.HV});
      ssd_scaled_transpose(s, dO, dec.eb.data(), dOs.data());
      kernels::matmul(Q, dOs.data(), R.data(), nc, nc, s.K, s.HV, C, true, false);
      ssd_state_grad_scan(s, dec, R.data());
      kernels::matmul(dOs.data(), S.data(), dQ.data(), nc, nc, C, s.K, s.HV, false, true);
    }
    S = Tensor();
    kernels::matmul(Xs.data(), R.data(), dK.data(), nc, nc, C, s.K, s.HV, false, true);
    Xs = Tensor();
    // dX_h = diag(es_h) (K R)_h (the intra-chunk part is added below) and k . dk's part.
    Tensor KR = Tensor::empty({s.Np, s.HV});
    kernels::matmul(Kc, R.data(), KR.data(), nc, nc, C, s.HV, s.K, false, false);
    R = Tensor();
    kernels::parallel_for(s.H * s.Np, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t ht = i0; ht < i1; ++ht) {
        const float* kr = KR.data() + (ht % s.Np) * s.HV + (ht / s.Np) * s.V;
        const float es = dec.es[ht];
        float* dx = dX + ht * s.V;
        for (int64_t j = 0; j < s.V; ++j) dx[j] = es * kr[j];
        if (dg) kdk[ht] = es * dot(X + ht * s.V, kr, s.V);
      }
    });
  }
  // Intra-chunk, per group of heads: dM = dO_h X_h^T -> E = dM o D (into G, and its products with
  // CB into the gate sums) -> the buffer then holds CB o D for dX_h += (CB o D)^T dO_h.
  Tensor Gm = Tensor::zeros({nc, C, C});
  const int64_t HG = ssd_head_group(s);
  Tensor M = Tensor::empty({HG * nc, C, C});
  for (int64_t h0 = 0; h0 < s.H; h0 += HG) {
    const int64_t hg = std::min(HG, s.H - h0);
    kernels::matmul(dO + h0 * s.Np * s.V, X + h0 * s.Np * s.V, M.data(), hg * nc, hg * nc, C, C, s.V, false, true);
    kernels::parallel_for(nc, 1, [&](int64_t c0, int64_t c1) {  // by chunk: G_c sums over the group's heads
      std::vector<float> d(static_cast<size_t>(C)), cs(static_cast<size_t>(C));
      for (int64_t c = c0; c < c1; ++c) {
        const float* cb = CB.data() + c * per;
        float* gc = Gm.data() + c * per;
        for (int64_t h = h0; h < h0 + hg; ++h) {
          const float* al = dec.alpha.data() + h * s.Np + c * C;
          float* mb = M.data() + ((h - h0) * nc + c) * per;
          float* qd = qdq.data() + h * s.Np + c * C;
          std::fill(cs.begin(), cs.end(), 0.f);
          for (int64_t l = 0; l < C; ++l) {
            next_decay_row(d.data(), l, al[l]);
            float* row = mb + l * C;
            float* grow = gc + l * C;
            const float* cbr = cb + l * C;
            float rs = 0.f;
#pragma omp simd reduction(+ : rs)
            for (int64_t m = 0; m <= l; ++m) {
              const float e = row[m] * d[m];
              grow[m] += e;
              const float p = e * cbr[m];
              rs += p;
              cs[m] += p;
              row[m] = cbr[m] * d[m];
            }
            std::fill(row + l + 1, row + C, 0.f);
            qd[l] += rs;
          }
          float* kd = kdk.data() + h * s.Np + c * C;
          for (int64_t m = 0; m < C; ++m) kd[m] += cs[m];
        }
      }
    });
    kernels::matmul(M.data(), dO + h0 * s.Np * s.V, dX + h0 * s.Np * s.V, hg * nc, hg * nc, C, s.V, C, true, false,
                    nullptr, true);
  }
  kernels::matmul(Gm.data(), Kc, dQ.data(), nc, nc, C, s.K, C, false, false, nullptr, true);
  kernels::matmul(Gm.data(), Q, dK.data(), nc, nc, C, s.K, C, true, false, nullptr, true);
  std::copy(dQ.data(), dQ.data() + s.N * s.K, dq);
  std::copy(dK.data(), dK.data() + s.N * s.K, dk);
  // dlog_alpha_h,t: reverse cumulative sums of q . dq_h - k . dk_h.
  if (dg)
    for (int64_t h = 0; h < s.H; ++h) {
      double acc = 0;
      for (int64_t t = s.N - 1; t >= 0; --t) dg[h * s.N + t] = static_cast<float>(acc += double(qdq[h * s.Np + t]) - kdk[h * s.Np + t]);
    }
  if (dX != dv)
    for (int64_t h = 0; h < s.H; ++h) std::copy(dX + h * s.Np * s.V, dX + (h * s.Np + s.N) * s.V, dv + h * s.N * s.V);
}

void run_forward(const Slice& s, const GatedLinearAttentionOptions& opt, float* o) {
  switch (opt.form) {
    case GlaForm::recurrent: recurrent_forward(s, o); break;
    case GlaForm::parallel: parallel_forward(s, o); break;
    default: chunked_forward(s, opt.chunk, o);
  }
}

void run_backward(const Slice& s, const GatedLinearAttentionOptions& opt, const float* dO, float* dq, float* dk,
                  float* dv) {
  switch (opt.form) {
    case GlaForm::recurrent: recurrent_backward(s, dO, dq, dk, dv); break;
    case GlaForm::parallel: parallel_backward(s, dO, dq, dk, dv); break;
    default: chunked_backward(s, opt.chunk, dO, dq, dk, dv);
  }
}

// Sums a per-head gradient [B, H, N, K] over heads -> [B, 1, N, K].
Tensor sum_heads(const Tensor& t) {
  const int64_t B = t.dim(0), H = t.dim(1), inner = t.numel() / (B * H);
  Tensor y = Tensor::zeros({B, 1, t.dim(2), t.dim(3)});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) kernels::add_inplace(y.data() + b * inner, t.data() + (b * H + h) * inner, inner);
  return y;
}

}  // namespace

Var gated_linear_attention(const Var& q, const Var& k, const Var& v, const Var& log_alpha,
                           const GatedLinearAttentionOptions& opt_in) {
  const Dims d = check_shapes(q.value(), k.value(), v.value(), log_alpha.value());
  require(opt_in.chunk >= 1, fmt::format("chunk = {} must be >= 1", opt_in.chunk));
  GatedLinearAttentionOptions opt = opt_in;
  opt.chunk = std::min(opt.chunk, std::max<int64_t>(d.N, 1));  // no scratch beyond the sequence
  const int64_t BH = d.B * d.H;
  Tensor out = Tensor::empty({d.B, d.H, d.N, d.V});
  {
    // Reversed copies are temporaries (backward flips again).
    const Tensor qf = opt.reverse ? flip_seq(q.value()) : q.value(), kf = opt.reverse ? flip_seq(k.value()) : k.value(),
                 vf = opt.reverse ? flip_seq(v.value()) : v.value(),
                 gf = opt.reverse ? flip_seq(log_alpha.value()) : log_alpha.value();
    const float *qp = qf.data(), *kp = kf.data(), *vp = vf.data(), *gp = gf.data();
    float* op = out.data();
    if (ssd_applies(d, opt)) {
      const Ssd s = ssd_dims(d, opt.chunk);  // calls over [B] (shared q, k) or [B * H]
      const Fp32Matmuls fp32;
      for (int64_t b = 0; b < d.B * d.H / s.H; ++b)
        ssd_forward(s, qp + b * d.N * d.K, kp + b * d.N * d.K, vp + b * s.H * d.N * d.V, gp + b * s.H * d.N,
                    op + b * s.H * d.N * d.V);
    } else {
      kernels::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t bh = b0; bh < b1; ++bh) run_forward(slice_of(d, qp, kp, vp, gp, bh), opt, op + bh * d.N * d.V);
      });
    }
    if (opt.reverse) out = flip_seq(out);
  }
  const GradSink gq = q.sink(), gk = k.sink(), gv = v.sink(), gg = log_alpha.sink();
  const Tensor qv = q.value(), kv = k.value(), vv = v.value(), lv = log_alpha.value();
  return make_op_result(std::move(out), {q, k, v, log_alpha}, [gq, gk, gv, gg, qv, kv, vv, lv, d, opt](const Tensor& grad) {
    const int64_t BH = d.B * d.H;
    const Tensor qf = opt.reverse ? flip_seq(qv) : qv, kf = opt.reverse ? flip_seq(kv) : kv,
                 vf = opt.reverse ? flip_seq(vv) : vv, gf = opt.reverse ? flip_seq(lv) : lv,
                 dof = opt.reverse ? flip_seq(grad) : grad;
    auto back = [&](const Tensor& t) { return opt.reverse ? flip_seq(t) : t; };
    if (ssd_applies(d, opt)) {  // shared q, k: their gradients come summed over the heads
      const Ssd s = ssd_dims(d, opt.chunk);
      Tensor dq = Tensor::empty(qv.shape()), dk = Tensor::empty(kv.shape()), dv = Tensor::empty(vv.shape());
      Tensor dg = gg.wanted() ? Tensor::empty(lv.shape()) : Tensor();
      {
        const Fp32Matmuls fp32;
        for (int64_t b = 0; b < d.B * d.H / s.H; ++b) {
          const int64_t qo = b * d.N * d.K, vo = b * s.H * d.N * d.V, go = b * s.H * d.N;
          ssd_backward(s, qf.data() + qo, kf.data() + qo, vf.data() + vo, gf.data() + go, dof.data() + vo,
                       dq.data() + qo, dk.data() + qo, dv.data() + vo, dg.defined() ? dg.data() + go : nullptr);
        }
      }
      if (gq.wanted()) gq.accumulate(back(dq));
      if (gk.wanted()) gk.accumulate(back(dk));
      if (gv.wanted()) gv.accumulate(back(dv));
      if (gg.wanted()) gg.accumulate(back(dg));
      return;
    }
    // Per-head gradients of q and k (summed over heads afterwards when shared).
    Tensor dq = Tensor::empty({d.B, d.H, d.N, d.K}), dk = Tensor::empty({d.B, d.H, d.N, d.K});
    Tensor dv = Tensor::empty({d.B, d.H, d.N, d.V});
    Tensor dg = gg.wanted() ? Tensor::empty(lv.shape()) : Tensor();
    const float *qp = qf.data(), *kp = kf.data(), *vp = vf.data(), *gp = gf.data(), *dop = dof.data();
    kernels::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh) {
        const Slice s = slice_of(d, qp, kp, vp, gp, bh);
        float* dqh = dq.data() + bh * d.N * d.K;
        float* dkh = dk.data() + bh * d.N * d.K;
        run_backward(s, opt, dop + bh * d.N * d.V, dqh, dkh, dv.data() + bh * d.N * d.V);
        if (dg.defined()) {
          // dG_t = q_t * dq_t - k_t * dk_t; dlog_alpha_t = sum_{u >= t} dG_u (in the scan's time order)
          const int64_t gs = s.gs;
          float* dgh = dg.data() + bh * d.N * gs;
          std::vector<double> acc(static_cast<size_t>(gs), 0.0);
          for (int64_t t = d.N - 1; t >= 0; --t) {
            const float *qt = s.q + t * d.K, *kt = s.k + t * d.K, *dqt = dqh + t * d.K, *dkt = dkh + t * d.K;
            if (s.vec) {
              for (int64_t i = 0; i < d.K; ++i) {
                acc[i] += double(qt[i]) * dqt[i] - double(kt[i]) * dkt[i];
                dgh[t * gs + i] = static_cast<float>(acc[i]);
              }
            } else {
              double sum = 0;
              for (int64_t i = 0; i < d.K; ++i) sum += double(qt[i]) * dqt[i] - double(kt[i]) * dkt[i];
              acc[0] += sum;
              dgh[t] = static_cast<float>(acc[0]);
            }
          }
        }
      }
    });
    if (gq.wanted()) gq.accumulate(back(d.Hq == 1 && d.H > 1 ? sum_heads(dq) : dq.reshape(qv.shape())));
    if (gk.wanted()) gk.accumulate(back(d.Hk == 1 && d.H > 1 ? sum_heads(dk) : dk.reshape(kv.shape())));
    if (gv.wanted()) gv.accumulate(back(dv));
    if (gg.wanted()) gg.accumulate(back(dg));
  });
}

Var gated_linear_attention_mix(const Var& q, const Var& k, const Var& v, const Var& log_alpha,
                               const GatedLinearAttentionOptions& opt, bool causal) {
  GatedLinearAttentionOptions o = opt;
  o.reverse = false;
  if (causal) return gated_linear_attention(q, k, v, log_alpha, o);
  Var fwd = gated_linear_attention(q, k, v, log_alpha, o);
  o.reverse = true;
  return add(fwd, gated_linear_attention(q, k, v, log_alpha, o));
}

GlaForm gla_form_from_string(const std::string& name) {
  if (name == "chunked") return GlaForm::chunked;
  if (name == "parallel") return GlaForm::parallel;
  if (name == "recurrent") return GlaForm::recurrent;
  throw UsageError(unknown_name_message("form", name, {"chunked", "parallel", "recurrent"}));
}

// ---- gate nonlinearities ----
namespace {
// log(1 + exp(-|x|)), stable for every x.
inline float log1p_exp_neg_abs(float x) { return std::log1p(std::exp(-std::fabs(x))); }

template <class F, class G>
Var elementwise(const Var& x, F f, G df) {
  Tensor y = Tensor::empty(x.shape());
  const float* xp = x.value().data();
  float* yp = y.data();
  kernels::parallel_for(y.numel(), kernels::kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) yp[i] = f(xp[i]);
  });
  return make_op_result(std::move(y), {x}, [gx = x.sink(), xv = x.value(), df](const Tensor& g) {
    Tensor dx = Tensor::empty(xv.shape());
    const float *xp = xv.data(), *gp = g.data();
    float* dp = dx.data();
    kernels::parallel_for(dx.numel(), kernels::kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dp[i] = gp[i] * df(xp[i]);
    });
    gx.accumulate(dx);
  });
}
}  // namespace

Var log_sigmoid(const Var& x, float scale) {
  // log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)); derivative sigmoid(-x) = 1 / (1 + exp(x))
  return elementwise(
      x, [scale](float v) { return scale * (std::min(v, 0.f) - log1p_exp_neg_abs(v)); },
      [scale](float v) { return scale / (1.f + std::exp(v)); });
}

Var softplus(const Var& x) {
  // softplus(x) = max(x, 0) + log(1 + exp(-|x|)); derivative sigmoid(x)
  return elementwise(
      x, [](float v) { return std::max(v, 0.f) + log1p_exp_neg_abs(v); },
      [](float v) { return 1.f / (1.f + std::exp(-v)); });
}

// ---- decoding ----
GatedLinearState::GatedLinearState(int64_t batch, int64_t heads, int64_t key_dim, int64_t value_dim)
    : batch_(batch), heads_(heads), dk_(key_dim), dv_(value_dim), s_(Tensor::zeros({batch, heads, key_dim, value_dim})) {}

Tensor GatedLinearState::step(const Tensor& q_t, const Tensor& k_t, const Tensor& v_t, const Tensor& log_alpha_t) {
  const Dims d = check_shapes(q_t, k_t, v_t, log_alpha_t);
  require(d.B == batch_ && d.H == heads_ && d.N == 1 && d.K == dk_ && d.V == dv_,
          fmt::format("decode step v {} / q {} does not fit the state [{}, {}, {}, {}]", shape_str(v_t.shape()),
                      shape_str(q_t.shape()), batch_, heads_, dk_, dv_));
  Tensor o = Tensor::zeros({d.B, d.H, 1, d.V});
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    const Slice s = slice_of(d, q_t.data(), k_t.data(), v_t.data(), log_alpha_t.data(), bh);
    float* S = s_.data() + bh * dk_ * dv_;
    float* ot = o.data() + bh * dv_;
    for (int64_t i = 0; i < dk_; ++i) {  // S = diag(alpha) S + k v^T; o = S^T q
      float* row = S + i * dv_;
      const float a = std::exp(s.gate(0, i)), ki = s.k[i];
      for (int64_t j = 0; j < dv_; ++j) row[j] = a * row[j] + ki * s.v[j];
      axpy(ot, row, s.q[i], dv_);
    }
  }
  return o;
}

}  // namespace ab
