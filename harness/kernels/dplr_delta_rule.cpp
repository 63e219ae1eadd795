// The generalised (DPLR) delta rule: the chunked form with a hand-written backward (see
// dplr_delta_rule.hpp for the maths). One TBB task per (batch, head) runs its chunks in order; the
// per-chunk products are small row loops on [C, dk] x [dk, dv] blocks that stay in L1 (a oneDNN call
// per chunk would cost more than the product at C = 16). The pairwise decays exp(G_t - G_s) are
// kept as running products of w per key dimension (every factor <= 1): one multiply per term, no
// exp, no overflow. The last chunk is simply shorter (L < C rows).
#include "attnbench/kernels/dplr_delta_rule.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/parallel.hpp"
#include "kernels/detail/vec.hpp"

namespace ab {

namespace {

using vec::axpy;
using vec::dot;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("dplr_delta_rule: " + what);
}

struct Dims {
  int64_t B, H, N, K, V;
};

Dims check_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& b,
                  const Tensor& g) {
  require(q.rank() == 4 && v.rank() == 4,
          fmt::format("q {} and v {} must be rank 4", shape_str(q.shape()), shape_str(v.shape())));
  const Dims d{v.dim(0), v.dim(1), v.dim(2), q.dim(3), v.dim(3)};
  const Shape key{d.B, d.H, d.N, d.K};
  const char* names[] = {"q", "k", "a", "b", "log_w"};
  const Tensor* ts[] = {&q, &k, &a, &b, &g};
  for (int i = 0; i < 5; ++i)
    require(ts[i]->shape() == key, fmt::format("{} {} must be {} (v is {})", names[i], shape_str(ts[i]->shape()),
                                               shape_str(key), shape_str(v.shape())));
  return d;
}

// C += op(A) B with A [M, Kd] (lda = Kd, a(m, i) = A[m Kd + i]) or transposed A [Kd, M]
// (a(m, i) = A[i M + m]); B [Kd, Nd], C [M, Nd] row-major. Blocks of 4 rows x 32 (16) columns of C are
// accumulated in registers over the whole of Kd (one load and store of C per block); the edges
// fall back to row axpys.
// 16 floats: one AVX-512 register (two AVX2 ones); loads and stores through memcpy (unaligned).
typedef float v16 __attribute__((vector_size(64)));
inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

template <bool kTransA>
void mm_acc(const float* A, const float* B, float* C, int64_t M, int64_t Kd, int64_t Nd) {
  auto a = [&](int64_t m, int64_t i) { return kTransA ? A[i * M + m] : A[m * Kd + i]; };
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) {
    int64_t n = 0;
    for (; n + 32 <= Nd; n += 32) {
      v16 acc[4][2];
      for (int r = 0; r < 4; ++r) {
        acc[r][0] = load16(C + (m + r) * Nd + n);
        acc[r][1] = load16(C + (m + r) * Nd + n + 16);
      }
      for (int64_t i = 0; i < Kd; ++i) {
        const v16 b0 = load16(B + i * Nd + n), b1 = load16(B + i * Nd + n + 16);
        for (int r = 0; r < 4; ++r) {
          const float av = a(m + r, i);
          acc[r][0] += av * b0;
          acc[r][1] += av * b1;
        }
      }
      for (int r = 0; r < 4; ++r) {
        store16(C + (m + r) * Nd + n, acc[r][0]);
        store16(C + (m + r) * Nd + n + 16, acc[r][1]);
      }
    }
    for (; n + 16 <= Nd; n += 16) {
      v16 acc[4];
      for (int r = 0; r < 4; ++r) acc[r] = load16(C + (m + r) * Nd + n);
      for (int64_t i = 0; i < Kd; ++i) {
        const v16 b0 = load16(B + i * Nd + n);
        for (int r = 0; r < 4; ++r) acc[r] += a(m + r, i) * b0;
      }
      for (int r = 0; r < 4; ++r) store16(C + (m + r) * Nd + n, acc[r]);
    }
    if (n < Nd)
      for (int r = 0; r < 4; ++r)
        for (int64_t i = 0; i < Kd; ++i) axpy(C + (m + r) * Nd + n, B + i * Nd + n, a(m + r, i), Nd - n);
  }
  for (; m < M; ++m)
    for (int64_t i = 0; i < Kd; ++i) axpy(C + m * Nd, B + i * Nd, a(m, i), Nd);
}
// C += A B: A [M, Kd]
void mm_nn(const float* A, const float* B, float* C, int64_t M, int64_t Kd, int64_t Nd) {
  mm_acc<false>(A, B, C, M, Kd, Nd);
}
// C += A^T B: A [Kd, M]
void mm_tn(const float* A, const float* B, float* C, int64_t M, int64_t Kd, int64_t Nd) {
  mm_acc<true>(A, B, C, M, Kd, Nd);
}
// C = A B^T: A [M, Kd], B [Nd, Kd], C [M, Nd]
void mm_nt(const float* A, const float* B, float* C, int64_t M, int64_t Kd, int64_t Nd) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < Nd; ++n) C[m * Nd + n] = dot(A + m * Kd, B + n * Kd, Kd);
}

// dst [c, r] = src [r, c]
void transpose(const float* src, float* dst, int64_t R, int64_t Cn) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < Cn; ++c) dst[c * R + r] = src[r * Cn + c];
}

// The rows of one (batch, head): [N, K] (q, k, a, b, g) and [N, V] (v).
struct Seq {
  const float *q, *k, *v, *a, *b, *g;
};

// One chunk's forward quantities (recomputed by backward). Rows t = 0 .. L - 1 of the chunk.
struct Chunk {
  int64_t C, K, V, L = 0;
  const float *q = nullptr, *k = nullptr, *v = nullptr, *a = nullptr, *b = nullptr;  // the chunk's rows
  std::vector<float> w;     // exp(g) [C, K]
  std::vector<float> eG;    // exp(G_t) [C, K]
  std::vector<float> qt;    // q o exp(G_t) [C, K]
  std::vector<float> at;    // a o exp(G_{t-1}) [C, K]
  std::vector<float> bh;    // b o exp(G_last - G_s) [C, K]
  std::vector<float> kh;    // k o exp(G_last - G_s) [C, K]
  std::vector<float> E;     // running exp(G_t - G_s) [C, K] (row s)
  std::vector<float> Qb, Qk, Aab, Aak;  // [C, C]
  std::vector<float> U;     // [C, V]
  Chunk(int64_t C_, int64_t K_, int64_t V_)
      : C(C_), K(K_), V(V_), w(C * K), eG(C * K), qt(C * K), at(C * K), bh(C * K), kh(C * K), E(C * K), Qb(C * C),
        Qk(C * C), Aab(C * C), Aak(C * C), U(C * V) {}
  const float* last_eG() const { return eG.data() + (L - 1) * K; }

  // Everything but the output, for rows t0 .. t0 + L - 1 of x, with S0 the state before them.
  void prepare(const Seq& x, int64_t t0, int64_t len, const float* S0) {
    L = len;
    q = x.q + t0 * K, k = x.k + t0 * K, v = x.v + t0 * V, a = x.a + t0 * K, b = x.b + t0 * K;
    const float* g = x.g + t0 * K;
    // exp(G_t) as the running product of w (one exp per element)
    for (int64_t t = 0; t < L; ++t) {
      const float* prev = t > 0 ? eG.data() + (t - 1) * K : nullptr;  // exp(G_{t-1}); 1 at t = 0
      for (int64_t j = 0; j < K; ++j) {
        const float ep = prev ? prev[j] : 1.f;
        at[t * K + j] = a[t * K + j] * ep;
        w[t * K + j] = std::exp(g[t * K + j]);
        eG[t * K + j] = ep * w[t * K + j];
        qt[t * K + j] = q[t * K + j] * eG[t * K + j];
      }
    }
    // exp(G_last - G_s) = exp(G_last) / exp(G_s) would overflow for strong decays: a reverse
    // running product of w instead.
    {
      std::vector<float> f(static_cast<size_t>(K), 1.f);
      for (int64_t s = L - 1; s >= 0; --s) {
        for (int64_t j = 0; j < K; ++j) {
          bh[s * K + j] = b[s * K + j] * f[j];
          kh[s * K + j] = k[s * K + j] * f[j];
          f[j] *= w[s * K + j];
        }
      }
    }
    std::fill(Qb.begin(), Qb.end(), 0.f);
    std::fill(Qk.begin(), Qk.end(), 0.f);
    std::fill(Aab.begin(), Aab.end(), 0.f);
    std::fill(Aak.begin(), Aak.end(), 0.f);
    std::vector<float> eb(static_cast<size_t>(K)), ek(static_cast<size_t>(K));
    for (int64_t t = 0; t < L; ++t) {
      step_decays(t);
      const float* qr = q + t * K;
      const float* an = t + 1 < L ? a + (t + 1) * K : nullptr;  // A[t + 1, s] decays by exp(G_t - G_s)
      for (int64_t s = 0; s <= t; ++s) {
        const float* e = E.data() + s * K;
        for (int64_t j = 0; j < K; ++j) {
          eb[j] = e[j] * b[s * K + j];
          ek[j] = e[j] * k[s * K + j];
        }
        Qb[t * C + s] = dot(qr, eb.data(), K);
        Qk[t * C + s] = dot(qr, ek.data(), K);
        if (an) {
          Aab[(t + 1) * C + s] = dot(an, eb.data(), K);
          Aak[(t + 1) * C + s] = dot(an, ek.data(), K);
        }
      }
    }
    // U = (I - A_ab)^-1 (A~ S0 + A_ak V) by forward substitution
    std::fill(U.begin(), U.end(), 0.f);
    mm_nn(at.data(), S0, U.data(), L, K, V);
    for (int64_t t = 1; t < L; ++t) {
      float* ut = U.data() + t * V;
      for (int64_t s = 0; s < t; ++s) {
        axpy(ut, U.data() + s * V, Aab[t * C + s], V);
        axpy(ut, v + s * V, Aak[t * C + s], V);
      }
    }
  }

  // E row s becomes exp(G_t - G_s) for every s <= t (rows s < t were at t - 1).
  void step_decays(int64_t t) {
    const float* wt = w.data() + t * K;
    for (int64_t s = 0; s < t; ++s) {
      float* e = E.data() + s * K;
      for (int64_t j = 0; j < K; ++j) e[j] *= wt[j];
    }
    std::fill(E.data() + t * K, E.data() + (t + 1) * K, 1.f);
  }

  // o rows = Q~ S0 + Q_b U + Q_k V
  void output(const float* S0, float* o) const {
    std::fill(o, o + L * V, 0.f);
    mm_nn(qt.data(), S0, o, L, K, V);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t s = 0; s <= t; ++s) {
        axpy(o + t * V, U.data() + s * V, Qb[t * C + s], V);
        axpy(o + t * V, v + s * V, Qk[t * C + s], V);
      }
  }

  // S1 = diag(exp(G_last)) S0 + B^^T U + K^^T V
  void advance(const float* S0, float* S1) const {
    const float* gl = last_eG();
    for (int64_t j = 0; j < K; ++j)
      for (int64_t i = 0; i < V; ++i) S1[j * V + i] = gl[j] * S0[j * V + i];
    mm_tn(bh.data(), U.data(), S1, K, L, V);
    mm_tn(kh.data(), v, S1, K, L, V);
  }
};

// Gradient rows of one (batch, head): [N, K] (q, k, a, b, g) and [N, V] (v).
struct SeqGrad {
  float *q, *k, *v, *a, *b, *g;
};

// Backward of one prepared chunk at rows t0..: dO its output gradient rows, dS the gradient of the
// state after it (becomes the gradient of the state before it).
struct ChunkGrad {
  int64_t C, K, V;
  std::vector<float> dU, dqt, dat, dbh, dkh, dQb, dQk, dAab, dAak, dS0, S0t, dSt, dG, zero, sink;
  ChunkGrad(int64_t C_, int64_t K_, int64_t V_)
      : C(C_), K(K_), V(V_), dU(C * V), dqt(C * K), dat(C * K), dbh(C * K), dkh(C * K), dQb(C * C), dQk(C * C),
        dAab(C * C), dAak(C * C), dS0(K * V), S0t(K * V), dSt(K * V), dG(C * K), zero(K, 0.f), sink(K) {}

  void run(Chunk& c, const float* S0, const float* dO, float* dS, const SeqGrad& out, int64_t t0) {
    const int64_t L = c.L;
    float* dq = out.q + t0 * K;
    float* dk = out.k + t0 * K;
    float* dv = out.v + t0 * V;
    float* da = out.a + t0 * K;
    float* db = out.b + t0 * K;
    float* dg = out.g + t0 * K;
    // dU = B^ dS + Q_b^T dO, then the substitution's transpose (reverse order)
    std::fill(dU.begin(), dU.end(), 0.f);
    mm_nn(c.bh.data(), dS, dU.data(), L, K, V);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t s = 0; s <= t; ++s) axpy(dU.data() + s * V, dO + t * V, c.Qb[t * C + s], V);
    for (int64_t t = L - 2; t >= 0; --t)
      for (int64_t r = t + 1; r < L; ++r) axpy(dU.data() + t * V, dU.data() + r * V, c.Aab[r * C + t], V);
    // dv = K^ dS + Q_k^T dO + A_ak^T dU
    std::fill(dv, dv + L * V, 0.f);
    mm_nn(c.kh.data(), dS, dv, L, K, V);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t s = 0; s <= t; ++s) {
        axpy(dv + s * V, dO + t * V, c.Qk[t * C + s], V);
        if (s < t) axpy(dv + s * V, dU.data() + t * V, c.Aak[t * C + s], V);
      }
    // dQ~ = dO S0^T, dA~ = dU S0^T, dB^ = U dS^T, dK^ = V dS^T; pairwise coefficients
    // (through the transposes of S0 and dS, so that all four are register-blocked products)
    transpose(S0, S0t.data(), K, V);
    transpose(dS, dSt.data(), K, V);
    std::fill(dqt.begin(), dqt.end(), 0.f);
    std::fill(dat.begin(), dat.end(), 0.f);
    std::fill(dbh.begin(), dbh.end(), 0.f);
    std::fill(dkh.begin(), dkh.end(), 0.f);
    mm_nn(dO, S0t.data(), dqt.data(), L, V, K);
    mm_nn(dU.data(), S0t.data(), dat.data(), L, V, K);
    mm_nn(c.U.data(), dSt.data(), dbh.data(), L, V, K);
    mm_nn(c.v, dSt.data(), dkh.data(), L, V, K);
    mm_nt(dO, c.U.data(), dQb.data(), L, V, L);  // [L, L] with row stride L
    mm_nt(dO, c.v, dQk.data(), L, V, L);
    mm_nt(dU.data(), c.U.data(), dAab.data(), L, V, L);
    mm_nt(dU.data(), c.v, dAak.data(), L, V, L);
    // dS0 = diag(exp(G_last)) dS + Q~^T dO + A~^T dU
    std::fill(dG.begin(), dG.end(), 0.f);
    const float* gl = c.last_eG();
    float* dGl = dG.data() + (L - 1) * K;
    for (int64_t j = 0; j < K; ++j) {
      dGl[j] += gl[j] * dot(S0 + j * V, dS + j * V, V);
      for (int64_t i = 0; i < V; ++i) dS0[j * V + i] = gl[j] * dS[j * V + i];
    }
    mm_tn(c.qt.data(), dO, dS0.data(), K, L, V);
    mm_tn(c.at.data(), dU.data(), dS0.data(), K, L, V);
    std::copy(dS0.begin(), dS0.end(), dS);
    // The element-wise terms: q~, a~, b^, k^.
    for (int64_t t = 0; t < L; ++t) {
      const float* eg = c.eG.data() + t * K;
      const float* egp = t > 0 ? eg - K : nullptr;  // exp(G_{t-1}); 1 at t = 0
      float* dGt = dG.data() + t * K;
      for (int64_t j = 0; j < K; ++j) {
        const float x = dqt[t * K + j], y = dat[t * K + j];
        dq[t * K + j] = x * eg[j];
        dGt[j] += x * c.qt[t * K + j];
        da[t * K + j] = egp ? y * egp[j] : y;
        if (t > 0) dGt[j - K] += y * c.at[t * K + j];
        const float f = c.bh[t * K + j] * dbh[t * K + j] + c.kh[t * K + j] * dkh[t * K + j];
        dGl[j] += f;
        dGt[j] -= f;
      }
    }
    // db, dk from B^ and K^: multiply by exp(G_last - G_s) (reverse running product, as prepare)
    {
      std::vector<float> f(static_cast<size_t>(K), 1.f);
      for (int64_t s = L - 1; s >= 0; --s)
        for (int64_t j = 0; j < K; ++j) {
          db[s * K + j] = dbh[s * K + j] * f[j];
          dk[s * K + j] = dkh[s * K + j] * f[j];
          f[j] *= c.w[s * K + j];
        }
    }
    // The pairwise terms Q_b, Q_k (rows t) and A_ab, A_ak (rows t + 1), with E recomputed.
    for (int64_t t = 0; t < L; ++t) {
      c.step_decays(t);
      const bool more = t + 1 < L;
      const float* qr = c.q + t * K;
      const float* an = more ? c.a + (t + 1) * K : zero.data();
      float* dqr = dq + t * K;
      float* dan = more ? da + (t + 1) * K : sink.data();
      float* dGt = dG.data() + t * K;
      for (int64_t s = 0; s <= t; ++s) {
        const float cb = dQb[t * L + s], ck = dQk[t * L + s];
        const float ab = more ? dAab[(t + 1) * L + s] : 0.f, ak = more ? dAak[(t + 1) * L + s] : 0.f;
        const float *e = c.E.data() + s * K, *bs = c.b + s * K, *ks = c.k + s * K;
        float *dbs = db + s * K, *dks = dk + s * K, *dGs = dG.data() + s * K;
        for (int64_t j = 0; j < K; ++j) {
          const float xq = cb * bs[j] + ck * ks[j], xa = ab * bs[j] + ak * ks[j];
          dqr[j] += e[j] * xq;
          dan[j] += e[j] * xa;
          dbs[j] += e[j] * (cb * qr[j] + ab * an[j]);
          dks[j] += e[j] * (ck * qr[j] + ak * an[j]);
          const float y = e[j] * (qr[j] * xq + an[j] * xa);
          dGt[j] += y;
          dGs[j] -= y;
        }
      }
    }
    // g -> G is a cumulative sum: dg_t = sum_{r >= t} dG_r
    for (int64_t j = 0; j < K; ++j) {
      float acc = 0.f;
      for (int64_t t = L - 1; t >= 0; --t) dg[t * K + j] = acc += dG[t * K + j];
    }
  }
};

// dst row n = src row N - 1 - n: [N, w]
void flip_rows(const float* src, float* dst, int64_t N, int64_t w) {
  for (int64_t n = 0; n < N; ++n) std::copy(src + (N - 1 - n) * w, src + (N - n) * w, dst + n * w);
}

// The rows of one (batch, head) in scan order: the tensors' own rows, or (reverse) flipped copies.
// Inputs and outputs in the order q, k, v, a, b, log_w.
struct Rows {
  int64_t N, K, V;
  bool reverse;
  std::vector<float> buf[6];
  Rows(int64_t N_, int64_t K_, int64_t V_, bool rev) : N(N_), K(K_), V(V_), reverse(rev) {}
  int64_t width(int i) const { return i == 2 ? V : K; }
  float* scratch(int i) {
    buf[i].resize(static_cast<size_t>(N * width(i)));
    return buf[i].data();
  }
  Seq load(const std::vector<Tensor>& in, int64_t bh) {
    const float* p[6];
    for (int i = 0; i < 6; ++i) {
      p[i] = in[i].data() + bh * N * width(i);
      if (reverse) {
        flip_rows(p[i], scratch(i), N, width(i));
        p[i] = buf[i].data();
      }
    }
    return Seq{p[0], p[1], p[2], p[3], p[4], p[5]};
  }
  // Where the output rows [N, w] of bh are written in scan order; store() puts them in place.
  float* out_rows(float* o, int64_t bh, int64_t w) {
    if (!reverse) return o + bh * N * w;
    out.resize(static_cast<size_t>(N * w));
    return out.data();
  }
  void store(const float* rows, float* o, int64_t bh, int64_t w) const {
    if (reverse) flip_rows(rows, o + bh * N * w, N, w);
  }
  SeqGrad grad_rows(std::vector<Tensor>& g, int64_t bh) {
    float* p[6];
    for (int i = 0; i < 6; ++i) p[i] = reverse ? scratch(i) : g[i].data() + bh * N * width(i);
    return SeqGrad{p[0], p[1], p[2], p[3], p[4], p[5]};
  }
  void store_grads(std::vector<Tensor>& g, int64_t bh) const {
    if (reverse)
      for (int i = 0; i < 6; ++i) flip_rows(buf[i].data(), g[i].data() + bh * N * width(i), N, width(i));
  }
  std::vector<float> out;
};

}  // namespace

Var dplr_delta_rule(const Var& q, const Var& k, const Var& v, const Var& a, const Var& b, const Var& log_w,
                    const DplrDeltaRuleOptions& opt) {
  const Dims d = check_shapes(q.value(), k.value(), v.value(), a.value(), b.value(), log_w.value());
  require(opt.chunk >= 1, fmt::format("chunk = {} must be >= 1", opt.chunk));
  const int64_t N = d.N, K = d.K, V = d.V, BH = d.B * d.H;
  const int64_t C = std::min(opt.chunk, std::max<int64_t>(N, 1)), nc = (N + C - 1) / C;
  const bool reverse = opt.reverse;
  Tensor out = Tensor::empty({d.B, d.H, N, V});
  {
    const std::vector<Tensor> in{q.value(), k.value(), v.value(), a.value(), b.value(), log_w.value()};
    float* o = out.data();
    parallel_for(BH, 1, [&](int64_t i0, int64_t i1) {
      Chunk c(C, K, V);
      Rows rows(N, K, V, reverse);
      std::vector<float> S(static_cast<size_t>(K * V)), S1(static_cast<size_t>(K * V));
      for (int64_t bh = i0; bh < i1; ++bh) {
        const Seq x = rows.load(in, bh);
        float* ob = rows.out_rows(o, bh, V);
        std::fill(S.begin(), S.end(), 0.f);
        for (int64_t ci = 0; ci < nc; ++ci) {
          const int64_t t0 = ci * C;
          c.prepare(x, t0, std::min(C, N - t0), S.data());
          c.output(S.data(), ob + t0 * V);
          if (ci + 1 < nc) {
            c.advance(S.data(), S1.data());
            S.swap(S1);
          }
        }
        rows.store(ob, o, bh, V);
      }
    });
  }
  const std::vector<Var> inputs{q, k, v, a, b, log_w};
  std::vector<GradSink> sinks;
  std::vector<Tensor> vals;
  for (const Var& x : inputs) {
    sinks.push_back(x.sink());
    vals.push_back(x.value());
  }
  return make_op_result(std::move(out), inputs, [sinks, vals, d, C, nc, reverse](const Tensor& grad) {
    const int64_t N = d.N, K = d.K, V = d.V, BH = d.B * d.H;
    std::vector<Tensor> g;
    for (const Tensor& x : vals) g.push_back(Tensor::empty(x.shape()));
    Tensor states = Tensor::empty({BH, nc, K, V});  // the state before each chunk
    parallel_for(BH, 1, [&](int64_t i0, int64_t i1) {
      Chunk c(C, K, V);
      ChunkGrad cg(C, K, V);
      Rows rows(N, K, V, reverse), grows(N, K, V, reverse);
      std::vector<float> dS(static_cast<size_t>(K * V)), dO;
      for (int64_t bh = i0; bh < i1; ++bh) {
        const Seq x = rows.load(vals, bh);
        float* St = states.data() + bh * nc * K * V;
        std::fill(St, St + K * V, 0.f);
        for (int64_t ci = 0; ci + 1 < nc; ++ci) {
          const int64_t t0 = ci * C;
          c.prepare(x, t0, C, St + ci * K * V);
          c.advance(St + ci * K * V, St + (ci + 1) * K * V);
        }
        const float* gO = grad.data() + bh * N * V;
        if (reverse) {
          dO.resize(static_cast<size_t>(N * V));
          flip_rows(gO, dO.data(), N, V);
          gO = dO.data();
        }
        const SeqGrad out = grows.grad_rows(g, bh);
        std::fill(dS.begin(), dS.end(), 0.f);
        for (int64_t ci = nc - 1; ci >= 0; --ci) {
          const int64_t t0 = ci * C;
          const float* S0 = St + ci * K * V;
          c.prepare(x, t0, std::min(C, N - t0), S0);
          cg.run(c, S0, gO + t0 * V, dS.data(), out, t0);
        }
        grows.store_grads(g, bh);
      }
    });
    states = Tensor();
    for (size_t i = 0; i < sinks.size(); ++i)
      if (sinks[i].wanted()) sinks[i].accumulate(g[i]);
  });
}

// ---- decoding ----
DplrDeltaRuleState::DplrDeltaRuleState(int64_t batch, int64_t heads, int64_t key_dim, int64_t value_dim)
    : batch_(batch), heads_(heads), dk_(key_dim), dv_(value_dim), s_(Tensor::zeros({batch, heads, key_dim, value_dim})) {}

Tensor DplrDeltaRuleState::step(const Tensor& q_t, const Tensor& k_t, const Tensor& v_t, const Tensor& a_t,
                                const Tensor& b_t, const Tensor& log_w_t) {
  const Dims d = check_shapes(q_t, k_t, v_t, a_t, b_t, log_w_t);
  require(d.B == batch_ && d.H == heads_ && d.N == 1 && d.K == dk_ && d.V == dv_,
          fmt::format("decode step v {} / q {} does not fit the state [{}, {}, {}, {}]", shape_str(v_t.shape()),
                      shape_str(q_t.shape()), batch_, heads_, dk_, dv_));
  Tensor o = Tensor::zeros({d.B, d.H, 1, d.V});
  std::vector<float> u(static_cast<size_t>(dv_));
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    float* S = s_.data() + bh * dk_ * dv_;
    const float *q = q_t.data() + bh * dk_, *k = k_t.data() + bh * dk_, *v = v_t.data() + bh * dv_;
    const float *a = a_t.data() + bh * dk_, *b = b_t.data() + bh * dk_, *g = log_w_t.data() + bh * dk_;
    // u = S^T a (before the decay), S <- diag(w) S + b u^T + k v^T, o = S^T q
    std::fill(u.begin(), u.end(), 0.f);
    for (int64_t j = 0; j < dk_; ++j) axpy(u.data(), S + j * dv_, a[j], dv_);
    float* ot = o.data() + bh * dv_;
    for (int64_t j = 0; j < dk_; ++j) {
      float* row = S + j * dv_;
      const float w = std::exp(g[j]);
      for (int64_t i = 0; i < dv_; ++i) row[i] = w * row[i] + b[j] * u[i] + k[j] * v[i];
      axpy(ot, row, q[j], dv_);
    }
  }
  return o;
}

}  // namespace ab
