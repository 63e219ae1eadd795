// FFT long convolution and the diagonal-SSM (S4D) kernel (fft_conv.hpp).
#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/params.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "attnbench/kernels/fft.hpp"
#include "core/backend/onednn.hpp"

namespace ab {

namespace {

using cfloat = fft::cfloat;
using cdouble = std::complex<double>;

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

cfloat* as_complex(Tensor& t) { return reinterpret_cast<cfloat*>(t.data()); }
const cfloat* as_complex(const Tensor& t) { return reinterpret_cast<const cfloat*>(t.data()); }

// Geometry of one fft_conv call.
struct ConvGeom {
  int64_t B, N, C, G, L, Le, M, Mh, r;  // r = channels per kernel row
};

// The transforms run channel-major: a block of kConvBlock channels is gathered from [N, C] into
// contiguous zero-padded rows [cb, M], transformed, multiplied and transformed back while it is in
// cache, and scattered back, one TBB task per block. (Strided transforms along the sequence axis
// made FFTW copy every column through a buffer, its cpy2d_pair, and left the spectrum products and
// pads as separate passes over O(M C) memory.)
constexpr int64_t kConvBlock = 16;

// Rows [c0, c0 + nb) of buf [C, M] <- columns of src [N, C], zero-padded to M.
void gather(const float* src, float* buf, int64_t c0, int64_t nb, const ConvGeom& g) {
  for (int64_t t = 0; t < g.N; ++t) {
    const float* row = src + t * g.C + c0;
    for (int64_t k = 0; k < nb; ++k) buf[(c0 + k) * g.M + t] = row[k];
  }
  for (int64_t k = 0; k < nb; ++k) std::fill(buf + (c0 + k) * g.M + g.N, buf + (c0 + k + 1) * g.M, 0.f);
}

// Columns [c0, c0 + nb) of dst [N, C] <- the first N entries of rows of buf [C, M].
void scatter(const float* buf, float* dst, int64_t c0, int64_t nb, const ConvGeom& g) {
  for (int64_t t = 0; t < g.N; ++t) {
    float* row = dst + t * g.C + c0;
    for (int64_t k = 0; k < nb; ++k) row[k] = buf[(c0 + k) * g.M + t];
  }
}

// Rows [c0, c0 + nb) of buf [C, M] -> spec [C, Mh] complex, and back.
void rows_r2c(const float* buf, cfloat* spec, int64_t c0, int64_t nb, const ConvGeom& g) {
  fft::r2c(buf + c0 * g.M, spec + c0 * g.Mh, fft::Layout{g.M, 1, 1, {{nb, g.M, g.Mh}}});
}
void rows_c2r(const cfloat* spec, float* buf, int64_t c0, int64_t nb, const ConvGeom& g) {
  fft::c2r(spec + c0 * g.Mh, buf + c0 * g.M, fft::Layout{g.M, 1, 1, {{nb, g.Mh, g.M}}});
}

// spec rows [c0, c0 + nb) [Mh] *= kspec[g(c)] (or its conjugate).
void multiply_by_kernel(cfloat* spec, const cfloat* kspec, bool conjugate, int64_t c0, int64_t nb, const ConvGeom& g) {
  for (int64_t c = c0; c < c0 + nb; ++c) {
    cfloat* row = spec + c * g.Mh;
    const cfloat* krow = kspec + (c / g.r) * g.Mh;
    if (conjugate)
      for (int64_t f = 0; f < g.Mh; ++f) row[f] *= std::conj(krow[f]);
    else
      for (int64_t f = 0; f < g.Mh; ++f) row[f] *= krow[f];
  }
}

// Runs f(c0, nb) for every block of channels, in parallel.
template <class F>
void for_channel_blocks(const ConvGeom& g, F&& f) {
  const int64_t blocks = (g.C + kConvBlock - 1) / kConvBlock;
  kernels::parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * kConvBlock;
      f(c0, std::min(kConvBlock, g.C - c0));
    }
  });
}

// Frequency-domain kernel (K_fwd + conj(K_bwd)) / M: [G, Mh] complex.
Tensor kernel_spectrum(const Tensor& kf, const Tensor* kb, const ConvGeom& g) {
  Tensor pad = Tensor::zeros({g.G, g.M});
  Tensor out = Tensor::empty({g.G, g.Mh, 2});
  Tensor spec = kb ? Tensor::empty({g.G, g.Mh, 2}) : Tensor();
  const fft::Layout rows{g.M, 1, 1, {{g.G, g.M, g.Mh}}};
  auto load = [&](const Tensor& k) {
    kernels::parallel_for(g.G, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row)
        std::memcpy(pad.data() + row * g.M, k.data() + row * g.L, static_cast<size_t>(g.Le) * sizeof(float));
    });
  };
  load(kf);
  fft::r2c(pad.data(), as_complex(out), rows);
  if (kb) {
    load(*kb);
    fft::r2c(pad.data(), as_complex(spec), rows);
  }
  const float inv = 1.0f / static_cast<float>(g.M);
  cfloat* op = as_complex(out);
  const cfloat* sp = kb ? as_complex(spec) : nullptr;
  kernels::parallel_for(g.G * g.Mh, kernels::kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) op[i] = (sp ? op[i] + std::conj(sp[i]) : op[i]) * inv;
  });
  return out;
}

}  // namespace

int64_t fft_conv_length(int64_t n, int64_t taps) { return fft::good_size(n + std::min(taps, n) - 1); }

Var fft_conv(const Var& u, const Var& k_fwd, const Var& k_bwd) {
  const char* op = "fft_conv";
  require(u.rank() == 3, op, fmt::format("u {} must be [B, N, C]", shape_str(u.shape())));
  require(k_fwd.rank() == 2 && k_fwd.dim(0) >= 1 && k_fwd.dim(1) >= 1, op,
          fmt::format("k_fwd {} must be [G, L]", shape_str(k_fwd.shape())));
  require(!k_bwd.defined() || k_bwd.shape() == k_fwd.shape(), op,
          fmt::format("k_bwd {} must have the shape of k_fwd {}", shape_str(k_bwd.shape()), shape_str(k_fwd.shape())));
  ConvGeom g;
  g.B = u.dim(0), g.N = u.dim(1), g.C = u.dim(2), g.G = k_fwd.dim(0), g.L = k_fwd.dim(1);
  require(g.C % g.G == 0, op, fmt::format("kernel rows {} must divide the channels {}", g.G, g.C));
  g.r = g.C / g.G;
  g.Le = std::min(g.L, g.N);
  g.M = fft_conv_length(g.N, g.L);
  g.Mh = fft::rfft_length(g.M);
  const bool two_sided = k_bwd.defined();

  Tensor kspec = kernel_spectrum(k_fwd.value(), two_sided ? &k_bwd.value() : nullptr, g);  // [G, Mh] complex
  Tensor y = Tensor::empty({g.B, g.N, g.C});
  {
    Tensor buf = Tensor::empty({g.C, g.M});         // padded rows, then the inverse transforms
    Tensor spec = Tensor::empty({g.C, g.Mh, 2});    // their spectra
    float* bp = buf.data();
    cfloat* sp = as_complex(spec);
    const cfloat* kp = as_complex(kspec);
    const float* up = u.value().data();
    for_channel_blocks(g, [&](int64_t c0, int64_t nb) {
      for (int64_t b = 0; b < g.B; ++b) {  // u_b [N, C] -> U_b [C, Mh] -> U_b K -> y_b [N, C]
        gather(up + b * g.N * g.C, bp, c0, nb, g);
        rows_r2c(bp, sp, c0, nb, g);
        multiply_by_kernel(sp, kp, false, c0, nb, g);
        rows_c2r(sp, bp, c0, nb, g);
        scatter(bp, y.data() + b * g.N * g.C, c0, nb, g);
      }
    });
  }

  const GradSink gu = u.sink(), gkf = k_fwd.sink(), gkb = two_sided ? k_bwd.sink() : GradSink();
  const bool want_k = gkf.wanted() || gkb.wanted();
  const Tensor uv = want_k ? u.value() : Tensor();
  if (!gu.wanted()) kspec = Tensor();
  std::vector<Var> inputs{u, k_fwd};
  if (two_sided) inputs.push_back(k_bwd);
  return make_op_result(std::move(y), inputs, [gu, gkf, gkb, uv, kspec, g, want_k](const Tensor& dy) {
    Tensor buf = Tensor::empty({g.C, g.M});
    Tensor gspec = Tensor::empty({g.C, g.Mh, 2});
    Tensor uspec, acc, du;
    if (want_k) {
      uspec = Tensor::empty({g.C, g.Mh, 2});
      acc = Tensor::zeros({g.C, g.Mh, 2});
    }
    if (gu.wanted()) du = Tensor::empty({g.B, g.N, g.C});
    float* bp = buf.data();
    cfloat* gp = as_complex(gspec);
    for_channel_blocks(g, [&](int64_t c0, int64_t nb) {
      for (int64_t b = 0; b < g.B; ++b) {
        // dy_b [N, C] -> DY_b [C, Mh]
        gather(dy.data() + b * g.N * g.C, bp, c0, nb, g);
        rows_r2c(bp, gp, c0, nb, g);
        if (want_k) {  // acc += conj(U_b) DY_b, on this block's rows
          cfloat* usp = as_complex(uspec);
          gather(uv.data() + b * g.N * g.C, bp, c0, nb, g);
          rows_r2c(bp, usp, c0, nb, g);
          cfloat* ap = as_complex(acc);
          for (int64_t i = c0 * g.Mh; i < (c0 + nb) * g.Mh; ++i) ap[i] += std::conj(usp[i]) * gp[i];
        }
        if (gu.wanted()) {  // du_b = DY_b conj(K) -> [N, C]
          multiply_by_kernel(gp, as_complex(kspec), true, c0, nb, g);
          rows_c2r(gp, bp, c0, nb, g);
          scatter(bp, du.data() + b * g.N * g.C, c0, nb, g);
        }
      }
    });
    if (gu.wanted()) gu.accumulate(du);
    if (want_k) {
      // Sum the channels of each kernel row: [C, Mh] -> [G, Mh], then one inverse transform per row.
      Tensor red = Tensor::zeros({g.G, g.Mh, 2});
      cfloat* rp = as_complex(red);
      const cfloat* ap = as_complex(acc);
      kernels::parallel_for(g.G, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t row = r0; row < r1; ++row)
          for (int64_t c = row * g.r; c < (row + 1) * g.r; ++c)
            for (int64_t f = 0; f < g.Mh; ++f) rp[row * g.Mh + f] += ap[c * g.Mh + f];
      });
      Tensor p = Tensor::empty({g.G, g.M});
      fft::c2r(rp, p.data(), fft::Layout{g.M, 1, 1, {{g.G, g.Mh, g.M}}});
      const float inv = 1.0f / static_cast<float>(g.M);
      // p[l] = sum_t dy[t] u[t - l] (circular), so dk_fwd[l] = p[l] and dk_bwd[l] = p[-l mod M].
      auto extract = [&](const GradSink& sink, bool mirrored) {
        Tensor dk = Tensor::zeros({g.G, g.L});
        kernels::parallel_for(g.G, 16, [&](int64_t r0, int64_t r1) {
          for (int64_t row = r0; row < r1; ++row)
            for (int64_t l = 0; l < g.Le; ++l) dk[row * g.L + l] = p[row * g.M + (mirrored ? (g.M - l) % g.M : l)] * inv;
        });
        sink.accumulate(dk);
      };
      if (gkf.wanted()) extract(gkf, false);
      if (gkb.wanted()) extract(gkb, true);
    }
  });
}

// ---- diagonal SSM kernel ----------------------------------------------------------------------

namespace {

struct ModeParams {
  double dt;
  cdouble A, z, E, C, W;  // z = exp(dt A), E = (z - 1) / A, W = C E
};

ModeParams mode_params(const float* log_dt, const float* lar, const float* aim, const float* cp, int64_t c, int64_t n,
                       int64_t modes) {
  ModeParams m;
  const int64_t i = c * modes + n;
  m.dt = std::exp(static_cast<double>(log_dt[c]));
  m.A = cdouble(-std::exp(static_cast<double>(lar[i])), static_cast<double>(aim[i]));
  m.z = std::exp(m.dt * m.A);
  m.E = (m.z - 1.0) / m.A;
  m.C = cdouble(cp[2 * i], cp[2 * i + 1]);
  m.W = m.C * m.E;
  return m;
}

// The Vandermonde sums as real GEMMs. With lags split as l = R j + r (0 <= r < R, 0 <= j < J),
//   K[c, R j + r] = 2 Re(sum_n W_n z_n^{R j} z_n^r) = sum_n (Q[j, 2n] P[r, 2n] + Q[j, 2n+1] P[r, 2n+1])
// with Q[j] = 2 W z^{R j} as (re, -im) and P[r] = z^r as (re, im): per channel a [J, 2n] x [2n, R]
// product (oneDNN, batched over a block of channels). The powers come from repeated multiplication
// in double (at most max(R, J) ~ sqrt(L) steps, so their rounding stays ~1e-14 relative) and are
// rounded to float once; the fp32 accumulation over 2n terms bounds the error of K near 1e-7 of
// sum_n |W_n|. Channels go in blocks of kVandermondeBlock so the factors stay O(block sqrt(L) n)
// in memory; R ~ sqrt(L) keeps P and Q small beside K.
constexpr int64_t kVandermondeBlock = 16;

struct Blocking {
  int64_t R, J;  // R * J >= L lags
};
Blocking blocking(int64_t L) {
  int64_t R = 1;
  while (R * R < L) R *= 2;
  return {R, (L + R - 1) / R};
}

// Channel ch's modes, their z^R, and P [R, 2n] = z^r as (re, im).
void vandermonde_rows(const Tensor& tdt, const Tensor& tlar, const Tensor& taim, const Tensor& tc, int64_t ch,
                      int64_t n, int64_t R, ModeParams* modes, cdouble* zR, float* P) {
  for (int64_t m = 0; m < n; ++m) {
    modes[m] = mode_params(tdt.data(), tlar.data(), taim.data(), tc.data(), ch, m, n);
    cdouble pw = 1.0;
    for (int64_t r = 0; r < R; ++r, pw *= modes[m].z) {
      P[r * 2 * n + 2 * m] = static_cast<float>(pw.real());
      P[r * 2 * n + 2 * m + 1] = static_cast<float>(pw.imag());
    }
    zR[m] = pw;
  }
}

}  // namespace

Var ssm_diag_kernel(const Var& log_dt, const Var& log_a_re, const Var& a_im, const Var& c, int64_t length) {
  const char* op = "ssm_diag_kernel";
  require(log_dt.rank() == 1, op, fmt::format("log_dt {} must be [C]", shape_str(log_dt.shape())));
  const int64_t C = log_dt.dim(0);
  require(log_a_re.rank() == 2 && log_a_re.dim(0) == C, op,
          fmt::format("log_a_re {} must be [C = {}, n]", shape_str(log_a_re.shape()), C));
  const int64_t n = log_a_re.dim(1);
  require(a_im.shape() == log_a_re.shape(), op, fmt::format("a_im {} must be [{}, {}]", shape_str(a_im.shape()), C, n));
  require(c.rank() == 3 && c.dim(0) == C && c.dim(1) == n && c.dim(2) == 2, op,
          fmt::format("c {} must be [{}, {}, 2]", shape_str(c.shape()), C, n));
  require(length >= 1, op, "length must be positive");
  const int64_t L = length;
  const Blocking bk = blocking(L);
  const int64_t R = bk.R, J = bk.J, cb = std::min(C, kVandermondeBlock);
  const Tensor tdt = log_dt.value(), tlar = log_a_re.value(), taim = a_im.value(), tc = c.value();

  Tensor K = Tensor::empty({C, L});
  {
    // Per block of channels: Q [cb, J, 2n], P [cb, R, 2n] -> Kb [cb, J, R] (the first L lags of each row)
    Tensor Q = Tensor::empty({cb, J, 2 * n}), P = Tensor::empty({cb, R, 2 * n}), Kb = Tensor::empty({cb, J, R});
    for (int64_t b0 = 0; b0 < C; b0 += cb) {
      const int64_t nb = std::min(cb, C - b0);
      kernels::parallel_for(nb, 1, [&](int64_t c0, int64_t c1) {
        std::vector<ModeParams> modes(static_cast<size_t>(n));
        std::vector<cdouble> zR(static_cast<size_t>(n));
        for (int64_t k = c0; k < c1; ++k) {
          vandermonde_rows(tdt, tlar, taim, tc, b0 + k, n, R, modes.data(), zR.data(), P.data() + k * R * 2 * n);
          float* q = Q.data() + k * J * 2 * n;
          for (int64_t m = 0; m < n; ++m) {
            cdouble pw = 2.0 * modes[m].W;
            for (int64_t j = 0; j < J; ++j, pw *= zR[m]) {
              q[j * 2 * n + 2 * m] = static_cast<float>(pw.real());
              q[j * 2 * n + 2 * m + 1] = static_cast<float>(-pw.imag());
            }
          }
        }
      });
      float* dst = J * R == L ? K.data() + b0 * L : Kb.data();
      kernels::matmul(Q.data(), P.data(), dst, nb, nb, J, R, 2 * n, false, true);
      if (dst == Kb.data())
        for (int64_t k = 0; k < nb; ++k)
          std::memcpy(K.data() + (b0 + k) * L, Kb.data() + k * J * R, static_cast<size_t>(L) * sizeof(float));
    }
  }

  const GradSink gdt = log_dt.sink(), glar = log_a_re.sink(), gaim = a_im.sink(), gc = c.sink();
  return make_op_result(std::move(K), {log_dt, log_a_re, a_im, c},
                        [gdt, glar, gaim, gc, tdt, tlar, taim, tc, C, n, L, R, J, cb](const Tensor& G) {
    // S = sum_l g_l z^l and S1 = sum_l g_l l z^l per (channel, mode), with l = R j + r:
    //   T[j] = sum_r g[R j + r] z^r, T[J + j] = sum_r (R j + r) g[R j + r] z^r
    //     (GEMM: Gs [2J, R] = (g, l g) zero-padded to J R lags, times P [R, 2n]),
    //   S = sum_j z^{R j} T[j],  S1 = sum_j z^{R j} T[J + j]   (in double)
    Tensor ddt = Tensor::zeros({C}), dlar = Tensor::zeros({C, n}), daim = Tensor::zeros({C, n}),
           dc = Tensor::zeros({C, n, 2});
    Tensor Gs = Tensor::empty({cb, 2 * J, R}), P = Tensor::empty({cb, R, 2 * n}), T = Tensor::empty({cb, 2 * J, 2 * n});
    std::vector<ModeParams> modes(static_cast<size_t>(cb * n));
    std::vector<cdouble> zR(static_cast<size_t>(cb * n));
    for (int64_t b0 = 0; b0 < C; b0 += cb) {
      const int64_t nb = std::min(cb, C - b0);
      kernels::parallel_for(nb, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t k = c0; k < c1; ++k) {
          vandermonde_rows(tdt, tlar, taim, tc, b0 + k, n, R, modes.data() + k * n, zR.data() + k * n,
                           P.data() + k * R * 2 * n);
          const float* g = G.data() + (b0 + k) * L;
          float* gs = Gs.data() + k * 2 * J * R;
          for (int64_t l = 0; l < J * R; ++l) {
            gs[l] = l < L ? g[l] : 0.f;
            gs[J * R + l] = l < L ? static_cast<float>(l) * g[l] : 0.f;
          }
        }
      });
      kernels::matmul(Gs.data(), P.data(), T.data(), nb, nb, 2 * J, 2 * n, R, false, false);
      kernels::parallel_for(nb, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t k = c0; k < c1; ++k) {
          const int64_t ch = b0 + k;
          const float* t = T.data() + k * 2 * J * 2 * n;
          double dlogdt = 0;
          for (int64_t m = 0; m < n; ++m) {
            const ModeParams& p = modes[static_cast<size_t>(k * n + m)];
            const cdouble zr = zR[static_cast<size_t>(k * n + m)];
            cdouble S = 0, S1 = 0, pw = 1.0;
            for (int64_t j = 0; j < J; ++j, pw *= zr) {
              S += pw * cdouble(t[j * 2 * n + 2 * m], t[j * 2 * n + 2 * m + 1]);
              S1 += pw * cdouble(t[(J + j) * 2 * n + 2 * m], t[(J + j) * 2 * n + 2 * m + 1]);
            }
            // L = 2 Re(Phi), Phi = sum_l g_l W z^l, a holomorphic function of C, A and dt.
            const cdouble dPhi_dC = p.E * S;
            const cdouble dPhi_dA = p.C * (p.dt * p.z / p.A - (p.z - 1.0) / (p.A * p.A)) * S + p.W * p.dt * S1;
            const cdouble dPhi_ddt = p.C * p.z * S + p.W * p.A * S1;
            const int64_t i = ch * n + m;
            dc[2 * i] = static_cast<float>(2.0 * dPhi_dC.real());
            dc[2 * i + 1] = static_cast<float>(-2.0 * dPhi_dC.imag());
            dlar[i] = static_cast<float>(2.0 * dPhi_dA.real() * p.A.real());  // dA_re/dlar = A_re
            daim[i] = static_cast<float>(-2.0 * dPhi_dA.imag());
            dlogdt += 2.0 * dPhi_ddt.real() * p.dt;
          }
          ddt[ch] = static_cast<float>(dlogdt);
        }
      });
    }
    gdt.accumulate(ddt);
    glar.accumulate(dlar);
    gaim.accumulate(daim);
    gc.accumulate(dc);
  });
}

DiagSsmModes diag_ssm_modes(const Tensor& log_dt, const Tensor& log_a_re, const Tensor& a_im, const Tensor& c) {
  DiagSsmModes m;
  m.channels = log_dt.numel();
  m.modes = log_a_re.numel() / std::max<int64_t>(m.channels, 1);
  const size_t total = static_cast<size_t>(m.channels * m.modes);
  m.abar.resize(total), m.bbar.resize(total), m.c.resize(total);
  for (int64_t ch = 0; ch < m.channels; ++ch)
    for (int64_t n = 0; n < m.modes; ++n) {
      const ModeParams p = mode_params(log_dt.data(), log_a_re.data(), a_im.data(), c.data(), ch, n, m.modes);
      const size_t i = static_cast<size_t>(ch * m.modes + n);
      m.abar[i] = std::complex<float>(p.z);
      m.bbar[i] = std::complex<float>(p.E);
      m.c[i] = std::complex<float>(p.C);
    }
  return m;
}

DiagSsmState::DiagSsmState(int64_t batch, int64_t channels, int64_t modes)
    : batch_(batch), channels_(channels), modes_(modes), x_(static_cast<size_t>(batch * channels * modes)) {}

Tensor DiagSsmState::step(const Tensor& u, const DiagSsmModes& m) {
  if (u.numel() != batch_ * channels_ || m.modes != modes_ || m.channels < 1 || channels_ % m.channels != 0)
    throw UsageError(fmt::format("DiagSsmState::step: input of {} values for batch {} x {} channels, {} modes "
                                 "({} mode rows)",
                                 u.numel(), batch_, channels_, m.modes, m.channels));
  const int64_t r = channels_ / m.channels;
  Tensor y = Tensor::empty({batch_, channels_});
  for (int64_t b = 0; b < batch_; ++b)
    for (int64_t s = 0; s < channels_; ++s) {
      const float in = u[b * channels_ + s];
      std::complex<float>* x = x_.data() + (b * channels_ + s) * modes_;
      const int64_t row = (s / r) * modes_;
      float acc = 0;
      for (int64_t n = 0; n < modes_; ++n) {
        x[n] = m.abar[row + n] * x[n] + m.bbar[row + n] * in;
        acc += (m.c[row + n] * x[n]).real();
      }
      y[b * channels_ + s] = 2.f * acc;
    }
  return y;
}

}  // namespace ab
