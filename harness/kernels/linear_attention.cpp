// Fused ops for the low-rank and kernelised mixers: linear attention (bidirectional by batched
// GEMMs, causal by a sequential scan), Performer's random-feature maps, and a per-head depthwise
// convolution along the sequence. oneDNN GEMMs run outside TBB regions only.
#include "attnbench/kernels/linear_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "core/backend/onednn.hpp"

namespace ab {

using kernels::parallel_for;

namespace {

void require(bool ok, const std::string& op, const std::string& what) {
  if (!ok) throw std::invalid_argument(fmt::format("{}: {}", op, what));
}


// dphi/dx from x and phi(x) (unmasked): elu + 1 has derivative min(phi, 1) = exp(x) for x <= 0.
inline float feature_grad(FeatureMap f, float x, float phi) {
  switch (f) {
    case FeatureMap::elu_plus_one: return x > 0.f ? 1.f : phi;
    case FeatureMap::relu_plus_eps: return x > 0.f ? 1.f : 0.f;
    default: return 1.f;
  }
}

// phi(x) for x viewed as [BH, N, m], rows multiplied by keep[(bh / H) * N + n] when keep is given
// (so padded keys have zero features). The elu runs in oneDNN (vectorised exp), outside TBB.
Tensor map_features(const Tensor& x, FeatureMap f, float eps, const std::vector<float>& keep, int64_t H) {
  const int64_t m = x.dim(-1), rows = x.numel() / m, N = x.dim(-2);
  Tensor y = Tensor::empty(x.shape());
  const float* xp = x.data();
  float* yp = y.data();
  if (f == FeatureMap::elu_plus_one) kernels::eltwise_forward(kernels::Eltwise::elu, 1.f, xp, yp, y.numel());
  parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / m), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const float kp = keep.empty() ? 1.f : keep[(r / N / H) * N + r % N];
      float* yr = yp + r * m;
      const float* xr = xp + r * m;
      switch (f) {
        case FeatureMap::elu_plus_one:
          for (int64_t a = 0; a < m; ++a) yr[a] = kp * (yr[a] + 1.f);
          break;
        case FeatureMap::relu_plus_eps:
          for (int64_t a = 0; a < m; ++a) yr[a] = kp * ((xr[a] > 0.f ? xr[a] : 0.f) + eps);
          break;
        default:
          for (int64_t a = 0; a < m; ++a) yr[a] = kp * xr[a];
      }
    }
  });
  return y;
}

struct Dims {
  int64_t B, H, N, m, dv;
};

Dims check_shapes(const Var& q, const Var& k, const Var& v) {
  const char* op = "linear_attention";
  require(q.rank() == 4 && k.rank() == 4 && v.rank() == 4, op, "q, k, v must be [B, H, N, *]");
  require(q.shape() == k.shape(), op, fmt::format("q {} and k {} differ", shape_str(q.shape()), shape_str(k.shape())));
  require(v.dim(0) == q.dim(0) && v.dim(1) == q.dim(1) && v.dim(2) == q.dim(2), op,
          fmt::format("v {} does not fit q {}", shape_str(v.shape()), shape_str(q.shape())));
  return {q.dim(0), q.dim(1), q.dim(2), q.dim(3), v.dim(3)};
}

// ---- bidirectional ----
Var linear_attention_bidirectional(const Var& q, const Var& k, const Var& v, const LinearAttentionOptions& opt) {
  const Dims dims = check_shapes(q, k, v);
  const int64_t B = dims.B, H = dims.H, N = dims.N, m = dims.m, dv = dims.dv, BH = B * H;
  const std::vector<float> keep = kernels::key_keep_flags(opt.key_mask, B, N, "linear_attention");
  const FeatureMap f = opt.feature;
  const float feps = opt.feature_eps, eps = opt.eps;
  const bool map_q = f != FeatureMap::identity, map_k = map_q || !keep.empty();
  // Features (temporaries unless the inputs are already features): fq, fk [BH, N, m]
  const Tensor fq = map_q ? map_features(q.value(), f, feps, {}, H) : q.value();
  const Tensor fk = map_k ? map_features(k.value(), f, feps, keep, H) : k.value();
  // S = fk^T v [BH, m, dv], z = sum_n fk [BH, m]
  Tensor S = Tensor::empty({B, H, m, dv}), z = Tensor::empty({B, H, m});
  kernels::matmul(fk.data(), v.value().data(), S.data(), BH, BH, m, dv, N, true, false);
  {
    const float* fkp = fk.data();
    float* zp = z.data();
    parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh) {
        float* zz = zp + bh * m;
        std::fill(zz, zz + m, 0.f);
        for (int64_t n = 0; n < N; ++n) {
          const float* row = fkp + (bh * N + n) * m;
          for (int64_t a = 0; a < m; ++a) zz[a] += row[a];
        }
      }
    });
  }
  // out = (fq S) / (fq . z + eps)  [BH, N, dv]
  Tensor out = Tensor::empty({B, H, N, dv});
  kernels::matmul(fq.data(), S.data(), out.data(), BH, BH, N, dv, m, false, false);
  {
    const float* fqp = fq.data();
    const float* zp = z.data();
    float* op = out.data();
    parallel_for(BH * N, std::max<int64_t>(1, kernels::kGrain / (m + dv)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* row = fqp + r * m;
        const float* zz = zp + (r / N) * m;
        float den = eps;
#pragma omp simd reduction(+ : den)
        for (int64_t a = 0; a < m; ++a) den += row[a] * zz[a];
        const float inv = den != 0.f ? 1.f / den : 0.f;
        for (int64_t c = 0; c < dv; ++c) op[r * dv + c] *= inv;
      }
    });
  }
  const GradSink gq = q.sink(), gk = k.sink(), gv = v.sink();
  const Tensor qv = q.value(), kv = k.value(), vv = v.value();
  const Tensor mask_t = opt.key_mask ? *opt.key_mask : Tensor();
  // Captures the inputs, the [m, dv] state and the mask; the features are recomputed.
  return make_op_result(std::move(out), {q, k, v}, [gq, gk, gv, qv, kv, vv, S, z, mask_t, B, H, N, m, dv, BH, f,
                                                     feps, eps, map_q, map_k](const Tensor& g) {
    const std::vector<float> keep = kernels::key_keep_flags(mask_t.defined() ? &mask_t : nullptr, B, N, "linear_attention");
    const Tensor fq = map_q ? map_features(qv, f, feps, {}, H) : qv;
    const Tensor fk = map_k ? map_features(kv, f, feps, keep, H) : kv;
    // G = g / den [BH, N, dv]; T = G S^T [BH, N, m]; c_i = (T_i . fq_i) / den_i = G_i . out_i
    Tensor G = Tensor::empty(g.shape()), inv_den = Tensor::empty({BH * N});
    {
      const float* fqp = fq.data();
      const float* zp = z.data();
      const float* gp = g.data();
      float* Gp = G.data();
      float* ip = inv_den.data();
      parallel_for(BH * N, std::max<int64_t>(1, kernels::kGrain / (m + dv)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* row = fqp + r * m;
          const float* zz = zp + (r / N) * m;
          float den = eps;
#pragma omp simd reduction(+ : den)
          for (int64_t a = 0; a < m; ++a) den += row[a] * zz[a];
          const float inv = den != 0.f ? 1.f / den : 0.f;
          ip[r] = inv;
          for (int64_t c = 0; c < dv; ++c) Gp[r * dv + c] = gp[r * dv + c] * inv;
        }
      });
    }
    Tensor T = Tensor::empty({B, H, N, m});
    kernels::matmul(G.data(), S.data(), T.data(), BH, BH, N, m, dv, false, true);
    // dfq_i = T_i - c_i z; c kept for dz = -sum_i c_i fq_i
    Tensor c = Tensor::empty({BH * N});
    {
      const float* fqp = fq.data();
      const float* zp = z.data();
      const float* ip = inv_den.data();
      float* Tp = T.data();
      float* cp = c.data();
      const float* qp = qv.data();
      parallel_for(BH * N, std::max<int64_t>(1, kernels::kGrain / m), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* row = fqp + r * m;
          const float* zz = zp + (r / N) * m;
          float* t = Tp + r * m;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t a = 0; a < m; ++a) s += t[a] * row[a];
          const float ci = s * ip[r];
          cp[r] = ci;
          if (gq.wanted())
            for (int64_t a = 0; a < m; ++a) t[a] = (t[a] - ci * zz[a]) * feature_grad(f, qp[r * m + a], row[a]);
        }
      });
    }
    if (gq.wanted()) gq.accumulate(T.reshape(qv.shape()));
    if (!gk.wanted() && !gv.wanted()) return;
    // dS = fq^T G [BH, m, dv]; dz = -sum_i c_i fq_i [BH, m]
    Tensor dS = Tensor::empty({B, H, m, dv}), dz = Tensor::empty({BH, m});
    kernels::matmul(fq.data(), G.data(), dS.data(), BH, BH, m, dv, N, true, false);
    {
      const float* fqp = fq.data();
      const float* cp = c.data();
      float* dzp = dz.data();
      parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t bh = b0; bh < b1; ++bh) {
          float* d = dzp + bh * m;
          std::fill(d, d + m, 0.f);
          for (int64_t n = 0; n < N; ++n) {
            const float ci = cp[bh * N + n];
            const float* row = fqp + (bh * N + n) * m;
            for (int64_t a = 0; a < m; ++a) d[a] -= ci * row[a];
          }
        }
      });
    }
    if (gv.wanted()) {  // dv = fk dS [BH, N, dv] (padded rows of fk are 0)
      Tensor dvt = Tensor::empty(vv.shape());
      kernels::matmul(fk.data(), dS.data(), dvt.data(), BH, BH, N, dv, m, false, false);
      gv.accumulate(dvt);
    }
    if (gk.wanted()) {  // dfk_j = dS v_j + dz, then through phi and the mask
      Tensor dk = Tensor::empty(kv.shape());
      kernels::matmul(vv.data(), dS.data(), dk.data(), BH, BH, N, m, dv, false, true);
      const float* dzp = dz.data();
      const float* kp = kv.data();
      const float* fkp = fk.data();
      float* dkp = dk.data();
      parallel_for(BH * N, std::max<int64_t>(1, kernels::kGrain / m), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t bh = r / N, n = r % N;
          const float kp_ = keep.empty() ? 1.f : keep[(bh / H) * N + n];
          const float* d = dzp + bh * m;
          for (int64_t a = 0; a < m; ++a)
            dkp[r * m + a] = kp_ * (dkp[r * m + a] + d[a]) * feature_grad(f, kp[r * m + a], fkp[r * m + a]);
        }
      });
      gk.accumulate(dk);
    }
  });
}

// ---- causal: sequential scan per (batch, head) ----
Var linear_attention_causal(const Var& q, const Var& k, const Var& v, const LinearAttentionOptions& opt) {
  const Dims dims = check_shapes(q, k, v);
  const int64_t B = dims.B, H = dims.H, N = dims.N, m = dims.m, dv = dims.dv, BH = B * H;
  const std::vector<float> keep = kernels::key_keep_flags(opt.key_mask, B, N, "linear_attention");
  const FeatureMap f = opt.feature;
  const float feps = opt.feature_eps, eps = opt.eps;
  const bool map_q = f != FeatureMap::identity, map_k = map_q || !keep.empty();
  Tensor out = Tensor::empty({B, H, N, dv});
  {
    // Features (temporaries unless the inputs are already features): fq, fk [BH, N, m]
    const Tensor fqt = map_q ? map_features(q.value(), f, feps, {}, H) : q.value();
    const Tensor fkt = map_k ? map_features(k.value(), f, feps, keep, H) : k.value();
    const float* fqp = fqt.data();
    const float* fkp = fkt.data();
    const float* vp = v.value().data();
    float* op = out.data();
    parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      // Running state S [m, dv], z [m].
      std::vector<float> S(static_cast<size_t>(m * dv)), z(m);
      for (int64_t bh = b0; bh < b1; ++bh) {
        std::fill(S.begin(), S.end(), 0.f);
        std::fill(z.begin(), z.end(), 0.f);
        for (int64_t i = 0; i < N; ++i) {
          const int64_t r = bh * N + i;
          const float* vi = vp + r * dv;
          if (keep.empty() || keep[(bh / H) * N + i] != 0.f) {  // S += fk_i v_i^T, z += fk_i
            const float* fk = fkp + r * m;
            for (int64_t a = 0; a < m; ++a) {
              float* s = S.data() + a * dv;
              const float w = fk[a];
              for (int64_t c = 0; c < dv; ++c) s[c] += w * vi[c];
              z[a] += w;
            }
          }
          const float* fq = fqp + r * m;
          float* o = op + r * dv;
          std::fill(o, o + dv, 0.f);
          float den = eps;
          for (int64_t a = 0; a < m; ++a) {
            const float w = fq[a];
            const float* s = S.data() + a * dv;
            for (int64_t c = 0; c < dv; ++c) o[c] += w * s[c];
            den += w * z[a];
          }
          const float inv = den != 0.f ? 1.f / den : 0.f;
          for (int64_t c = 0; c < dv; ++c) o[c] *= inv;
        }
      }
    });
  }
  const GradSink gq = q.sink(), gk = k.sink(), gv = v.sink();
  const Tensor qv = q.value(), kv = k.value(), vv = v.value();
  // Captures the inputs and the keep flags only; the features and states are recomputed.
  return make_op_result(std::move(out), {q, k, v}, [gq, gk, gv, qv, kv, vv, keep, B, H, N, m, dv, BH, f, feps, eps,
                                                     map_q, map_k](const Tensor& g) {
    const Tensor fqt = map_q ? map_features(qv, f, feps, {}, H) : qv;
    const Tensor fkt = map_k ? map_features(kv, f, feps, keep, H) : kv;
    Tensor dq = Tensor::empty(qv.shape()), dk = Tensor::empty(kv.shape()), dvt = Tensor::empty(vv.shape());
    Tensor inv_den = Tensor::empty({BH * N}), cbuf = Tensor::empty({BH * N});
    const float* qp = qv.data();
    const float* kp = kv.data();
    const float* fqp = fqt.data();
    const float* fkp = fkt.data();
    const float* vp = vv.data();
    const float* gp = g.data();
    float* dqp = dq.data();
    float* dkp = dk.data();
    float* dvp = dvt.data();
    float* ip = inv_den.data();
    float* cp = cbuf.data();
    parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> S(static_cast<size_t>(m * dv)), z(m), G(dv);
      for (int64_t bh = b0; bh < b1; ++bh) {
        // Pass 1, forward in i: recompute S_i, z_i; G_i = g_i / den_i; c_i = G_i . out_i;
        // dfq_i = S_i G_i - c_i z_i.
        std::fill(S.begin(), S.end(), 0.f);
        std::fill(z.begin(), z.end(), 0.f);
        for (int64_t i = 0; i < N; ++i) {
          const int64_t r = bh * N + i;
          const float* vi = vp + r * dv;
          if (keep.empty() || keep[(bh / H) * N + i] != 0.f) {
            const float* fk = fkp + r * m;
            for (int64_t a = 0; a < m; ++a) {
              float* s = S.data() + a * dv;
              const float w = fk[a];
              for (int64_t c = 0; c < dv; ++c) s[c] += w * vi[c];
              z[a] += w;
            }
          }
          const float* fq = fqp + r * m;
          float den = eps;
#pragma omp simd reduction(+ : den)
          for (int64_t a = 0; a < m; ++a) den += fq[a] * z[a];
          const float inv = den != 0.f ? 1.f / den : 0.f;
          ip[r] = inv;
          const float* gi = gp + r * dv;
          for (int64_t c = 0; c < dv; ++c) G[c] = gi[c] * inv;
          // c_i = G_i . (S_i^T fq_i) / den_i; the row products S_a . G_i serve dfq as well.
          float* dqi = dqp + r * m;
          float cnum = 0.f;
          for (int64_t a = 0; a < m; ++a) {
            const float* s = S.data() + a * dv;
            float t = 0.f;
#pragma omp simd reduction(+ : t)
            for (int64_t c = 0; c < dv; ++c) t += s[c] * G[c];
            dqi[a] = t;
            cnum += fq[a] * t;
          }
          const float ci = cnum * inv;
          cp[r] = ci;
          const float* qi = qp + r * m;
          for (int64_t a = 0; a < m; ++a) dqi[a] = (dqi[a] - ci * z[a]) * feature_grad(f, qi[a], fq[a]);
        }
        // Pass 2, backward in i: R_j = sum_{i >= j} fq_i G_i^T, rr_j = -sum_{i >= j} c_i fq_i;
        // dfk_j = R_j v_j + rr_j, dv_j = R_j^T fk_j. (S and z are reused as R and rr.)
        std::fill(S.begin(), S.end(), 0.f);
        std::fill(z.begin(), z.end(), 0.f);
        for (int64_t i = N - 1; i >= 0; --i) {
          const int64_t r = bh * N + i;
          const float inv = ip[r], ci = cp[r];
          const float* gi = gp + r * dv;
          for (int64_t c = 0; c < dv; ++c) G[c] = gi[c] * inv;
          const float* fq = fqp + r * m;
          for (int64_t a = 0; a < m; ++a) {
            const float w = fq[a];
            float* s = S.data() + a * dv;
            for (int64_t c = 0; c < dv; ++c) s[c] += w * G[c];
            z[a] -= ci * w;
          }
          const float* vi = vp + r * dv;
          float* dki = dkp + r * m;
          float* dvi = dvp + r * dv;
          std::fill(dvi, dvi + dv, 0.f);
          if (!keep.empty() && keep[(bh / H) * N + i] == 0.f) {
            std::fill(dki, dki + m, 0.f);
            continue;
          }
          const float* fk = fkp + r * m;
          const float* ki = kp + r * m;
          for (int64_t a = 0; a < m; ++a) {
            const float* s = S.data() + a * dv;
            const float fka = fk[a];
            float t = z[a];
#pragma omp simd reduction(+ : t)
            for (int64_t c = 0; c < dv; ++c) {
              t += s[c] * vi[c];
              dvi[c] += fka * s[c];
            }
            dki[a] = t * feature_grad(f, ki[a], fka);
          }
        }
      }
    });
    gq.accumulate(dq);
    gk.accumulate(dk);
    gv.accumulate(dvt);
  });
}

}  // namespace

Var linear_attention(const Var& q, const Var& k, const Var& v, const LinearAttentionOptions& opt) {
  return opt.causal ? linear_attention_causal(q, k, v, opt) : linear_attention_bidirectional(q, k, v, opt);
}

// ---- Performer feature maps ----
Var favor_features(const Var& x, const Tensor& w, const FavorOptions& opt) {
  const char* op = "favor_features";
  require(x.rank() == 4, op, fmt::format("x {} must be [B, H, N, d]", shape_str(x.shape())));
  require(w.rank() == 2 && w.dim(1) == x.dim(3), op,
          fmt::format("projections {} do not fit x {}", shape_str(w.shape()), shape_str(x.shape())));
  const int64_t B = x.dim(0), H = x.dim(1), N = x.dim(2), d = x.dim(3), m = w.dim(0);
  const int64_t BH = B * H, rows = BH * N;
  const bool hyp = opt.kernel == FavorKernel::softmax_hyperbolic;
  const bool relu = opt.kernel == FavorKernel::relu;
  const int64_t mo = hyp ? 2 * m : m;
  const float s4 = std::pow(static_cast<float>(d), -0.25f);
  const float ratio = 1.f / std::sqrt(static_cast<float>(mo));
  const float stab = opt.stabilizer, reps = opt.relu_eps;
  const std::vector<float> keep = opt.is_query ? std::vector<float>() : kernels::key_keep_flags(opt.key_mask, B, N, op);
  // u = x^ w^T [rows, m]
  Tensor u = Tensor::empty({rows, m});
  kernels::matmul(x.value().data(), w.data(), u.data(), 1, 1, rows, m, d, false, true);
  Tensor y = Tensor::empty({B, H, N, mo});
  {
    const float* xp = x.value().data();
    float* up = u.data();
    float* yp = y.data();
    if (relu) {
      parallel_for(rows * m, kernels::kGrain, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) {
          const float t = up[i] * s4;
          yp[i] = (t > 0.f ? t : 0.f) + reps;
        }
      });
    } else {
      // Exponent e = +-u^ - |x^|^2 / 2 per row; u is overwritten by u^ = u d^-1/4.
      Tensor half_norm = Tensor::empty({rows});
      float* hn = half_norm.data();
      parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / m), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          float s = 0.f;
          for (int64_t c = 0; c < d; ++c) s += xp[r * d + c] * xp[r * d + c];
          hn[r] = 0.5f * s * s4 * s4;
          for (int64_t a = 0; a < m; ++a) up[r * m + a] *= s4;
        }
      });
      auto row_max = [&](int64_t r) {
        float mx = -INFINITY;
        for (int64_t a = 0; a < m; ++a) mx = std::max(mx, hyp ? std::fabs(up[r * m + a]) : up[r * m + a]);
        return mx - hn[r];
      };
      // Stabiliser c per row (queries) or per (b, h) over unpadded keys.
      std::vector<float> cmax(static_cast<size_t>(opt.is_query ? rows : BH));
      if (opt.is_query) {
        parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) cmax[r] = row_max(r);
        });
      } else {
        parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
          for (int64_t bh = b0; bh < b1; ++bh) {
            float mx = -INFINITY;
            for (int64_t n = 0; n < N; ++n)
              if (keep.empty() || keep[(bh / H) * N + n] != 0.f) mx = std::max(mx, row_max(bh * N + n));
            cmax[bh] = std::isfinite(mx) ? mx : 0.f;
          }
        });
      }
      const bool per_row = opt.is_query;
      const int64_t grain = std::max<int64_t>(1, kernels::kGrain / mo);
      // y = exponent (clamped at 0: the maximum is 0 up to rounding), then exp in oneDNN
      // (vectorised, outside TBB), then y = ratio (exp + stabilizer).
      parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float base = -hn[r] - (per_row ? cmax[r] : cmax[r / N]);
          float* yr = yp + r * mo;
          const float* ur = up + r * m;
          for (int64_t a = 0; a < m; ++a) yr[a] = std::min(ur[a] + base, 0.f);
          if (hyp)
            for (int64_t a = 0; a < m; ++a) yr[m + a] = std::min(-ur[a] + base, 0.f);
        }
      });
      kernels::eltwise_forward(kernels::Eltwise::exp, 0.f, yp, yp, y.numel());
      parallel_for(rows * mo, kernels::kGrain, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) yp[i] = ratio * (yp[i] + stab);
      });
    }
  }
  const Tensor xv = x.value(), yv = y, wv = w;
  return make_op_result(std::move(y), {x}, [gx = x.sink(), xv, yv, wv, rows, m, mo, d, s4, ratio, stab, reps, hyp,
                                            relu](const Tensor& g) {
    // t = dphi * dphi/du^ per projection [rows, m]; tsum_r = sum of the exponential parts' t.
    Tensor t = Tensor::empty({rows, m}), tsum = Tensor::empty({rows});
    const float* gp = g.data();
    const float* yp = yv.data();
    float* tp = t.data();
    float* ts = tsum.data();
    const float off = ratio * stab;
    parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / mo), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* gr = gp + r * mo;
        const float* yr = yp + r * mo;
        float s = 0.f;
        for (int64_t a = 0; a < m; ++a) {
          if (relu) {
            tp[r * m + a] = yr[a] > reps ? gr[a] : 0.f;  // phi = max(u^, 0) + relu_eps
          } else if (hyp) {
            const float ep = gr[a] * (yr[a] - off), em = gr[m + a] * (yr[m + a] - off);
            tp[r * m + a] = ep - em;
            s += ep + em;
          } else {
            const float e = gr[a] * (yr[a] - off);
            tp[r * m + a] = e;
            s += e;
          }
        }
        ts[r] = s;
      }
    });
    // dx = d^-1/4 (t w) - d^-1/2 x sum(t)   [rows, d]
    Tensor dx = Tensor::empty(xv.shape());
    kernels::matmul(tp, wv.data(), dx.data(), 1, 1, rows, d, m, false, false);
    const float* xp = xv.data();
    float* dp = dx.data();
    parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / d), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < d; ++c) dp[r * d + c] = s4 * dp[r * d + c] - (relu ? 0.f : s4 * s4 * xp[r * d + c] * ts[r]);
    });
    gx.accumulate(dx);
  });
}

// ---- depthwise convolution along the sequence ----
Var sequence_depthwise_conv(const Var& v, const Var& w) {
  const char* op = "sequence_depthwise_conv";
  require(v.rank() == 4, op, fmt::format("v {} must be [B, H, N, d]", shape_str(v.shape())));
  require(w.rank() == 2 && w.dim(0) == v.dim(1), op,
          fmt::format("weights {} must be [H = {}, K]", shape_str(w.shape()), v.dim(1)));
  const int64_t B = v.dim(0), H = v.dim(1), N = v.dim(2), d = v.dim(3), K = w.dim(1), half = K / 2;
  Tensor y = Tensor::empty(v.shape());
  {
    const float* vp = v.value().data();
    const float* wp = w.value().data();
    float* yp = y.data();
    parallel_for(B * H * N, std::max<int64_t>(1, kernels::kGrain / (d * K)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t bh = r / N, n = r % N, h = bh % H;
        float* yr = yp + r * d;
        std::fill(yr, yr + d, 0.f);
        for (int64_t t = std::max<int64_t>(0, half - n); t < std::min(K, N - n + half); ++t) {
          const float wt = wp[h * K + t];
          const float* src = vp + (bh * N + n + t - half) * d;
          for (int64_t c = 0; c < d; ++c) yr[c] += wt * src[c];
        }
      }
    });
  }
  const GradSink gv = v.sink(), gw = w.sink();
  const Tensor vv = gw.wanted() ? v.value() : Tensor(), wv = w.value();
  return make_op_result(std::move(y), {v, w}, [gv, gw, vv, wv, B, H, N, d, K, half](const Tensor& g) {
    const float* gp = g.data();
    const float* wp = wv.data();
    if (gv.wanted()) {  // dv[n] = sum_t w[t] g[n - t + half]
      Tensor dv = Tensor::empty({B, H, N, d});
      float* dp = dv.data();
      parallel_for(B * H * N, std::max<int64_t>(1, kernels::kGrain / (d * K)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t bh = r / N, n = r % N, h = bh % H;
          float* dr = dp + r * d;
          std::fill(dr, dr + d, 0.f);
          // output position p = n - t + half in [0, N)
          for (int64_t t = std::max<int64_t>(0, n + half - (N - 1)); t < std::min(K, n + half + 1); ++t) {
            const float wt = wp[h * K + t];
            const float* src = gp + (bh * N + n - t + half) * d;
            for (int64_t c = 0; c < d; ++c) dr[c] += wt * src[c];
          }
        }
      });
      gv.accumulate(dv);
    }
    if (gw.wanted()) {  // dw[h, t] = sum_{b, n} g[b, h, n] . v[b, h, n + t - half]
      Tensor dw = Tensor::empty({H, K});
      const float* vp = vv.data();
      float* dwp = dw.data();
      parallel_for(H * K, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t h = i / K, t = i % K;
          double s = 0;
          for (int64_t b = 0; b < B; ++b) {
            const int64_t bh = b * H + h;
            for (int64_t n = std::max<int64_t>(0, half - t); n < std::min(N, N - t + half); ++n) {
              const float* gr = gp + (bh * N + n) * d;
              const float* vr = vp + (bh * N + n + t - half) * d;
              float part = 0.f;
              for (int64_t c = 0; c < d; ++c) part += gr[c] * vr[c];
              s += part;
            }
          }
          dwp[i] = static_cast<float>(s);
        }
      });
      gw.accumulate(dw);
    }
  });
}

}  // namespace ab
