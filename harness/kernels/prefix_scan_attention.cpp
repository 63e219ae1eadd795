// Prefix-scan ops for aaren, transnormer and flowformer (see prefix_scan_attention.hpp).
// TBB loops only; no oneDNN call inside a parallel region.
#include "attnbench/kernels/prefix_scan_attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "core/backend/onednn.hpp"
#include "kernels/detail/vec.hpp"

namespace ab {

using kernels::parallel_for;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(fmt::format("{}: {}", op, what));
}

// Whether key position i of batch row b is visible (keep: the key_keep_flags of [B, N], empty = all).
inline bool kept(const std::vector<float>& keep, int64_t b, int64_t N, int64_t i) {
  return keep.empty() || keep[b * N + i] != 0.f;
}

// ---- prefix softmax attention ----
constexpr int64_t kChunk = 256;  // positions per scan chunk

struct ScanDims {
  int64_t B, H, N, dv, BH, chunks;
};

// Online-softmax accumulator (m, u, w[dv]); w lives in caller storage.
inline void absorb(float& m, float& u, float* w, float s, const float* v, int64_t dv) {
  // (m, u, w) (+) (s, 1, v)
  if (s == kNegInf) return;
  if (s > m) {
    const float c = m == kNegInf ? 0.f : std::exp(m - s);
    u = u * c + 1.f;
    for (int64_t c2 = 0; c2 < dv; ++c2) w[c2] = w[c2] * c + v[c2];
    m = s;
  } else {
    const float e = std::exp(s - m);
    u += e;
    for (int64_t c2 = 0; c2 < dv; ++c2) w[c2] += e * v[c2];
  }
}

inline void combine(float& m, float& u, float* w, float mb, float ub, const float* wb, int64_t dv) {
  // (m, u, w) (+)= (mb, ub, wb)
  if (mb == kNegInf) return;
  const float mm = std::max(m, mb);
  const float ca = m == kNegInf ? 0.f : std::exp(m - mm), cb = std::exp(mb - mm);
  u = u * ca + ub * cb;
  for (int64_t c = 0; c < dv; ++c) w[c] = w[c] * ca + wb[c] * cb;
  m = mm;
}

// Forward scan: s [BH, N], v [BH, N, dv] -> o [BH, N, dv], L [BH, N] (log-sum-exp, -inf where no
// key is visible yet). Chunked: (1) chunk aggregates, (2) exclusive prefix over chunks per (b, h),
// (3) rescan of each chunk from its prefix.
void prefix_softmax_forward(const ScanDims& d, const float* s, const float* v, const std::vector<float>& keep,
                            float* o, float* L) {
  const int64_t dv = d.dv, N = d.N, H = d.H, nc = d.chunks, stride = 2 + dv;
  std::vector<float> agg(static_cast<size_t>(d.BH * nc * stride));  // per chunk: m, u, w[dv]
  auto score = [&](int64_t bh, int64_t t) {
    return kept(keep, bh / H, N, t) ? s[bh * N + t] : kNegInf;
  };
  parallel_for(d.BH * nc, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t bh = task / nc, c = task % nc;
      float* a = agg.data() + task * stride;
      float m = kNegInf, u = 0.f;
      std::fill(a + 2, a + stride, 0.f);
      for (int64_t t = c * kChunk; t < std::min(N, (c + 1) * kChunk); ++t)
        absorb(m, u, a + 2, score(bh, t), v + (bh * N + t) * dv, dv);
      a[0] = m;
      a[1] = u;
    }
  });
  // Exclusive prefix over chunks, in place: agg[c] becomes A_0 (+) ... (+) A_{c-1}.
  parallel_for(d.BH, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> run(static_cast<size_t>(stride)), cur(static_cast<size_t>(stride));
    for (int64_t bh = b0; bh < b1; ++bh) {
      run[0] = kNegInf;
      std::fill(run.begin() + 1, run.end(), 0.f);
      for (int64_t c = 0; c < nc; ++c) {
        float* a = agg.data() + (bh * nc + c) * stride;
        std::copy(a, a + stride, cur.begin());
        std::copy(run.begin(), run.end(), a);
        combine(run[0], run[1], run.data() + 2, cur[0], cur[1], cur.data() + 2, dv);
      }
    }
  });
  parallel_for(d.BH * nc, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t task = b0; task < b1; ++task) {
      const int64_t bh = task / nc, c = task % nc;
      float* a = agg.data() + task * stride;  // the prefix; consumed in place
      float m = a[0], u = a[1];
      float* w = a + 2;
      for (int64_t t = c * kChunk; t < std::min(N, (c + 1) * kChunk); ++t) {
        const int64_t r = bh * N + t;
        absorb(m, u, w, score(bh, t), v + r * dv, dv);
        float* ot = o + r * dv;
        if (u > 0.f) {
          const float inv = 1.f / u;
          for (int64_t k = 0; k < dv; ++k) ot[k] = w[k] * inv;
          L[r] = m + std::log(u);
        } else {
          std::fill(ot, ot + dv, 0.f);
          L[r] = kNegInf;
        }
      }
    }
  });
}

}  // namespace

Var prefix_softmax_attention(const Var& s, const Var& v, const Tensor* key_mask) {
  const char* op = "prefix_softmax_attention";
  require(s.rank() == 3 && v.rank() == 4 && v.dim(0) == s.dim(0) && v.dim(1) == s.dim(1) && v.dim(2) == s.dim(2), op,
          fmt::format("s {} must be [B, H, N] and v {} [B, H, N, dv]", shape_str(s.shape()), shape_str(v.shape())));
  const int64_t B = s.dim(0), H = s.dim(1), N = s.dim(2), dv = v.dim(3);
  const ScanDims d{B, H, N, dv, B * H, std::max<int64_t>(1, (N + kChunk - 1) / kChunk)};
  const std::vector<float> keep = kernels::key_keep_flags(key_mask, B, N, op);
  Tensor out = Tensor::empty({B, H, N, dv}), L = Tensor::empty({B, H, N});
  prefix_softmax_forward(d, s.value().data(), v.value().data(), keep, out.data(), L.data());
  const GradSink gs = s.sink(), gv = v.sink();
  const Tensor sv = s.value(), vv = v.value();
  // Saves s, v and L [B, H, N]; o is recomputed in backward.
  return make_op_result(std::move(out), {s, v}, [gs, gv, sv, vv, L, keep, d](const Tensor& g) {
    const int64_t N = d.N, H = d.H, dv = d.dv, nc = d.chunks;
    Tensor o = Tensor::empty({d.BH, N, dv}), Lr = Tensor::empty({d.BH, N});
    prefix_softmax_forward(d, sv.data(), vv.data(), keep, o.data(), Lr.data());
    const float* Lp = L.data();
    const float* gp = g.data();
    const float* op_ = o.data();
    const float* sp = sv.data();
    const float* vp = vv.data();
    // Reverse scans G_j = g_j + f_j G_{j+1}, D_j = (g_j . o_j) + f_j D_{j+1}, f_j = e^{L_j - L_{j+1}}
    // (0 where L_j = -inf). Chunked: (1) each chunk's value at its start from a zero carry,
    // (2) carries across chunks from the end, (3) rescan each chunk from its carry.
    const int64_t stride = dv + 1;
    auto factor = [&](int64_t r) {  // f for row r (position t < N - 1)
      return Lp[r] == kNegInf ? 0.f : std::exp(Lp[r] - Lp[r + 1]);
    };
    auto step = [&](float* a, int64_t r, float f) {  // (G, D) <- (g_r, g_r . o_r) + f (G, D)
      float delta = 0.f;
      for (int64_t k = 0; k < dv; ++k) {
        delta += gp[r * dv + k] * op_[r * dv + k];
        a[k] = gp[r * dv + k] + f * a[k];
      }
      a[dv] = delta + f * a[dv];
    };
    std::vector<float> carry(static_cast<size_t>(d.BH * nc * stride));  // per chunk: G[dv], D
    parallel_for(d.BH * nc, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t task = b0; task < b1; ++task) {
        const int64_t bh = task / nc, c = task % nc;
        float* a = carry.data() + task * stride;
        std::fill(a, a + stride, 0.f);
        const int64_t lo = c * kChunk, hi = std::min(N, (c + 1) * kChunk);
        for (int64_t t = hi - 1; t >= lo; --t) {
          const int64_t r = bh * N + t;
          step(a, r, t + 1 < hi ? factor(r) : 0.f);
        }
      }
    });
    // carry[c] becomes the full G, D at the start of chunk c + 1 (zero for the last chunk).
    parallel_for(d.BH, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> next(static_cast<size_t>(stride)), local(static_cast<size_t>(stride));
      for (int64_t bh = b0; bh < b1; ++bh) {
        std::fill(next.begin(), next.end(), 0.f);  // full value at the start of chunk c + 1
        for (int64_t c = nc - 1; c >= 0; --c) {
          float* a = carry.data() + (bh * nc + c) * stride;
          std::copy(a, a + stride, local.begin());
          std::copy(next.begin(), next.end(), a);
          // full at the start of chunk c = local + e^{L_start - L_next_start} next
          const int64_t start = c * kChunk, nstart = (c + 1) * kChunk;
          float f = 0.f;
          if (nstart < N && Lp[bh * N + start] != kNegInf) f = std::exp(Lp[bh * N + start] - Lp[bh * N + nstart]);
          for (int64_t k = 0; k < stride; ++k) next[k] = local[k] + f * next[k];
        }
      }
    });
    Tensor ds = Tensor::empty(sv.shape()), dvt = Tensor::empty(vv.shape());
    float* dsp = ds.data();
    float* dvp = dvt.data();
    parallel_for(d.BH * nc, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> a(static_cast<size_t>(stride));
      for (int64_t task = b0; task < b1; ++task) {
        const int64_t bh = task / nc, c = task % nc;
        const float* in = carry.data() + task * stride;
        std::copy(in, in + stride, a.begin());
        const int64_t lo = c * kChunk, hi = std::min(N, (c + 1) * kChunk);
        for (int64_t t = hi - 1; t >= lo; --t) {
          const int64_t r = bh * N + t;
          step(a.data(), r, t + 1 < N ? factor(r) : 0.f);
          const float p = kept(keep, bh / H, N, t) && Lp[r] != kNegInf ? std::exp(sp[r] - Lp[r]) : 0.f;  // weight of key t in o_t
          float dot = 0.f;
          for (int64_t k = 0; k < dv; ++k) {
            dvp[r * dv + k] = p * a[k];
            dot += vp[r * dv + k] * a[k];
          }
          dsp[r] = p * (dot - a[dv]);
        }
      }
    });
    gs.accumulate(ds);
    gv.accumulate(dvt);
  });
}

// ---- causal linear attention without the normaliser ----
namespace {

// S[m, dv] += x[m] y[dv]^T: the running state of the forward scan and of both backward scans.
inline void add_outer(float* S, const float* x, const float* y, int64_t m, int64_t dv) {
  for (int64_t a = 0; a < m; ++a) vec::axpy(S + a * dv, y, x[a], dv);
}

// The causal scan of the forward and of the first backward pass: for i = 0..N-1 of row bh of
// [B H, N, *], S = S_i = sum_{j<=i, kept} k_j v_j^T [m, dv], then at(r = bh N + i, S_i).
template <class At>
void scan_kv_state(std::vector<float>& S, const float* kp, const float* vp, const std::vector<float>& keep, int64_t bh,
                   int64_t H, int64_t N, int64_t m, int64_t dv, At at) {
  std::fill(S.begin(), S.end(), 0.f);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = bh * N + i;
    if (kept(keep, bh / H, N, i)) add_outer(S.data(), kp + r * m, vp + r * dv, m, dv);
    at(r, static_cast<const float*>(S.data()));
  }
}

}  // namespace

Var causal_linear_numerator(const Var& q, const Var& k, const Var& v, const Tensor* key_mask) {
  const char* op = "causal_linear_numerator";
  require(q.rank() == 4 && k.shape() == q.shape() && v.rank() == 4 && v.dim(0) == q.dim(0) && v.dim(1) == q.dim(1) &&
              v.dim(2) == q.dim(2),
          op, fmt::format("q {}, k {} must be [B, H, N, m] and v {} [B, H, N, dv]", shape_str(q.shape()),
                          shape_str(k.shape()), shape_str(v.shape())));
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), m = q.dim(3), dv = v.dim(3), BH = B * H;
  const std::vector<float> keep = kernels::key_keep_flags(key_mask, B, N, op);
  Tensor out = Tensor::empty({B, H, N, dv});
  {
    const float* qp = q.value().data();
    const float* kp = k.value().data();
    const float* vp = v.value().data();
    float* op_ = out.data();
    parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> S(static_cast<size_t>(m * dv));  // S_i = sum_{j<=i} k_j v_j^T [m, dv]
      for (int64_t bh = b0; bh < b1; ++bh)
        scan_kv_state(S, kp, vp, keep, bh, H, N, m, dv, [&](int64_t r, const float* Si) {
          // o_i = S_i^T q_i
          const float* qi = qp + r * m;
          float* o = op_ + r * dv;
          std::fill(o, o + dv, 0.f);
          for (int64_t a = 0; a < m; ++a) vec::axpy(o, Si + a * dv, qi[a], dv);
        });
    });
  }
  const GradSink gq = q.sink(), gk = k.sink(), gv = v.sink();
  const Tensor qv = q.value(), kv = k.value(), vv = v.value();
  return make_op_result(std::move(out), {q, k, v}, [gq, gk, gv, qv, kv, vv, keep, H, N, m, dv, BH](const Tensor& g) {
    Tensor dq = Tensor::empty(qv.shape()), dk = Tensor::empty(kv.shape()), dvt = Tensor::empty(vv.shape());
    const float* qp = qv.data();
    const float* kp = kv.data();
    const float* vp = vv.data();
    const float* gp = g.data();
    float* dqp = dq.data();
    float* dkp = dk.data();
    float* dvp = dvt.data();
    parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> S(static_cast<size_t>(m * dv));
      for (int64_t bh = b0; bh < b1; ++bh) {
        // Forward in i: dq_i = S_i g_i.
        scan_kv_state(S, kp, vp, keep, bh, H, N, m, dv, [&](int64_t r, const float* Si) {
          const float* gi = gp + r * dv;
          float* dqi = dqp + r * m;
          for (int64_t a = 0; a < m; ++a) {
            const float* s = Si + a * dv;
            float t = 0.f;
            for (int64_t c = 0; c < dv; ++c) t += s[c] * gi[c];
            dqi[a] = t;
          }
        });
        // Backward in j: R_j = sum_{i>=j} q_i g_i^T; dk_j = R_j v_j, dv_j = R_j^T k_j.
        std::fill(S.begin(), S.end(), 0.f);
        for (int64_t j = N - 1; j >= 0; --j) {
          const int64_t r = bh * N + j;
          add_outer(S.data(), qp + r * m, gp + r * dv, m, dv);
          float* dkj = dkp + r * m;
          float* dvj = dvp + r * dv;
          std::fill(dvj, dvj + dv, 0.f);
          if (!kept(keep, bh / H, N, j)) {
            std::fill(dkj, dkj + m, 0.f);
            continue;
          }
          const float* kj = kp + r * m;
          const float* vj = vp + r * dv;
          for (int64_t a = 0; a < m; ++a) {
            const float* s = S.data() + a * dv;
            float t = 0.f;
            for (int64_t c = 0; c < dv; ++c) {
              t += s[c] * vj[c];
              dvj[c] += kj[a] * s[c];
            }
            dkj[a] = t;
          }
        }
      }
    });
    gq.accumulate(dq);
    gk.accumulate(dk);
    gv.accumulate(dvt);
  });
}

}  // namespace ab
