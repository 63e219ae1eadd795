// Selective scan (Mamba S6): forward with state checkpoints, backward by chunk-wise recomputation
// and the reverse recurrence. See attnbench/selective_scan.hpp for the definition.
#include "attnbench/kernels/selective_scan.hpp"
#include "attnbench/params.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "core/backend/onednn.hpp"

namespace ab {

using kernels::parallel_for;

namespace {

// exp(x) with no library call, so that the loops over the state index vectorise: 2^k p(r) with
// k = round(x / ln 2) (by the 1.5 * 2^23 trick), r = x - k ln 2 in two parts and the Cephes
// polynomial; relative error ~2 ulp on [-87, 88] (inputs are clamped to it; exp(-87) ~ 1.6e-38).
inline float vexp(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float k = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  return p * std::bit_cast<float>((static_cast<int32_t>(k) + 127) << 23);
}

// log(1 + y) for y in [0, 1]: 2 atanh(w), w = y / (2 + y) in [0, 1/3], by its series to w^15
// (relative error ~1e-7, no cancellation for small y).
inline float vlog1p01(float y) {
  const float w = y / (2.f + y), w2 = w * w;
  float p = 1.f / 15.f;
  p = p * w2 + 1.f / 13.f;
  p = p * w2 + 1.f / 11.f;
  p = p * w2 + 1.f / 9.f;
  p = p * w2 + 1.f / 7.f;
  p = p * w2 + 1.f / 5.f;
  p = p * w2 + 1.f / 3.f;
  p = p * w2 + 1.f;
  return 2.f * w * p;
}

// softplus(x) = max(x, 0) + log(1 + exp(-|x|)), and x itself above 20 (torch's threshold).
inline float softplus_v(float x) {
  const float ax = x < 0.f ? -x : x;
  return x > 20.f ? x : (x > 0.f ? x : 0.f) + vlog1p01(vexp(-ax));
}
inline float sigmoid_v(float x) { return 1.f / (1.f + vexp(-x)); }

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("selective_scan: " + what);
}

// Raw pointers and sizes shared by the forward and backward kernels.
struct ScanArgs {
  int64_t B, N, C, n, L, K;  // L = chunk, K = number of chunks
  int64_t cb, blocks;        // channels per work unit, blocks of channels
  bool softplus, reverse;
  const float* u;      // [B, N, C]
  const float* delta;  // [B, N, C]
  const float* A;      // [C, n]
  const float* Bm;     // [B, N, n]
  const float* Cm;     // [B, N, n]
  const float* D;      // [C] or null
  const float* bias;   // [C] or null
  int64_t pos(int64_t i) const { return reverse ? N - 1 - i : i; }  // scan step -> position
  // dt of channels [c0, c1) at the row (b * N + t) * C -> out[0, c1 - c0); with `grad`, also
  // d(dt)/d(delta) -> grad[0, c1 - c0).
  void dt_row(int64_t row, int64_t c0, int64_t c1, float* out, float* grad = nullptr) const {
    const float* dr = delta + row;
    if (softplus) {
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) out[c - c0] = softplus_v(dr[c] + (bias ? bias[c] : 0.f));
      if (grad) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) {
          const float x = dr[c] + (bias ? bias[c] : 0.f);
          grad[c - c0] = x > 20.f ? 1.f : sigmoid_v(x);
        }
      }
    } else {
      for (int64_t c = c0; c < c1; ++c) out[c - c0] = dr[c] + (bias ? bias[c] : 0.f);
      if (grad) std::fill(grad, grad + (c1 - c0), 1.f);
    }
  }
};

int64_t channel_block(int64_t C) { return std::min<int64_t>(C, 16); }

// y [B, N, C]; ckpt [B, C, K, n] (state before the first step of each chunk) when not null.
void scan_forward(const ScanArgs& a, float* y, float* ckpt) {
  const int64_t n = a.n;
  parallel_for(a.B * a.blocks, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> h(static_cast<size_t>(a.cb * n)), dts(static_cast<size_t>(a.cb));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / a.blocks, c0 = (w % a.blocks) * a.cb, c1 = std::min(a.C, c0 + a.cb);
      std::fill(h.begin(), h.end(), 0.f);
      for (int64_t i = 0; i < a.N; ++i) {
        if (ckpt && i % a.L == 0)
          for (int64_t c = c0; c < c1; ++c)
            std::memcpy(ckpt + ((b * a.C + c) * a.K + i / a.L) * n, h.data() + (c - c0) * n,
                        static_cast<size_t>(n) * sizeof(float));
        const int64_t t = a.pos(i), row = (b * a.N + t) * a.C;
        const float* Bt = a.Bm + (b * a.N + t) * n;
        const float* Ct = a.Cm + (b * a.N + t) * n;
        a.dt_row(row, c0, c1, dts.data());
        for (int64_t c = c0; c < c1; ++c) {
          const float dt = dts[c - c0], du = dt * a.u[row + c];
          const float* Ac = a.A + c * n;
          float* hc = h.data() + (c - c0) * n;
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t s = 0; s < n; ++s) {
            hc[s] = vexp(dt * Ac[s]) * hc[s] + du * Bt[s];
            acc += Ct[s] * hc[s];
          }
          y[row + c] = acc + (a.D ? a.D[c] * a.u[row + c] : 0.f);
        }
      }
    }
  });
}

// Gradients. g [B, N, C] -> du, dd [B, N, C]; partial sums dA_p [B, C, n], dD_p, dbias_p [B, C],
// dB_p, dC_p [blocks, B, N, n] (summed afterwards in a fixed order).
void scan_backward(const ScanArgs& a, const float* ckpt, const float* g, float* du, float* dd, float* dA_p, float* dD_p,
                   float* dbias_p, float* dB_p, float* dC_p) {
  const int64_t n = a.n, L = a.L;
  parallel_for(a.B * a.blocks, 1, [&](int64_t w0, int64_t w1) {
    const size_t cn = static_cast<size_t>(a.cb * n);
    // States h of one chunk (slot 0 = the checkpoint, slot j + 1 = after step j), decays and dt.
    std::vector<float> hs((L + 1) * cn), dec(L * cn), dts(static_cast<size_t>(L * a.cb)),
        dgr(static_cast<size_t>(L * a.cb)), dh(cn), dA(cn);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / a.blocks, blk = w % a.blocks, c0 = blk * a.cb, c1 = std::min(a.C, c0 + a.cb);
      const int64_t wc = c1 - c0;
      std::fill(dh.begin(), dh.end(), 0.f);
      std::fill(dA.begin(), dA.end(), 0.f);
      std::vector<float> dD(static_cast<size_t>(wc), 0.f), dbias(static_cast<size_t>(wc), 0.f);
      for (int64_t k = a.K - 1; k >= 0; --k) {
        const int64_t i0 = k * L, len = std::min(a.N, i0 + L) - i0;
        for (int64_t c = c0; c < c1; ++c)
          std::memcpy(hs.data() + (c - c0) * n, ckpt + ((b * a.C + c) * a.K + k) * n, static_cast<size_t>(n) * sizeof(float));
        // Recompute the chunk's states.
        for (int64_t j = 0; j < len; ++j) {
          const int64_t t = a.pos(i0 + j), row = (b * a.N + t) * a.C;
          const float* Bt = a.Bm + (b * a.N + t) * n;
          a.dt_row(row, c0, c1, dts.data() + j * a.cb, dgr.data() + j * a.cb);
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t cc = c - c0;
            const float dt = dts[j * a.cb + cc], dub = dt * a.u[row + c];
            const float* Ac = a.A + c * n;
            const float* hp = hs.data() + j * cn + cc * n;
            float* hn = hs.data() + (j + 1) * cn + cc * n;
            float* dj = dec.data() + j * cn + cc * n;
#pragma omp simd
            for (int64_t s = 0; s < n; ++s) {
              dj[s] = vexp(dt * Ac[s]);
              hn[s] = dj[s] * hp[s] + dub * Bt[s];
            }
          }
        }
        // Reverse recurrence through the chunk.
        for (int64_t j = len - 1; j >= 0; --j) {
          const int64_t t = a.pos(i0 + j), row = (b * a.N + t) * a.C, nrow = (b * a.N + t) * n;
          const float* Bt = a.Bm + nrow;
          const float* Ct = a.Cm + nrow;
          float* dBt = dB_p + (blk * a.B * a.N) * n + nrow;
          float* dCt = dC_p + (blk * a.B * a.N) * n + nrow;
          std::fill(dBt, dBt + n, 0.f);
          std::fill(dCt, dCt + n, 0.f);
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t cc = c - c0;
            const float gy = g[row + c], uu = a.u[row + c], dt = dts[j * a.cb + cc];
            const float* Ac = a.A + c * n;
            const float* hp = hs.data() + j * cn + cc * n;
            const float* hc = hs.data() + (j + 1) * cn + cc * n;
            const float* dj = dec.data() + j * cn + cc * n;
            float* dhc = dh.data() + cc * n;
            float* dAc = dA.data() + cc * n;
            float ddt = 0.f, duu = a.D ? a.D[c] * gy : 0.f;
            const float dtu = dt * uu;
#pragma omp simd reduction(+ : ddt, duu)
            for (int64_t s = 0; s < n; ++s) {
              const float dhs = dhc[s] + Ct[s] * gy;  // dL/dh_t
              dCt[s] += hc[s] * gy;
              dBt[s] += dtu * dhs;
              duu += dt * Bt[s] * dhs;
              const float hdec = dj[s] * hp[s] * dhs;
              ddt += Ac[s] * hdec + Bt[s] * uu * dhs;
              dAc[s] += dt * hdec;
              dhc[s] = dj[s] * dhs;  // carried to step t - 1
            }
            du[row + c] = duu;
            dD[cc] += gy * uu;
            const float dr = ddt * dgr[j * a.cb + cc];
            dd[row + c] = dr;
            dbias[cc] += dr;
          }
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        std::memcpy(dA_p + (b * a.C + c) * n, dA.data() + (c - c0) * n, static_cast<size_t>(n) * sizeof(float));
        dD_p[b * a.C + c] = dD[c - c0];
        dbias_p[b * a.C + c] = dbias[c - c0];
      }
    }
  });
}

// out[i] = sum_p parts[p * stride + i] for i < count, in order p = 0, 1, ...
Tensor sum_parts(const float* parts, int64_t P, int64_t stride, const Shape& shape) {
  Tensor out = Tensor::empty(shape);
  const int64_t count = out.numel();
  float* op = out.data();
  parallel_for(count, kernels::kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float s = 0.f;
      for (int64_t p = 0; p < P; ++p) s += parts[p * stride + i];
      op[i] = s;
    }
  });
  return out;
}

}  // namespace

float scan_softplus(float x) { return softplus_v(x); }

Var selective_scan(const Var& u, const Var& delta, const Var& A, const Var& Bm, const Var& Cm,
                   const SelectiveScanOptions& opt) {
  require(u.rank() == 3, fmt::format("u {} must be [B, N, C]", shape_str(u.shape())));
  const int64_t B = u.dim(0), N = u.dim(1), C = u.dim(2);
  require(delta.shape() == u.shape(), fmt::format("delta {} must equal u {}", shape_str(delta.shape()), shape_str(u.shape())));
  require(A.rank() == 2 && A.dim(0) == C && A.dim(1) >= 1, fmt::format("A {} must be [C = {}, n]", shape_str(A.shape()), C));
  const int64_t n = A.dim(1);
  const Shape bn{B, N, n};
  require(Bm.shape() == bn && Cm.shape() == bn,
          fmt::format("Bm {} and Cm {} must be {}", shape_str(Bm.shape()), shape_str(Cm.shape()), shape_str(bn)));
  require(!opt.D.defined() || opt.D.shape() == Shape{C}, fmt::format("D {} must be [{}]", shape_str(opt.D.shape()), C));
  require(!opt.delta_bias.defined() || opt.delta_bias.shape() == Shape{C},
          fmt::format("delta_bias {} must be [{}]", shape_str(opt.delta_bias.shape()), C));
  require(opt.chunk >= 1, fmt::format("chunk {} must be >= 1", opt.chunk));

  const int64_t L = opt.chunk, K = std::max<int64_t>(1, (N + L - 1) / L), cb = channel_block(C);
  ScanArgs a{B, N, C, n, L, K, cb, (C + cb - 1) / cb, opt.delta_softplus, opt.reverse,
             u.value().data(), delta.value().data(), A.value().data(), Bm.value().data(), Cm.value().data(),
             opt.D.defined() ? opt.D.value().data() : nullptr,
             opt.delta_bias.defined() ? opt.delta_bias.value().data() : nullptr};

  std::vector<Var> inputs{u, delta, A, Bm, Cm};
  if (opt.D.defined()) inputs.push_back(opt.D);
  if (opt.delta_bias.defined()) inputs.push_back(opt.delta_bias);
  bool record = grad_enabled();
  if (record) {
    record = false;
    for (const auto& v : inputs) record = record || v.requires_grad();
  }
  Tensor y = Tensor::empty({B, N, C});
  Tensor ckpt = record ? Tensor::empty({B, C, K, n}) : Tensor();
  if (N > 0) scan_forward(a, y.data(), record ? ckpt.data() : nullptr);
  if (!record) return Var(std::move(y));

  const GradSink gu = u.sink(), gd = delta.sink(), gA = A.sink(), gB = Bm.sink(), gC = Cm.sink();
  const GradSink gD = opt.D.defined() ? opt.D.sink() : GradSink();
  const GradSink gbias = opt.delta_bias.defined() ? opt.delta_bias.sink() : GradSink();
  // Saved: the inputs and the checkpoints.
  const Tensor uv = u.value(), dv = delta.value(), Av = A.value(), Bv = Bm.value(), Cv = Cm.value();
  const Tensor Dv = opt.D.defined() ? opt.D.value() : Tensor();
  const Tensor biasv = opt.delta_bias.defined() ? opt.delta_bias.value() : Tensor();
  return make_op_result(std::move(y), inputs, [=](const Tensor& g) {
    ScanArgs s = a;
    s.u = uv.data();
    s.delta = dv.data();
    s.A = Av.data();
    s.Bm = Bv.data();
    s.Cm = Cv.data();
    s.D = Dv.defined() ? Dv.data() : nullptr;
    s.bias = biasv.defined() ? biasv.data() : nullptr;
    Tensor du = Tensor::empty({B, N, C}), dd = Tensor::empty({B, N, C});
    Tensor dA_p = Tensor::empty({B, C, n}), dD_p = Tensor::empty({B, C}), dbias_p = Tensor::empty({B, C});
    Tensor dB_p = Tensor::empty({s.blocks, B, N, n}), dC_p = Tensor::empty({s.blocks, B, N, n});
    if (N > 0)
      scan_backward(s, ckpt.data(), g.data(), du.data(), dd.data(), dA_p.data(), dD_p.data(), dbias_p.data(),
                    dB_p.data(), dC_p.data());
    else
      dA_p.fill(0.f), dD_p.fill(0.f), dbias_p.fill(0.f);
    gu.accumulate(du);
    gd.accumulate(dd);
    if (gA.wanted()) gA.accumulate(sum_parts(dA_p.data(), B, C * n, {C, n}));
    if (gB.wanted()) gB.accumulate(sum_parts(dB_p.data(), s.blocks, B * N * n, {B, N, n}));
    if (gC.wanted()) gC.accumulate(sum_parts(dC_p.data(), s.blocks, B * N * n, {B, N, n}));
    if (gD.wanted()) gD.accumulate(sum_parts(dD_p.data(), B, C, {C}));
    if (gbias.wanted()) gbias.accumulate(sum_parts(dbias_p.data(), B, C, {C}));
  });
}

SelectiveScanState::SelectiveScanState(int64_t batch, int64_t channels, int64_t states)
    : batch_(batch), channels_(channels), states_(states), h_(Tensor::zeros({batch, channels, states})) {}

Tensor SelectiveScanState::step(const Tensor& u_t, const Tensor& delta_t, const Tensor& A, const Tensor& Bm_t,
                                const Tensor& Cm_t, const Tensor* D, const Tensor* delta_bias, bool delta_softplus) {
  const int64_t Bn = batch_, C = channels_, n = states_;
  if (u_t.numel() != Bn * C || delta_t.numel() != Bn * C || A.numel() != C * n || Bm_t.numel() != Bn * n ||
      Cm_t.numel() != Bn * n || (D && D->numel() != C) || (delta_bias && delta_bias->numel() != C))
    throw UsageError(fmt::format(
        "SelectiveScanState::step takes u_t, delta_t [{0}, {1}], A [{1}, {2}], Bm_t, Cm_t [{0}, {2}], D, bias [{1}]; "
        "got u_t {3}, delta_t {4}, A {5}, Bm_t {6}, Cm_t {7}",
        Bn, C, n, shape_str(u_t.shape()), shape_str(delta_t.shape()), shape_str(A.shape()), shape_str(Bm_t.shape()),
        shape_str(Cm_t.shape())));
  Tensor y = Tensor::empty({Bn, 1, C});
  for (int64_t b = 0; b < Bn; ++b) {
    const float* Bt = Bm_t.data() + b * n;
    const float* Ct = Cm_t.data() + b * n;
    for (int64_t c = 0; c < C; ++c) {
      float dt = delta_t[b * C + c] + (delta_bias ? (*delta_bias)[c] : 0.f);
      if (delta_softplus) dt = scan_softplus(dt);
      const float uu = u_t[b * C + c], du = dt * uu;
      const float* Ac = A.data() + c * n;
      float* hc = h_.data() + (b * C + c) * n;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t s = 0; s < n; ++s) {
        hc[s] = vexp(dt * Ac[s]) * hc[s] + du * Bt[s];
        acc += Ct[s] * hc[s];
      }
      y[b * C + c] = acc + (D ? (*D)[c] * uu : 0.f);
    }
  }
  return y;
}

}  // namespace ab
