// Delta rule (DeltaNet, Gated DeltaNet): the chunked WY form with a hand-written backward (see
// delta_rule.hpp for the maths). Layout of every scratch buffer: [nc, B * H, C, *] ("chunk-major"),
// so that the chunks of one step of the chunk recurrence are one contiguous batch for oneDNN, and
// all chunks together are another. The last chunk is zero-padded (k = v = beta = g = 0 there: the
// padded rows neither read nor change the state). oneDNN runs outside parallel_for; the
// element-wise loops run under parallel_for over chunks.
// Per-key-dimension decays (kda): K K^T o D and Q K^T o D are products per sub-block of 16 rows
// (see channel_products), forward and backward, not the element-wise (t, s, j) loops with one exp
// per term that delta_rule.hpp still describes (its comment is pinned with the plugin ABI; to be
// updated with the next bump).
#include "attnbench/kernels/delta_rule.hpp"

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

using vec::axpy;
using vec::dot;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("delta_rule: " + what);
}

struct Dims {
  int64_t B, H, N, K, V;
};

Dims check_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor* g) {
  require(q.rank() == 4 && k.rank() == 4 && v.rank() == 4,
          fmt::format("q {}, k {}, v {} must be rank 4", shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape())));
  const Dims d{v.dim(0), v.dim(1), v.dim(2), q.dim(3), v.dim(3)};
  require(q.shape() == k.shape() && q.dim(0) == d.B && q.dim(1) == d.H && q.dim(2) == d.N,
          fmt::format("q {}, k {} do not fit v {}", shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape())));
  const Shape scalar{d.B, d.H, d.N}, channel{d.B, d.H, d.N, d.K};
  require(beta.shape() == scalar, fmt::format("beta {} must be {}", shape_str(beta.shape()), shape_str(scalar)));
  if (g)
    require(g->shape() == scalar || g->shape() == channel,
            fmt::format("log_alpha {} must be {} or {}", shape_str(g->shape()), shape_str(scalar), shape_str(channel)));
  return d;
}

// Geometry of the chunk-major layout.
struct Geo {
  Dims d;
  int64_t C, nc, BH, nb;  // chunk, chunks per sequence, B * H, nc * BH (GEMM batch of "all chunks")
  bool gated, reverse;
  bool channel = false;  // log decay per key dimension [.., dk] (KDA) instead of per head
  int64_t L = 16;        // channel only: sub-block length inside a chunk (fla: 16)
  int64_t gw() const { return channel ? d.K : 1; }
  int64_t item(int64_t c, int64_t bh) const { return c * BH + bh; }
  // Sub-block a of a chunk: rows [L a, end(a)); its products reach back over columns [0, end(a)).
  int64_t subs() const { return (C + L - 1) / L; }
  int64_t end(int64_t a) const { return std::min(C, L * (a + 1)); }
};

// src [BH, N, w] (position n of the scan = source position reverse ? N - 1 - n : n)
//   -> dst [nc, BH, C, w], zero past the end.
Tensor pack(const Geo& G, const float* src, int64_t w) {
  Tensor dst = Tensor::empty({G.nb, G.C, w});
  float* out = dst.data();
  const int64_t N = G.d.N;
  parallel_for(G.nb, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t c = i / G.BH, bh = i % G.BH;
      for (int64_t r = 0; r < G.C; ++r) {
        const int64_t n = c * G.C + r;
        float* o = out + (i * G.C + r) * w;
        if (n >= N) {
          std::fill(o, o + w, 0.f);
          continue;
        }
        const int64_t p = G.reverse ? N - 1 - n : n;
        std::copy(src + (bh * N + p) * w, src + (bh * N + p + 1) * w, o);
      }
    }
  });
  return dst;
}

// The inverse of pack: [nc, BH, C, w] -> dst [BH, N, w].
void unpack(const Geo& G, const Tensor& packed, float* dst, int64_t w) {
  const float* in = packed.data();
  const int64_t N = G.d.N;
  parallel_for(G.BH, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; ++bh)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t c = n / G.C, r = n % G.C, p = G.reverse ? N - 1 - n : n;
        const float* s = in + (G.item(c, bh) * G.C + r) * w;
        std::copy(s, s + w, dst + (bh * N + p) * w);
      }
  });
}

// c[i] (+)= op(a[i]) op(b[i]) for every chunk item i in [0, batch) (contiguous batches).
void gemm(const float* a, const float* b, float* c, int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
          bool acc = false) {
  kernels::matmul(a, b, c, batch, batch, M, N, K, ta, tb, nullptr, acc);
}

// The forward quantities of the chunked form, recomputed by backward. Per chunk item:
struct Plan {
  Geo G;
  Tensor q, k, v;  // packed inputs [nb, C, dk | dv]
  Tensor beta, b;  // [nb, C]: beta; [nb, C, gw]: chunk-local inclusive cumulative log decay (gated only)
  Tensor Kk;       // K K^T [nb, C, C]
  Tensor T;        // (I + M)^-1 [nb, C, C]
  Tensor P;        // tril(Q K^T) o D [nb, C, C]
  Tensor w;        // -T diag(beta gamma) K [nb, C, dk]
  Tensor u;        // U~ = T diag(beta) V + W S0 [nb, C, dv]
  Tensor kt, qg;   // diag(exp(b_last - b)) K, diag(gamma) Q (= k, q when not gated)
  Tensor kg;       // channel only: Gamma o K [nb, C, dk]
  Tensor S;        // state before each chunk [nb, dk, dv]
  // Channel only, per sub-block a (rows t in [L a, end), reference r = L a - 1, b_{-1} = 0):
  Tensor lq;  // [nb, 2 (end - L a), dk]: k_t o exp(b_t - b_r), then q_t o exp(b_t - b_r) (<= 1)
  Tensor kr;  // [nb, end, dk]: k_s o exp(b_r - b_s) (<= 1 for s <= r)
  std::vector<uint8_t> wide;  // [nb, subs]: the sub-block's own pairs are summed one by one (see kSafeSpan)
  int64_t lq_off(int64_t a) const { return G.nb * 2 * G.L * a * G.d.K; }
  int64_t kr_off(int64_t a) const { return G.nb * G.L * (a * (a + 1) / 2) * G.d.K; }
  // d[s] = D[t, s] of item i for s <= t (channel: 1, the decays are folded into Kk and P)
  void decay_row(int64_t i, int64_t t, float* d) const {
    if (!G.gated || G.channel) {
      std::fill(d, d + t + 1, 1.f);
      return;
    }
    const float* bi = b.data() + i * G.C;
    const float bt = bi[t];
#pragma omp simd
    for (int64_t s = 0; s <= t; ++s) d[s] = vec::exp(bt - bi[s]);
  }
  float gamma(int64_t i, int64_t t) const { return G.gated ? std::exp(b.data()[i * G.C + t]) : 1.f; }
  // gamma of key dimension j (the scalar gamma when the decay is per head)
  const float* brow(int64_t i, int64_t t) const { return b.data() + (i * G.C + t) * G.gw(); }
  float gamma(int64_t i, int64_t t, int64_t j) const {
    return G.gated ? std::exp(brow(i, t)[G.channel ? j : 0]) : 1.f;
  }
};

// Per-key-dimension decays: Kk[t, s] = sum_j k_t[j] k_s[j] exp(b_t[j] - b_s[j]) and P likewise
// with q_t are not products of two matrices, but they are per sub-block of rows: for t in sub-block
// a and the reference r = L a - 1 (b_{-1} = 0), exp(b_t - b_s) = exp(b_t - b_r) exp(b_r - b_s), so
// rows t of [Kk; P] = [K o El; Q o El] (K o Er)^T, one [2L, dk] x [dk, end] product per chunk and
// sub-block (fla's chunk_kda factors its sub-chunks the same way). Both factors are <= 1 for the
// earlier sub-blocks; inside its own sub-block exp(b_r - b_s) >= 1 grows with the decay the
// sub-block spans, so where that span exceeds kSafeSpan (exp(40) ~ 2e17, far from float overflow
// whatever k, q and the upstream gradients hold) the sub-block's own pairs are summed one by one
// with exp(b_t - b_s) instead.
constexpr float kSafeSpan = 40.f;

// p.lq, p.kr and p.wide from p.k, p.q and p.b.
void channel_factors(Plan& p) {
  const Geo& G = p.G;
  const int64_t C = G.C, K = G.d.K, A = G.subs();
  int64_t kr_rows = 0;
  for (int64_t a = 0; a < A; ++a) kr_rows += G.end(a);
  p.lq = Tensor::empty({G.nb, 2 * C, K});
  p.kr = Tensor::empty({G.nb, kr_rows, K});
  p.wide.assign(static_cast<size_t>(G.nb * A), 0);
  parallel_for(G.nb, 1, [&](int64_t i0, int64_t i1) {
    const std::vector<float> zero(static_cast<size_t>(K), 0.f);
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t a = 0; a < A; ++a) {
        const int64_t t0 = G.L * a, e = G.end(a), R = e - t0;
        const float* br = a > 0 ? p.brow(i, t0 - 1) : zero.data();
        const float* bl = p.brow(i, e - 1);
        float span = 0.f;
        for (int64_t j = 0; j < K; ++j) span = std::max(span, br[j] - bl[j]);
        const bool wide = span > kSafeSpan;
        p.wide[static_cast<size_t>(i * A + a)] = wide;
        float* lq = (p.lq.data() + p.lq_off(a)) + i * 2 * R * K;
        for (int64_t t = t0; t < e; ++t) {
          const float *bt = p.brow(i, t), *kt = p.k.data() + (i * C + t) * K, *qt = p.q.data() + (i * C + t) * K;
          float *lk = lq + (t - t0) * K, *lqt = lq + (R + t - t0) * K;
#pragma omp simd
          for (int64_t j = 0; j < K; ++j) {
            const float f = vec::exp(bt[j] - br[j]);
            lk[j] = kt[j] * f;
            lqt[j] = qt[j] * f;
          }
        }
        float* kr = (p.kr.data() + p.kr_off(a)) + i * e * K;
        for (int64_t s = 0; s < e; ++s) {
          const float *bs = p.brow(i, s), *ks = p.k.data() + (i * C + s) * K;
          float* o = kr + s * K;
          if (wide && s >= t0) {
            std::fill(o, o + K, 0.f);
            continue;
          }
#pragma omp simd
          for (int64_t j = 0; j < K; ++j) o[j] = ks[j] * vec::exp(br[j] - bs[j]);
        }
      }
  });
}

// p.Kk (s <= t) and p.P (s <= t, zero above) of the per-key-dimension decays.
void channel_products(Plan& p) {
  const Geo& G = p.G;
  const int64_t C = G.C, K = G.d.K, A = G.subs();
  channel_factors(p);
  for (int64_t a = 0; a < A; ++a) {
    const int64_t t0 = G.L * a, e = G.end(a), R = e - t0;
    Tensor out = Tensor::empty({G.nb, 2 * R, e});  // [Kk; P] rows of the sub-block, columns [0, e)
    gemm((p.lq.data() + p.lq_off(a)), (p.kr.data() + p.kr_off(a)), out.data(), G.nb, 2 * R, e, K, false, true);
    parallel_for(G.nb, 8, [&](int64_t i0, int64_t i1) {
      std::vector<float> x(static_cast<size_t>(K));
      for (int64_t i = i0; i < i1; ++i) {
        const float* o = out.data() + i * 2 * R * e;
        const bool wide = p.wide[static_cast<size_t>(i * A + a)];
        for (int64_t t = t0; t < e; ++t) {
          float *kk = p.Kk.data() + (i * C + t) * C, *P = p.P.data() + (i * C + t) * C;
          const float *ok = o + (t - t0) * e, *op = o + (R + t - t0) * e;
          for (int64_t s = 0; s < C; ++s) {
            kk[s] = s <= t ? ok[s] : 0.f;
            P[s] = s <= t ? op[s] : 0.f;
          }
          if (!wide) continue;
          const float *bt = p.brow(i, t), *kt = p.k.data() + (i * C + t) * K, *qt = p.q.data() + (i * C + t) * K;
          for (int64_t s = t0; s <= t; ++s) {  // this sub-block's own pairs, one by one
            const float *bs = p.brow(i, s), *ks = p.k.data() + (i * C + s) * K;
#pragma omp simd
            for (int64_t j = 0; j < K; ++j) x[j] = ks[j] * vec::exp(bt[j] - bs[j]);
            kk[s] = dot(kt, x.data(), K);
            P[s] = dot(qt, x.data(), K);
          }
        }
      }
    });
  }
}

Plan prepare(const Geo& G, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor* g) {
  const int64_t C = G.C, K = G.d.K, V = G.d.V, nb = G.nb;
  Plan p;
  p.G = G;
  p.q = pack(G, q.data(), K);
  p.k = pack(G, k.data(), K);
  p.v = pack(G, v.data(), V);
  p.beta = pack(G, beta.data(), 1);
  if (G.gated) {
    const int64_t gw = G.gw();
    p.b = pack(G, g->data(), gw);
    float* b = p.b.data();
    parallel_for(nb, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t t = 1; t < C; ++t)
          for (int64_t j = 0; j < gw; ++j) b[(i * C + t) * gw + j] += b[(i * C + t - 1) * gw + j];
    });
  }
  p.Kk = Tensor::empty({nb, C, C});
  p.P = Tensor::empty({nb, C, C});
  if (G.channel) {
    channel_products(p);
  } else {
    gemm(p.k.data(), p.k.data(), p.Kk.data(), nb, C, C, K, false, true);
    gemm(p.q.data(), p.k.data(), p.P.data(), nb, C, C, K, false, true);
  }
  p.T = Tensor::empty({nb, C, C});
  Tensor kb = Tensor::empty({nb, C, K}), vb = Tensor::empty({nb, C, V});
  p.kt = G.gated ? Tensor::empty({nb, C, K}) : p.k;
  p.qg = G.gated ? Tensor::empty({nb, C, K}) : p.q;
  if (G.channel) p.kg = Tensor::empty({nb, C, K});
  parallel_for(nb, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> m(static_cast<size_t>(C));
    for (int64_t i = i0; i < i1; ++i) {
      const float* kk = p.Kk.data() + i * C * C;
      const float* be = p.beta.data() + i * C;
      float* T = p.T.data() + i * C * C;
      float* P = p.P.data() + i * C * C;
      // T row t = e_t - sum_{s<t} M[t, s] T row s, M[t, s] = beta_t (k_t . k_s) D[t, s]
      for (int64_t t = 0; t < C; ++t) {
        float* row = T + t * C;
        p.decay_row(i, t, m.data());
        std::fill(row, row + C, 0.f);
        row[t] = 1.f;
        for (int64_t s = 0; s < t; ++s) {
          const float mts = be[t] * kk[t * C + s] * m[s];
          if (mts != 0.f) axpy(row, T + s * C, -mts, s + 1);
        }
        for (int64_t s = 0; s < C; ++s) P[t * C + s] = s <= t ? P[t * C + s] * m[s] : 0.f;
      }
      for (int64_t t = 0; t < C; ++t) {
        const float gt = p.gamma(i, t);
        const float* kr = p.k.data() + (i * C + t) * K;
        const float* qr = p.q.data() + (i * C + t) * K;
        const float* vr = p.v.data() + (i * C + t) * V;
        float* kbr = kb.data() + (i * C + t) * K;
        float* vbr = vb.data() + (i * C + t) * V;
        for (int64_t j = 0; j < V; ++j) vbr[j] = be[t] * vr[j];
        if (G.channel) {
          const float *bt = p.brow(i, t), *bl = p.brow(i, C - 1);
          float* ktr = p.kt.data() + (i * C + t) * K;
          float* qgr = p.qg.data() + (i * C + t) * K;
          float* kgr = p.kg.data() + (i * C + t) * K;
#pragma omp simd
          for (int64_t j = 0; j < K; ++j) {
            const float gj = vec::exp(bt[j]);
            kgr[j] = gj * kr[j];
            kbr[j] = -be[t] * kgr[j];
            qgr[j] = gj * qr[j];
            ktr[j] = vec::exp(bl[j] - bt[j]) * kr[j];
          }
          continue;
        }
        for (int64_t j = 0; j < K; ++j) kbr[j] = -be[t] * gt * kr[j];
        if (G.gated) {
          const float f = std::exp(p.b.data()[i * C + C - 1] - p.b.data()[i * C + t]);  // <= 1
          float* ktr = p.kt.data() + (i * C + t) * K;
          float* qgr = p.qg.data() + (i * C + t) * K;
          for (int64_t j = 0; j < K; ++j) {
            ktr[j] = f * kr[j];
            qgr[j] = gt * qr[j];
          }
        }
      }
    }
  });
  p.w = Tensor::empty({nb, C, K});
  p.u = Tensor::empty({nb, C, V});
  gemm(p.T.data(), kb.data(), p.w.data(), nb, C, K, C, false, false);
  gemm(p.T.data(), vb.data(), p.u.data(), nb, C, V, C, false, false);
  // The chunk recurrence: U~_c = U_c + W_c S_c, S_{c+1} = gamma_last S_c + Kt_c^T U~_c.
  const int64_t BH = G.BH, KV = K * V;
  p.S = Tensor::empty({nb, K, V});
  std::fill(p.S.data(), p.S.data() + BH * KV, 0.f);
  for (int64_t c = 0; c < G.nc; ++c) {
    const int64_t i = G.item(c, 0);
    float* Sc = p.S.data() + i * KV;
    float* uc = p.u.data() + i * C * V;
    if (c > 0) gemm(p.w.data() + i * C * K, Sc, uc, BH, C, V, K, false, false, true);
    if (c + 1 == G.nc) break;
    float* Sn = Sc + BH * KV;
    for (int64_t bh = 0; bh < BH; ++bh)
      for (int64_t r = 0; r < K; ++r) {  // diag(gamma_last) S
        const float a = p.gamma(i + bh, C - 1, r);
        for (int64_t j = 0; j < V; ++j) Sn[bh * KV + r * V + j] = a * Sc[bh * KV + r * V + j];
      }
    gemm(p.kt.data() + i * C * K, uc, Sn, BH, K, V, C, true, false, true);
  }
  return p;
}

// O = diag(gamma) Q S0 + P U~ -> packed [nb, C, dv]
Tensor chunk_output(const Plan& p) {
  const int64_t C = p.G.C, K = p.G.d.K, V = p.G.d.V, nb = p.G.nb;
  Tensor o = Tensor::empty({nb, C, V});
  gemm(p.qg.data(), p.S.data(), o.data(), nb, C, V, K, false, false);
  gemm(p.P.data(), p.u.data(), o.data(), nb, C, V, C, false, false, true);
  return o;
}

struct Grads {
  Tensor dq, dk, dv, dbeta, dg;  // packed
};

// The end of the backward for per-key-dimension decays (KDA). On entry r.dq holds dQg = dO S0^T,
// r.dk dKb = T^T dW, r.dv dVb = T^T dU; dKt = U~ dSn^T, ndM = -dM, dP = dO U~^T.
// The pairwise terms M[t, s] = beta_t Kk[t, s] (s < t) and P[t, s] (s <= t) go back through the
// sub-block factorisation of channel_products: with G = [dA; dP] (dA = beta_t dM) the rows of a
// sub-block,
//   dk_t += El_t o (G_k Kr), dq_t += El_t o (G_q Kr)     (rows: [2R, end] x [end, dk])
//   dk_s += Er_s o (G^T [K o El; Q o El])                 (columns: [end, 2R] x [2R, dk])
// and the log-decay gradient of those terms is q o dq + k o dk (row side) - k o dk (column side),
// per dimension, summed in reverse over the chunk with the direct terms.
void channel_assembly(const Plan& p, const Tensor& dSn, const Tensor& dKt, const Tensor& ndM, const Tensor& dPm,
                      Grads& r) {
  const Geo& G = p.G;
  const int64_t C = G.C, K = G.d.K, V = G.d.V, KV = K * V, A = G.subs();
  auto row = [&](auto& x, int64_t i, int64_t t, int64_t w) { return x.data() + (i * C + t) * w; };
  Tensor db = Tensor::zeros({G.nb, C, K});  // d loss / d b_t[j] (b: the cumulative log decay)
  // The direct terms (every place but K K^T and Q K^T where Gamma, Gamma_last / Gamma or beta appear).
  parallel_for(G.nb, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> ysum(static_cast<size_t>(K));  // sum_t of the Kt term, all at b_last
    for (int64_t i = i0; i < i1; ++i) {
      const float* be = p.beta.data() + i * C;
      const float* kk = p.Kk.data() + i * C * C;
      const float* ndm = ndM.data() + i * C * C;
      const float* bl = p.brow(i, C - 1);
      float* dbl = db.data() + (i * C + C - 1) * K;
      std::fill(ysum.begin(), ysum.end(), 0.f);
      for (int64_t t = 0; t < C; ++t) {
        const float *kg = row(p.kg, i, t, K), *qg = row(p.qg, i, t, K);
        const float *vr = row(p.v, i, t, V), *ktr = row(p.kt, i, t, K), *dktr = row(dKt, i, t, K), *bt = p.brow(i, t);
        float *dkr = row(r.dk, i, t, K), *dqr = row(r.dq, i, t, K), *dvr = row(r.dv, i, t, V);
        float* dbr = db.data() + (i * C + t) * K;
        double dbt = double(dot(vr, dvr, V)) - dot(kg, dkr, K);  // vb = beta V, kb = -beta Gamma K
        for (int64_t s = 0; s < t; ++s) dbt -= double(ndm[t * C + s]) * kk[t * C + s];  // M = beta Kk
        r.dbeta.data()[i * C + t] = static_cast<float>(dbt);
        for (int64_t j = 0; j < V; ++j) dvr[j] *= be[t];
        const float bet = be[t];
#pragma omp simd
        for (int64_t j = 0; j < K; ++j) {
          const float x = dkr[j], y = ktr[j] * dktr[j];
          dbr[j] += -bet * kg[j] * x + qg[j] * dqr[j] - y;  // through kb, Qg and Kt
          ysum[j] += y;
          dkr[j] = -bet * vec::exp(bt[j]) * x + vec::exp(bl[j] - bt[j]) * dktr[j];
          dqr[j] *= vec::exp(bt[j]);
        }
      }
      // diag(gamma_last) S0 in S1: d/db_last[j] += gamma_last[j] <S0 row j, dS1 row j>
      for (int64_t j = 0; j < K; ++j)
        dbl[j] += ysum[j] + vec::exp(bl[j]) * dot(p.S.data() + i * KV + j * V, dSn.data() + i * KV + j * V, V);
    }
  });
  // The pairwise terms, a sub-block of rows at a time.
  for (int64_t a = 0; a < A; ++a) {
    const int64_t t0 = G.L * a, e = G.end(a), R = e - t0;
    Tensor g = Tensor::empty({G.nb, 2 * R, e});  // [dA; dP] rows [t0, e), columns [0, e)
    parallel_for(G.nb, 8, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float* be = p.beta.data() + i * C;
        const bool wide = p.wide[static_cast<size_t>(i * A + a)];
        for (int64_t t = t0; t < e; ++t) {
          const float *ndm = ndM.data() + (i * C + t) * C, *dp = dPm.data() + (i * C + t) * C;
          float *gA = g.data() + (i * 2 * R + t - t0) * e, *gP = gA + R * e;
          const int64_t own = wide ? t0 : e;  // columns from here on are summed one by one
          for (int64_t s = 0; s < e; ++s) {
            gA[s] = s < t && s < own ? -ndm[s] * be[t] : 0.f;
            gP[s] = s <= t && s < own ? dp[s] : 0.f;
          }
          if (!wide) continue;
          const float *kr = row(p.k, i, t, K), *qr = row(p.q, i, t, K), *bt = p.brow(i, t);
          float *dkr = row(r.dk, i, t, K), *dqr = row(r.dq, i, t, K), *dbr = db.data() + (i * C + t) * K;
          for (int64_t j = 0; j < K; ++j) {  // s = t: dA = 0, exp(0) = 1, no log-decay term
            dqr[j] += dp[t] * kr[j];
            dkr[j] += dp[t] * qr[j];
          }
          for (int64_t s = t0; s < t; ++s) {
            const float dA = -ndm[s] * be[t], dP = dp[s];
            const float *bs = p.brow(i, s), *ks = row(p.k, i, s, K);
            float *dks = row(r.dk, i, s, K), *dbs = db.data() + (i * C + s) * K;
#pragma omp simd
            for (int64_t j = 0; j < K; ++j) {
              const float ej = vec::exp(bt[j] - bs[j]), w = (dA * kr[j] + dP * qr[j]) * ej;
              dkr[j] += dA * ks[j] * ej;
              dqr[j] += dP * ks[j] * ej;
              dks[j] += w;
              dbr[j] += w * ks[j];
              dbs[j] -= w * ks[j];
            }
          }
        }
      }
    });
    Tensor y = Tensor::empty({G.nb, 2 * R, K}), z = Tensor::empty({G.nb, e, K});
    gemm(g.data(), (p.kr.data() + p.kr_off(a)), y.data(), G.nb, 2 * R, K, e, false, false);   // rows
    gemm(g.data(), (p.lq.data() + p.lq_off(a)), z.data(), G.nb, e, K, 2 * R, true, false);    // columns
    parallel_for(G.nb, 8, [&](int64_t i0, int64_t i1) {
      const std::vector<float> zero(static_cast<size_t>(K), 0.f);
      for (int64_t i = i0; i < i1; ++i) {
        const float* br = a > 0 ? p.brow(i, t0 - 1) : zero.data();
        const float* lq = (p.lq.data() + p.lq_off(a)) + i * 2 * R * K;
        const float* kr = (p.kr.data() + p.kr_off(a)) + i * e * K;
        const float* yi = y.data() + i * 2 * R * K;
        const float* zi = z.data() + i * e * K;
        for (int64_t t = t0; t < e; ++t) {
          const float *bt = p.brow(i, t), *yk = yi + (t - t0) * K, *yq = yi + (R + t - t0) * K;
          const float *lk = lq + (t - t0) * K, *lqt = lq + (R + t - t0) * K;
          float *dkr = row(r.dk, i, t, K), *dqr = row(r.dq, i, t, K), *dbr = db.data() + (i * C + t) * K;
#pragma omp simd
          for (int64_t j = 0; j < K; ++j) {
            const float f = vec::exp(bt[j] - br[j]);
            dkr[j] += f * yk[j];
            dqr[j] += f * yq[j];
            dbr[j] += lk[j] * yk[j] + lqt[j] * yq[j];
          }
        }
        const int64_t cols = p.wide[static_cast<size_t>(i * A + a)] ? t0 : e;
        for (int64_t s = 0; s < cols; ++s) {
          const float *bs = p.brow(i, s), *zs = zi + s * K, *krs = kr + s * K;
          float *dks = row(r.dk, i, s, K), *dbs = db.data() + (i * C + s) * K;
#pragma omp simd
          for (int64_t j = 0; j < K; ++j) {
            dks[j] += vec::exp(br[j] - bs[j]) * zs[j];
            dbs[j] -= krs[j] * zs[j];
          }
        }
      }
    });
  }
  // dg: the reverse cumulative sum of db over the chunk (in double).
  parallel_for(G.nb, 8, [&](int64_t i0, int64_t i1) {
    std::vector<double> acc(static_cast<size_t>(K));
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = C - 1; t >= 0; --t) {
        const float* d = db.data() + (i * C + t) * K;
        float* dg = r.dg.data() + (i * C + t) * K;
        for (int64_t j = 0; j < K; ++j) dg[j] = static_cast<float>(acc[j] += d[j]);
      }
    }
  });
}

Grads chunk_backward(const Plan& p, const Tensor& dOp) {
  const Geo& G = p.G;
  const int64_t C = G.C, K = G.d.K, V = G.d.V, nb = G.nb, BH = G.BH, KV = K * V;
  const float* dO = dOp.data();
  // dU~ = P^T dO (+ Kt dS_next below); dP = dO U~^T
  Tensor dU = Tensor::empty({nb, C, V}), dP = Tensor::empty({nb, C, C});
  gemm(p.P.data(), dO, dU.data(), nb, C, V, C, true, false);
  gemm(dO, p.u.data(), dP.data(), nb, C, C, V, false, true);
  // Reverse sweep: dSn[c] = the gradient of the state after chunk c.
  Tensor dSn = Tensor::empty({nb, K, V});
  std::fill(dSn.data() + G.item(G.nc - 1, 0) * KV, dSn.data() + nb * KV, 0.f);
  for (int64_t c = G.nc - 1; c >= 0; --c) {
    const int64_t i = G.item(c, 0);
    float* dSc = dSn.data() + i * KV;
    float* dUc = dU.data() + i * C * V;
    if (c + 1 < G.nc) gemm(p.kt.data() + i * C * K, dSc, dUc, BH, C, V, K, false, false, true);
    if (c == 0) break;
    float* dSp = dSc - BH * KV;  // dS_c = gamma_last dS_{c+1} + Qg^T dO + W^T dU~
    for (int64_t bh = 0; bh < BH; ++bh)
      for (int64_t r = 0; r < K; ++r) {
        const float a = p.gamma(i + bh, C - 1, r);
        for (int64_t j = 0; j < V; ++j) dSp[bh * KV + r * V + j] = a * dSc[bh * KV + r * V + j];
      }
    gemm(p.qg.data() + i * C * K, dO + i * C * V, dSp, BH, K, V, C, true, false, true);
    gemm(p.w.data() + i * C * K, dUc, dSp, BH, K, V, C, true, false, true);
  }
  Grads r;
  r.dq = Tensor::empty({nb, C, K});     // dQg = dO S0^T, then dq
  Tensor dKt = Tensor::empty({nb, C, K});  // U~ dSn^T
  Tensor dW = Tensor::empty({nb, C, K});   // dU~ S0^T
  gemm(dO, p.S.data(), r.dq.data(), nb, C, K, V, false, true);
  gemm(p.u.data(), dSn.data(), dKt.data(), nb, C, K, V, false, true);
  gemm(dU.data(), p.S.data(), dW.data(), nb, C, K, V, false, true);
  // dT = dU (diag(beta) V)^T + dW (-diag(beta gamma) K)^T: the products with V and K, scaled below.
  Tensor dT = Tensor::empty({nb, C, C}), X = Tensor::empty({nb, C, C});
  gemm(dU.data(), p.v.data(), dT.data(), nb, C, C, V, false, true);
  gemm(dW.data(), (G.channel ? p.kg : p.k).data(), X.data(), nb, C, C, K, false, true);
  parallel_for(nb, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* be = p.beta.data() + i * C;
      float* dt = dT.data() + i * C * C;
      const float* x = X.data() + i * C * C;
      for (int64_t s = 0; s < C; ++s) {
        const float bs = be[s], bg = be[s] * (G.channel ? 1.f : p.gamma(i, s));
        for (int64_t t = 0; t < C; ++t) dt[t * C + s] = dt[t * C + s] * bs - x[t * C + s] * bg;
      }
    }
  });
  // dVb = T^T dU, dKb = T^T dW; dM = -T^T dT T^T
  r.dv = Tensor::empty({nb, C, V});
  Tensor dKb = Tensor::empty({nb, C, K});
  gemm(p.T.data(), dU.data(), r.dv.data(), nb, C, V, C, true, false);
  gemm(p.T.data(), dW.data(), dKb.data(), nb, C, K, C, true, false);
  dU = Tensor();
  dW = Tensor();
  gemm(p.T.data(), dT.data(), X.data(), nb, C, C, C, true, false);
  gemm(X.data(), p.T.data(), dT.data(), nb, C, C, C, false, true);  // dT now holds -dM
  r.dbeta = Tensor::empty({nb, C});
  if (G.channel) {
    r.dg = Tensor::empty({nb, C, K});
    r.dk = dKb;
    channel_assembly(p, dSn, dKt, dT, dP, r);
    return r;
  }
  if (G.gated) r.dg = Tensor::empty({nb, C});
  // Element-wise assembly per chunk. X becomes E = dKK + dKK^T (the gradient of K K^T through M),
  // dP becomes dP o D (lower triangle).
  parallel_for(nb, 1, [&](int64_t i0, int64_t i1) {
    std::vector<double> db(static_cast<size_t>(C));
    std::vector<float> drow(static_cast<size_t>(C));
    for (int64_t i = i0; i < i1; ++i) {
      const float* be = p.beta.data() + i * C;
      const float* kk = p.Kk.data() + i * C * C;
      const float* P = p.P.data() + i * C * C;
      const float* ndm = dT.data() + i * C * C;  // -dM
      float* E = X.data() + i * C * C;
      float* dp = dP.data() + i * C * C;
      float* dbe = r.dbeta.data() + i * C;
      std::fill(db.begin(), db.end(), 0.0);
      for (int64_t t = 0; t < C; ++t) {
        E[t * C + t] = 0.f;
        double dbt = 0;
        p.decay_row(i, t, drow.data());
        for (int64_t s = 0; s < t; ++s) {
          const float D = drow[s], dm = -ndm[t * C + s];
          const float m = be[t] * kk[t * C + s] * D;
          dbt += double(dm) * kk[t * C + s] * D;
          const float e = dm * be[t] * D;
          E[t * C + s] = e;
          E[s * C + t] = e;
          if (G.gated) {
            db[t] += double(dm) * m;
            db[s] -= double(dm) * m;
          }
        }
        for (int64_t s = 0; s <= t; ++s) {
          if (G.gated) {
            const double x = double(dp[t * C + s]) * P[t * C + s];
            db[t] += x;
            db[s] -= x;
          }
          dp[t * C + s] *= drow[s];
        }
        for (int64_t s = t + 1; s < C; ++s) dp[t * C + s] = 0.f;
        const float gt = p.gamma(i, t);
        const float* vr = p.v.data() + (i * C + t) * V;
        const float* kr = p.k.data() + (i * C + t) * K;
        float* dvr = r.dv.data() + (i * C + t) * V;  // dVb -> dv
        float* dkb = dKb.data() + (i * C + t) * K;   // dKb -> the direct part of dk
        float* dqr = r.dq.data() + (i * C + t) * K;  // dQg -> the direct part of dq
        const float kdk = dot(kr, dkb, K);
        dbt += dot(vr, dvr, V) - double(gt) * kdk;
        dbe[t] = static_cast<float>(dbt);
        for (int64_t j = 0; j < V; ++j) dvr[j] *= be[t];
        if (G.gated) {
          const float* qr = p.q.data() + (i * C + t) * K;
          const float* ktr = p.kt.data() + (i * C + t) * K;
          const float* dktr = dKt.data() + (i * C + t) * K;
          db[t] += double(gt) * dot(qr, dqr, K) - double(be[t]) * gt * kdk;
          const double y = dot(ktr, dktr, K);
          db[C - 1] += y;
          db[t] -= y;
          const float f = std::exp(p.b.data()[i * C + C - 1] - p.b.data()[i * C + t]);
          for (int64_t j = 0; j < K; ++j) {
            dkb[j] = -be[t] * gt * dkb[j] + f * dktr[j];
            dqr[j] *= gt;
          }
        } else {
          const float* dktr = dKt.data() + (i * C + t) * K;
          for (int64_t j = 0; j < K; ++j) dkb[j] = -be[t] * dkb[j] + dktr[j];
        }
      }
      if (G.gated) {
        // gamma_last S0 in S1: d/db_last += gamma_last <S0, dS1>
        db[C - 1] += double(p.gamma(i, C - 1)) * dot(p.S.data() + i * KV, dSn.data() + i * KV, KV);
        double acc = 0;
        float* dg = r.dg.data() + i * C;
        for (int64_t t = C - 1; t >= 0; --t) dg[t] = static_cast<float>(acc += db[t]);
      }
    }
  });
  // dq += (dP o D) K, dk += (dP o D)^T Q + E K
  gemm(dP.data(), p.k.data(), r.dq.data(), nb, C, K, C, false, false, true);
  gemm(dP.data(), p.q.data(), dKb.data(), nb, C, K, C, true, false, true);
  gemm(X.data(), p.k.data(), dKb.data(), nb, C, K, C, false, false, true);
  r.dk = dKb;
  return r;
}

}  // namespace

Var delta_rule(const Var& q, const Var& k, const Var& v, const Var& beta, const Var& log_alpha,
               const DeltaRuleOptions& opt) {
  const bool gated = log_alpha.defined();
  const Dims d = check_shapes(q.value(), k.value(), v.value(), beta.value(), gated ? &log_alpha.value() : nullptr);
  require(opt.chunk >= 1, fmt::format("chunk = {} must be >= 1", opt.chunk));
  Geo G;
  G.d = d;
  G.C = std::min(opt.chunk, std::max<int64_t>(d.N, 1));
  G.nc = std::max<int64_t>(1, (d.N + G.C - 1) / G.C);
  G.BH = d.B * d.H;
  G.nb = G.nc * G.BH;
  G.gated = gated;
  G.channel = gated && log_alpha.value().rank() == 4;
  G.reverse = opt.reverse;
  Tensor out = Tensor::empty({d.B, d.H, d.N, d.V});
  {
    const Plan p = prepare(G, q.value(), k.value(), v.value(), beta.value(), gated ? &log_alpha.value() : nullptr);
    unpack(G, chunk_output(p), out.data(), d.V);
  }
  std::vector<Var> inputs{q, k, v, beta};
  if (gated) inputs.push_back(log_alpha);
  const GradSink gq = q.sink(), gk = k.sink(), gv = v.sink(), gb = beta.sink(), gg = gated ? log_alpha.sink() : GradSink();
  const Tensor qv = q.value(), kv = k.value(), vv = v.value(), bv = beta.value(), lv = gated ? log_alpha.value() : Tensor();
  return make_op_result(std::move(out), inputs, [gq, gk, gv, gb, gg, qv, kv, vv, bv, lv, G](const Tensor& grad) {
    Grads r;
    {
      const Plan p = prepare(G, qv, kv, vv, bv, G.gated ? &lv : nullptr);
      const Tensor dOp = pack(G, grad.data(), G.d.V);
      r = chunk_backward(p, dOp);
    }
    auto out = [&](const Tensor& packed, const Shape& shape, int64_t w) {
      Tensor t = Tensor::empty(shape);
      unpack(G, packed, t.data(), w);
      return t;
    };
    if (gq.wanted()) gq.accumulate(out(r.dq, qv.shape(), G.d.K));
    if (gk.wanted()) gk.accumulate(out(r.dk, kv.shape(), G.d.K));
    if (gv.wanted()) gv.accumulate(out(r.dv, vv.shape(), G.d.V));
    if (gb.wanted()) gb.accumulate(out(r.dbeta, bv.shape(), 1));
    if (G.gated && gg.wanted()) gg.accumulate(out(r.dg, lv.shape(), G.gw()));
  });
}

Var delta_rule_mix(const Var& q, const Var& k, const Var& v, const Var& beta, const Var& log_alpha,
                   const DeltaRuleOptions& opt, bool causal) {
  DeltaRuleOptions o = opt;
  o.reverse = false;
  if (causal) return delta_rule(q, k, v, beta, log_alpha, o);
  Var fwd = delta_rule(q, k, v, beta, log_alpha, o);
  o.reverse = true;
  return add(fwd, delta_rule(q, k, v, beta, log_alpha, o));
}

// ---- decoding ----
DeltaRuleState::DeltaRuleState(int64_t batch, int64_t heads, int64_t key_dim, int64_t value_dim)
    : batch_(batch), heads_(heads), dk_(key_dim), dv_(value_dim), s_(Tensor::zeros({batch, heads, key_dim, value_dim})) {}

Tensor DeltaRuleState::step(const Tensor& q_t, const Tensor& k_t, const Tensor& v_t, const Tensor& beta_t,
                            const Tensor& log_alpha_t) {
  const bool gated = log_alpha_t.defined();
  const Dims d = check_shapes(q_t, k_t, v_t, beta_t, gated ? &log_alpha_t : nullptr);
  require(d.B == batch_ && d.H == heads_ && d.N == 1 && d.K == dk_ && d.V == dv_,
          fmt::format("decode step v {} / q {} does not fit the state [{}, {}, {}, {}]", shape_str(v_t.shape()),
                      shape_str(q_t.shape()), batch_, heads_, dk_, dv_));
  Tensor o = Tensor::zeros({d.B, d.H, 1, d.V});
  std::vector<float> u(static_cast<size_t>(dv_));
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    float* S = s_.data() + bh * dk_ * dv_;
    const float* q = q_t.data() + bh * dk_;
    const float* k = k_t.data() + bh * dk_;
    const float* v = v_t.data() + bh * dv_;
    const int64_t gw = gated && log_alpha_t.rank() == 4 ? dk_ : 1;
    const float b = beta_t.data()[bh];
    // S <- diag(a) S; u = beta (v - S^T k); S <- S + k u^T; o = S^T q
    for (int64_t j = 0; j < dv_; ++j) u[j] = v[j];
    for (int64_t i = 0; i < dk_; ++i) {
      float* row = S + i * dv_;
      const float a = gated ? std::exp(log_alpha_t.data()[bh * gw + (gw > 1 ? i : 0)]) : 1.f;
      for (int64_t j = 0; j < dv_; ++j) row[j] *= a;
      axpy(u.data(), row, -k[i], dv_);
    }
    for (int64_t j = 0; j < dv_; ++j) u[j] *= b;
    float* ot = o.data() + bh * dv_;
    for (int64_t i = 0; i < dk_; ++i) {
      float* row = S + i * dv_;
      axpy(row, u.data(), k[i], dv_);
      axpy(ot, row, q[i], dv_);
    }
  }
  return o;
}

}  // namespace ab
