// Monarch products along the sequence axis and the Monarch-DFT long convolution of the Monarch Mixer.
#include "attnbench/kernels/monarch.hpp"

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <numbers>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "core/backend/onednn.hpp"

namespace ab {

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("monarch: " + what);
}

}  // namespace

// ---- the Monarch product ----------------------------------------------------------------------

Var monarch(const Var& x, const Var& L, const Var& R) {
  require(x.rank() == 3, fmt::format("x {} must be [B, N, C]", shape_str(x.shape())));
  require(L.rank() == 3 && L.dim(1) == L.dim(2), fmt::format("L {} must be [m1, m2, m2]", shape_str(L.shape())));
  const int64_t m1 = L.dim(0), m2 = L.dim(1);
  require(R.rank() == 3 && R.dim(0) == m2 && R.dim(1) == m1 && R.dim(2) == m1,
          fmt::format("R {} must be [m2 = {}, m1 = {}, m1]", shape_str(R.shape()), m2, m1));
  const int64_t B = x.dim(0), N = x.dim(1), C = x.dim(2);
  require(N == m1 * m2, fmt::format("sequence length {} is not m1 * m2 = {} * {}", N, m1, m2));
  // [B, N, C] -> [m1, m2, B*C]: block i of the sequence, position j inside it, one column per (b, c).
  Var z = reshape(permute(reshape(x, {B, m1, m2, C}), {1, 2, 0, 3}), {m1, m2, B * C});
  z = matmul(L, z);        // blockdiag(L):            [m1, m2, BC]
  z = transpose(z, 0, 1);  // P (reshape-transpose):    [m2, m1, BC]
  z = matmul(R, z);        // blockdiag(R):            [m2, m1, BC], row j*m1 + i of P^T y
  // P^T and back to the activation layout: [m2, m1, B, C] -> [B, m1, m2, C] -> [B, N, C]
  return reshape(permute(reshape(z, {m2, m1, B, C}), {2, 1, 0, 3}), {B, N, C});
}

Tensor monarch_dense(const Tensor& L, const Tensor& R) {
  require(L.rank() == 3 && R.rank() == 3, "monarch_dense takes L [m1, m2, m2] and R [m2, m1, m1]");
  const int64_t m1 = L.dim(0), m2 = L.dim(1), N = m1 * m2;
  Tensor M = Tensor::zeros({N, N});
  // M[i*m2 + j, i'*m2 + j'] = R[j][i][i'] L[i'][j][j']
  for (int64_t i = 0; i < m1; ++i)
    for (int64_t j = 0; j < m2; ++j)
      for (int64_t i2 = 0; i2 < m1; ++i2)
        for (int64_t j2 = 0; j2 < m2; ++j2)
          M[(i * m2 + j) * N + i2 * m2 + j2] = R[(j * m1 + i) * m1 + i2] * L[(i2 * m2 + j) * m2 + j2];
  return M;
}

std::pair<int64_t, int64_t> monarch_factors(int64_t n) {
  require(n >= 1, "transform length must be positive");
  int64_t m1 = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  while (m1 * m1 < n) ++m1;
  while (m1 > 1 && (m1 - 1) * (m1 - 1) >= n) --m1;
  const int64_t m2 = (n + m1 - 1) / m1;
  return {m1, m2};
}

// ---- the Monarch DFT ----------------------------------------------------------------------------
// Size n = m1 * m2, time index t = t1*m2 + t2, frequency index k = k1 + m1*k2, w_n = exp(-2 pi i / n):
//   X[k1 + m1 k2] = sum_{t2} F_m2[t2, k2] w_n^{t2 k1} sum_{t1} F_m1[t1, k1] x[t1 m2 + t2]
// i.e. blockdiag(F_m1) over the strided index, the twiddles (a diagonal folded into the second factor)
// and blockdiag(F_m2): a Monarch product. Every block of a factor is the same DFT matrix, so each
// factor is ONE GEMM over all rows, sequences and blocks at once, with the contracted index innermost:
//   time rows     [R, m2 (t2), m1 (t1)]             x[t1 m2 + t2] at (t2, t1)
//   stage 1       [R*m2, m1] @ [F_m1r | F_m1i]     -> [R, m2 (t2), 2 m1 (re k1 | im k1)]
//   twiddle + transpose                             -> [R, m1 (k1), 2 m2 (re t2 | im t2)]
//   stage 2       [R*m1, 2 m2] @ [[F_m2r, F_m2i], [-F_m2i, F_m2r]]  (complex product as a real block)
//   spectrum      [R, m1 (k1), 2 m2 (re k2 | im k2)]  X[k1 + m1 k2]
// The inverse runs the conjugate factors backwards and keeps the real part, landing in the time-row
// layout again. Spectra stay in this permuted order; pointwise products do not care.
namespace {

struct DftPlan {
  int64_t m1 = 0, m2 = 0, n = 0;
  // Plain vectors, not tracked tensors: plans are cached for the process and are not activations.
  std::vector<float> b1;     // [m1, 2 m1]     [F_m1r | F_m1i]
  std::vector<float> b2;     // [2 m2, 2 m2]   [[F_m2r, F_m2i], [-F_m2i, F_m2r]]
  std::vector<float> b2inv;  // [2 m2, 2 m2]   [[F_m2r, -F_m2i], [F_m2i, F_m2r]]   (conjugate)
  std::vector<float> b1inv;  // [2 m1, m1]     [[F_m1r], [F_m1i]]  (real part of the conjugate product)
  std::vector<float> twr, twi;    // [m2 (t2), m1 (k1)]  w_n^{t2 k1}
  std::vector<float> itwr, itwi;  // [m2 (t2), m1 (k1)]  conj(w_n^{t2 k1}) / n
};

double dft_angle(int64_t a, int64_t b, int64_t m) {
  return -2.0 * std::numbers::pi * static_cast<double>((a * b) % m) / static_cast<double>(m);
}

const DftPlan& dft_plan(int64_t m1, int64_t m2) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<DftPlan>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{m1, m2}];
  if (!slot) {
    auto p = std::make_unique<DftPlan>();
    const int64_t n = m1 * m2;
    p->m1 = m1, p->m2 = m2, p->n = n;
    p->b1.resize(static_cast<size_t>(2 * m1 * m1));
    p->b1inv.resize(static_cast<size_t>(2 * m1 * m1));
    for (int64_t a = 0; a < m1; ++a)
      for (int64_t b = 0; b < m1; ++b) {
        const double ang = dft_angle(a, b, m1);
        const float c = static_cast<float>(std::cos(ang)), s = static_cast<float>(std::sin(ang));
        p->b1[a * 2 * m1 + b] = c, p->b1[a * 2 * m1 + m1 + b] = s;
        p->b1inv[a * m1 + b] = c, p->b1inv[(m1 + a) * m1 + b] = s;
      }
    p->b2.resize(static_cast<size_t>(4 * m2 * m2));
    p->b2inv.resize(static_cast<size_t>(4 * m2 * m2));
    const int64_t w = 2 * m2;
    for (int64_t a = 0; a < m2; ++a)
      for (int64_t b = 0; b < m2; ++b) {
        const double ang = dft_angle(a, b, m2);
        const float c = static_cast<float>(std::cos(ang)), s = static_cast<float>(std::sin(ang));
        p->b2[a * w + b] = c, p->b2[a * w + m2 + b] = s;
        p->b2[(m2 + a) * w + b] = -s, p->b2[(m2 + a) * w + m2 + b] = c;
        p->b2inv[a * w + b] = c, p->b2inv[a * w + m2 + b] = -s;
        p->b2inv[(m2 + a) * w + b] = s, p->b2inv[(m2 + a) * w + m2 + b] = c;
      }
    for (auto* t : {&p->twr, &p->twi, &p->itwr, &p->itwi}) t->resize(static_cast<size_t>(n));
    for (int64_t t2 = 0; t2 < m2; ++t2)
      for (int64_t k1 = 0; k1 < m1; ++k1) {
        const double ang = dft_angle(t2, k1, n);
        p->twr[t2 * m1 + k1] = static_cast<float>(std::cos(ang));
        p->twi[t2 * m1 + k1] = static_cast<float>(std::sin(ang));
        p->itwr[t2 * m1 + k1] = static_cast<float>(std::cos(ang) / static_cast<double>(n));
        p->itwi[t2 * m1 + k1] = static_cast<float>(-std::sin(ang) / static_cast<double>(n));
      }
    slot = std::move(p);
  }
  return *slot;
}

// Twiddle and transpose the (t2, k1) grid of every row:
//   in  [R, m2 (t2), 2 m1]  -> out [R, m1 (k1), 2 m2]   (to_freq: stage 1 -> stage 2)
//   in  [R, m1 (k1), 2 m2]  -> out [R, m2 (t2), 2 m1]   (!to_freq: inverse stage A -> stage B)
// with out = in * tw[t2, k1] (complex), re and im halves side by side in each row.
void twiddle_transpose(const DftPlan& p, const float* in, float* out, int64_t rows, bool to_freq) {
  const int64_t m1 = p.m1, m2 = p.m2, n = p.n;
  const float* tr = to_freq ? p.twr.data() : p.itwr.data();
  const float* ti = to_freq ? p.twi.data() : p.itwi.data();
  kernels::parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / (2 * n)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = in + r * 2 * n;
      float* y = out + r * 2 * n;
      for (int64_t t2 = 0; t2 < m2; ++t2)
        for (int64_t k1 = 0; k1 < m1; ++k1) {
          // element (t2, k1): re/im positions in the two layouts
          const int64_t tk_re = t2 * 2 * m1 + k1, tk_im = tk_re + m1;  // [m2, 2 m1]
          const int64_t kt_re = k1 * 2 * m2 + t2, kt_im = kt_re + m2;  // [m1, 2 m2]
          const float a = x[to_freq ? tk_re : kt_re], b = x[to_freq ? tk_im : kt_im];
          const float c = tr[t2 * m1 + k1], d = ti[t2 * m1 + k1];
          y[to_freq ? kt_re : tk_re] = a * c - b * d;
          y[to_freq ? kt_im : tk_im] = a * d + b * c;
        }
    }
  });
}

// Real time rows x [R, m2, m1] -> spectrum [R, m1, 2 m2].
Tensor dft_forward(const DftPlan& p, const Tensor& x, int64_t rows) {
  const int64_t m1 = p.m1, m2 = p.m2;
  Tensor y = Tensor::empty({rows, m2, 2 * m1});
  kernels::matmul(x.data(), p.b1.data(), y.data(), 1, 1, rows * m2, 2 * m1, m1, false, false);  // stage 1
  Tensor w = Tensor::empty({rows, m1, 2 * m2});
  twiddle_transpose(p, y.data(), w.data(), rows, true);
  y = Tensor();
  Tensor s = Tensor::empty({rows, m1, 2 * m2});
  kernels::matmul(w.data(), p.b2.data(), s.data(), 1, 1, rows * m1, 2 * m2, 2 * m2, false, false);  // stage 2
  return s;
}

// Spectrum [R, m1, 2 m2] -> real part of the inverse DFT (with 1/n) as time rows [R, m2, m1].
Tensor dft_inverse_real(const DftPlan& p, const Tensor& s, int64_t rows) {
  const int64_t m1 = p.m1, m2 = p.m2;
  Tensor u = Tensor::empty({rows, m1, 2 * m2});
  kernels::matmul(s.data(), p.b2inv.data(), u.data(), 1, 1, rows * m1, 2 * m2, 2 * m2, false, false);  // stage A
  Tensor w = Tensor::empty({rows, m2, 2 * m1});
  twiddle_transpose(p, u.data(), w.data(), rows, false);
  u = Tensor();
  Tensor out = Tensor::empty({rows, m2, m1});
  kernels::matmul(w.data(), p.b1inv.data(), out.data(), 1, 1, rows * m2, m1, 2 * m1, false, false);  // stage B
  return out;
}

// Where time t sits in a time row [m2 (t2), m1 (t1)].
inline int64_t time_pos(int64_t t, int64_t m1, int64_t m2) { return (t % m2) * m1 + t / m2; }

// x [B, N, C] -> time rows [B*C, m2, m1] (row b*C + c), zero padded beyond N.
Tensor gather_rows(const Tensor& x, int64_t B, int64_t N, int64_t C, int64_t m1, int64_t m2) {
  const int64_t n = m1 * m2;
  Tensor rows = Tensor::empty({B * C, m2, m1});
  const float* xp = x.data();
  float* rp = rows.data();
  kernels::parallel_for(B * C, std::max<int64_t>(1, kernels::kGrain / n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / C, c = r % C;
      float* dst = rp + r * n;
      std::fill(dst, dst + n, 0.f);
      for (int64_t t = 0; t < N; ++t) dst[time_pos(t, m1, m2)] = xp[(b * N + t) * C + c];
    }
  });
  return rows;
}

// Time rows [B*C, m2, m1] -> y [B, N, C], positions t < N.
Tensor scatter_rows(const Tensor& rows, int64_t B, int64_t N, int64_t C, int64_t m1, int64_t m2) {
  Tensor y = Tensor::empty({B, N, C});
  const float* rp = rows.data();
  float* yp = y.data();
  const int64_t n = m1 * m2;
  kernels::parallel_for(B * N, std::max<int64_t>(1, kernels::kGrain / C), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / N, at = time_pos(q % N, m1, m2);
      float* dst = yp + q * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = rp[(b * C + c) * n + at];
    }
  });
  return y;
}

// Circular filter rows h [C, n]: h[c, j] = k[j, c], h[c, (n - j) mod n] += k_rev[j, c]; its spectrum.
Tensor filter_spectrum(const DftPlan& p, const Tensor& k, const Tensor* k_rev, int64_t N, int64_t C) {
  const int64_t n = p.n, m1 = p.m1, m2 = p.m2;
  Tensor h = Tensor::zeros({C, m2, m1});
  for (int64_t j = 0; j < N; ++j)
    for (int64_t c = 0; c < C; ++c) h[c * n + time_pos(j, m1, m2)] += k[j * C + c];
  if (k_rev)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t c = 0; c < C; ++c) h[c * n + time_pos((n - j) % n, m1, m2)] += (*k_rev)[j * C + c];
  return dft_forward(p, h, C);
}

// a[b*C + c] *= h[c] or conj(h[c]) for every b (complex spectra [*, m1, 2 m2], in place).
void mul_spectrum(Tensor& a, const Tensor& h, int64_t rows, int64_t C, const DftPlan& p, bool conj) {
  const float sign = conj ? -1.f : 1.f;
  const int64_t m1 = p.m1, m2 = p.m2, len = 2 * p.n;
  float* ap = a.data();
  const float* hp = h.data();
  kernels::parallel_for(rows, std::max<int64_t>(1, kernels::kGrain / len), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t k1 = 0; k1 < m1; ++k1) {
        float* xr = ap + r * len + k1 * 2 * m2;
        float* xi = xr + m2;
        const float* hr = hp + (r % C) * len + k1 * 2 * m2;
        const float* hi = hr + m2;
        for (int64_t k2 = 0; k2 < m2; ++k2) {
          const float bi = sign * hi[k2];
          const float re = xr[k2] * hr[k2] - xi[k2] * bi;
          const float im = xr[k2] * bi + xi[k2] * hr[k2];
          xr[k2] = re, xi[k2] = im;
        }
      }
  });
}

}  // namespace

double monarch_long_conv_flops(int64_t batch, int64_t length, int64_t channels, bool bidirectional) {
  (void)bidirectional;  // the two filters share one spectrum
  const auto factors = monarch_factors(2 * length);
  const int64_t m1 = factors.first, m2 = factors.second;  // named: clang 14 cannot capture bindings
  const double n = static_cast<double>(m1 * m2), a = static_cast<double>(m1), b = static_cast<double>(m2);
  const double rows = static_cast<double>(batch * channels);
  // Per row: forward transform of v (stage 1: 2 n * 2 m1, stage 2: 2 n * 4 m2), product (6 n), real
  // inverse (stage A: 2 n * 4 m2, stage B: 2 n * 2 m1); per channel the filter's forward transform.
  return rows * (8 * n * a + 16 * n * b + 6 * n) + static_cast<double>(channels) * (4 * n * a + 8 * n * b);
}

Var monarch_long_conv(const Var& v, const Var& k, const Var& k_rev) {
  require(v.rank() == 3, fmt::format("long conv: v {} must be [B, N, C]", shape_str(v.shape())));
  const int64_t B = v.dim(0), N = v.dim(1), C = v.dim(2);
  require(k.rank() == 2 && k.dim(0) == N && k.dim(1) == C,
          fmt::format("long conv: filter {} must be [N = {}, C = {}]", shape_str(k.shape()), N, C));
  require(!k_rev.defined() || k_rev.shape() == k.shape(),
          fmt::format("long conv: reverse filter {} must be [N = {}, C = {}]", shape_str(k_rev.shape()), N, C));
  const auto factors = monarch_factors(2 * N);
  const int64_t m1 = factors.first, m2 = factors.second;  // named: clang 14 cannot capture bindings
  const DftPlan& plan = dft_plan(m1, m2);
  const int64_t rows = B * C;
  Tensor y;
  {
    const Tensor h = filter_spectrum(plan, k.value(), k_rev.defined() ? &k_rev.value() : nullptr, N, C);  // [C, m1, 2 m2]
    Tensor s = dft_forward(plan, gather_rows(v.value(), B, N, C, m1, m2), rows);  // [BC, m1, 2 m2]
    mul_spectrum(s, h, rows, C, plan, false);
    y = scatter_rows(dft_inverse_real(plan, s, rows), B, N, C, m1, m2);  // [B, N, C]
  }
  const GradSink gv = v.sink(), gk = k.sink(), gkr = k_rev.defined() ? k_rev.sink() : GradSink();
  const bool filters_wanted = gk.wanted() || gkr.wanted();
  const Tensor vv = filters_wanted ? v.value() : Tensor();
  const Tensor kv = gv.wanted() ? k.value() : Tensor();
  const Tensor krv = gv.wanted() && k_rev.defined() ? k_rev.value() : Tensor();
  std::vector<Var> inputs{v, k};
  if (k_rev.defined()) inputs.push_back(k_rev);
  return make_op_result(std::move(y), inputs, [gv, gk, gkr, vv, kv, krv, B, N, C, m1, m2](const Tensor& g) {
    const DftPlan& plan = dft_plan(m1, m2);
    const int64_t n = plan.n, rows = B * C;
    Tensor gs = dft_forward(plan, gather_rows(g, B, N, C, m1, m2), rows);  // G [BC, m1, 2 m2]
    if (gv.wanted()) {  // dv = correlation with h: IDFT(conj(H) G)
      const Tensor h = filter_spectrum(plan, kv, krv.defined() ? &krv : nullptr, N, C);
      Tensor d = (gk.wanted() || gkr.wanted()) ? gs.clone() : gs;
      mul_spectrum(d, h, rows, C, plan, true);
      gv.accumulate(scatter_rows(dft_inverse_real(plan, d, rows), B, N, C, m1, m2));
    }
    if (gk.wanted() || gkr.wanted()) {  // dh[c, d] = sum_{b, t} g[b, t, c] v[b, t - d, c] = IDFT(sum_b G conj(V))
      Tensor vs = dft_forward(plan, gather_rows(vv, B, N, C, m1, m2), rows);
      const int64_t len = 2 * n;
      Tensor q = Tensor::zeros({C, plan.m1, 2 * plan.m2});
      kernels::parallel_for(C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t b = 0; b < B; ++b)  // fixed order over the batch
            for (int64_t k1 = 0; k1 < plan.m1; ++k1) {
              const int64_t off = k1 * 2 * plan.m2;
              const float* gr = gs.data() + (b * C + c) * len + off;
              const float* gi = gr + plan.m2;
              const float* vr = vs.data() + (b * C + c) * len + off;
              const float* vi = vr + plan.m2;
              float* qr = q.data() + c * len + off;
              float* qi = qr + plan.m2;
              for (int64_t k2 = 0; k2 < plan.m2; ++k2) {
                qr[k2] += gr[k2] * vr[k2] + gi[k2] * vi[k2];
                qi[k2] += gi[k2] * vr[k2] - gr[k2] * vi[k2];
              }
            }
      });
      vs = Tensor();
      const Tensor out = dft_inverse_real(plan, q, C);  // time rows [C, m2, m1]
      if (gk.wanted()) {
        Tensor dk = Tensor::empty({N, C});
        for (int64_t j = 0; j < N; ++j)
          for (int64_t c = 0; c < C; ++c) dk[j * C + c] = out[c * n + time_pos(j, m1, m2)];
        gk.accumulate(dk);
      }
      if (gkr.wanted()) {
        Tensor dkr = Tensor::empty({N, C});
        for (int64_t j = 0; j < N; ++j)
          for (int64_t c = 0; c < C; ++c) dkr[j * C + c] = out[c * n + time_pos((n - j) % n, m1, m2)];
        gkr.accumulate(dkr);
      }
    }
  });
}


// ---- max pooling --------------------------------------------------------------------------------
namespace {

// Shared kernel. Pool q covers positions range(q, N) = [lo, hi); output position t reads pool index(t).
// x [B, N, C] -> y [B, N, C]; saves argmax [B, pools, C] (float-coded position, -1 = no real position).
template <class Range, class Index>
Var max_pool(const Var& x, const Tensor* key_mask, int64_t pools, Range range, Index index, const char* what) {
  require(x.rank() == 3, fmt::format("{}: x {} must be [B, N, C]", what, shape_str(x.shape())));
  const int64_t B = x.dim(0), N = x.dim(1), C = x.dim(2);
  require(!key_mask || key_mask->numel() == B * N,
          fmt::format("{}: key mask {} does not fit [B = {}, 1, 1, N = {}]", what,
                      key_mask ? shape_str(key_mask->shape()) : "", B, N));
  const float* xp = x.value().data();
  const float* mp = key_mask ? key_mask->data() : nullptr;
  Tensor arg = Tensor::empty({B, pools, C});
  Tensor y = Tensor::empty({B, N, C});
  float* ap = arg.data();
  float* yp = y.data();
  // Forward: the winner of every (b, pool, channel); first position on ties.
  kernels::parallel_for(B * pools, std::max<int64_t>(1, kernels::kGrain / (C * 4)), [&](int64_t q0, int64_t q1) {
    std::vector<float> best(static_cast<size_t>(C));
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / pools;
      const auto [lo, hi] = range(q % pools, N);
      float* a = ap + q * C;
      std::fill(a, a + C, -1.f);
      for (int64_t s = lo; s < hi; ++s) {
        if (mp && is_padded_key(mp[b * N + s])) continue;
        const float* xr = xp + (b * N + s) * C;
        for (int64_t c = 0; c < C; ++c)
          if (a[c] < 0 || xr[c] > best[c]) best[c] = xr[c], a[c] = static_cast<float>(s);
      }
    }
  });
  // Output: y[b, t, c] = x[b, argmax, c] (0 where the pool has no real position).
  kernels::parallel_for(B * N, std::max<int64_t>(1, kernels::kGrain / C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / N, t = r % N;
      const float* a = ap + (b * pools + index(t)) * C;
      float* yr = yp + r * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = a[c] < 0 ? 0.f : xp[(b * N + static_cast<int64_t>(a[c])) * C + c];
    }
  });
  return make_op_result(std::move(y), {x}, [gx = x.sink(), arg, B, N, C, pools, index](const Tensor& g) {
    Tensor dx = Tensor::zeros({B, N, C});
    const float* gp = g.data();
    const float* ap = arg.data();
    float* dp = dx.data();
    // Several outputs share a winner: one task per (b, channel block) walks every t, so no two tasks
    // write the same element and the summation order is fixed.
    constexpr int64_t kBlock = 16;
    const int64_t blocks = (C + kBlock - 1) / kBlock;
    kernels::parallel_for(B * blocks, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t b = q / blocks, c0 = (q % blocks) * kBlock, c1 = std::min(C, c0 + kBlock);
        for (int64_t t = 0; t < N; ++t) {
          const float* a = ap + (b * pools + index(t)) * C;
          const float* gr = gp + (b * N + t) * C;
          for (int64_t c = c0; c < c1; ++c)
            if (a[c] >= 0) dp[(b * N + static_cast<int64_t>(a[c])) * C + c] += gr[c];
        }
      }
    });
    gx.accumulate(dx);
  });
}

}  // namespace

Var segment_max_pool(const Var& x, int64_t size, const Tensor* key_mask) {
  require(size >= 1, "segment_max_pool: segment size must be >= 1");
  require(x.rank() == 3, fmt::format("segment_max_pool: x {} must be [B, N, C]", shape_str(x.shape())));
  const int64_t pools = (x.dim(1) + size - 1) / size;
  return max_pool(
      x, key_mask, pools,
      [size](int64_t q, int64_t N) { return std::pair<int64_t, int64_t>{q * size, std::min(N, (q + 1) * size)}; },
      [size](int64_t t) { return t / size; }, "segment_max_pool");
}

Var local_max_pool(const Var& x, int64_t window, const Tensor* key_mask) {
  require(window >= 1 && window % 2 == 1, fmt::format("local_max_pool: window {} must be odd and >= 1", window));
  require(x.rank() == 3, fmt::format("local_max_pool: x {} must be [B, N, C]", shape_str(x.shape())));
  const int64_t half = window / 2;
  return max_pool(
      x, key_mask, x.dim(1),
      [half](int64_t t, int64_t N) {
        return std::pair<int64_t, int64_t>{std::max<int64_t>(0, t - half), std::min(N, t + half + 1)};
      },
      [](int64_t t) { return t; }, "local_max_pool");
}

}  // namespace ab
