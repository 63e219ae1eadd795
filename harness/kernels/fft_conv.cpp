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

// The kernels' gradients from red [G, Mh] = sum over channels and batch of conj(U) DY per kernel
// row: p = c2r(red) is p[l] = sum_t dy[t] u[t - l] (circular), so dk_fwd[l] = p[l] / M and
// dk_bwd[l] = p[-l mod M] / M.
void accumulate_kernel_grads(const Tensor& red, const ConvGeom& g, const GradSink& gkf, const GradSink& gkb) {
  Tensor p = Tensor::empty({g.G, g.M});
  fft::c2r(as_complex(red), p.data(), fft::Layout{g.M, 1, 1, {{g.G, g.Mh, g.M}}});
  const float inv = 1.0f / static_cast<float>(g.M);
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

// The geometry of a convolution of n positions by kernels k_fwd [G, L] (C and r left unset).
ConvGeom kernel_geometry(int64_t n, const Tensor& k_fwd) {
  ConvGeom g{};
  g.N = n, g.G = k_fwd.dim(0), g.L = k_fwd.dim(1);
  g.Le = std::min(g.L, g.N);
  g.M = fft_conv_length(g.N, g.L);
  g.Mh = fft::rfft_length(g.M);
  return g;
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
      accumulate_kernel_grads(red, g, gkf, gkb);
    }
  });
}

// ---- Toeplitz-weighted kernel attention (fft_toeplitz_attention) -------------------------------

namespace {

// Channels per block of rows transformed together (a fixed value channel c, features a0 ..).
constexpr int64_t kFeatureBlock = 16;

// src [P, rows, cols] -> [P, cols, rows]
Tensor transpose_rows(const Tensor& src, int64_t P, int64_t rows, int64_t cols) {
  Tensor dst = Tensor::empty({P, cols, rows});
  const float* s = src.data();
  float* d = dst.data();
  kernels::parallel_for(P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) d[(p * cols + c) * rows + r] = s[(p * rows + r) * cols + c];
  });
  return dst;
}

struct ToeplitzGeom {
  ConvGeom g;        // N, G = H, L, Le, M, Mh
  int64_t B, H, m, e;
};

// rows [nb, M] <- a[k] (.) b for k < nb (a rows [nb, N] with stride N), zero-padded to M.
void product_rows(const float* a, const float* b, float* rows, int64_t nb, const ConvGeom& g) {
  for (int64_t k = 0; k < nb; ++k) {
    float* __restrict row = rows + k * g.M;
    const float* ak = a + k * g.N;
    for (int64_t n = 0; n < g.N; ++n) row[n] = ak[n] * b[n];
    std::fill(row + g.N, row + g.M, 0.f);
  }
}

// dst[k] = src[k] * K (or conj(K)) for the nb spectra of one head's kernel row K [Mh].
void times_kernel(const cfloat* src, cfloat* dst, const cfloat* K, bool conjugate, int64_t nb, int64_t Mh) {
  for (int64_t k = 0; k < nb; ++k)
    for (int64_t f = 0; f < Mh; ++f) dst[k * Mh + f] = src[k * Mh + f] * (conjugate ? std::conj(K[f]) : K[f]);
}

fft::Layout row_layout(int64_t nb, const ConvGeom& g, bool to_spectrum) {
  return to_spectrum ? fft::Layout{g.M, 1, 1, {{nb, g.M, g.Mh}}} : fft::Layout{g.M, 1, 1, {{nb, g.Mh, g.M}}};
}

}  // namespace

Var fft_toeplitz_attention(const Var& fq, const Var& fk, const Var& x, const Var& k_fwd, const Var& k_bwd) {
  const char* op = "fft_toeplitz_attention";
  require(fq.rank() == 4 && fk.shape() == fq.shape(), op,
          fmt::format("fq {} and fk {} must be [B, H, N, m] alike", shape_str(fq.shape()), shape_str(fk.shape())));
  require(x.rank() == 4 && x.dim(0) == fq.dim(0) && x.dim(1) == fq.dim(1) && x.dim(2) == fq.dim(2), op,
          fmt::format("x {} must be [B, H, N, e] beside fq {}", shape_str(x.shape()), shape_str(fq.shape())));
  require(k_fwd.rank() == 2 && k_fwd.dim(0) == fq.dim(1) && k_fwd.dim(1) >= 1, op,
          fmt::format("k_fwd {} must be [H = {}, L]", shape_str(k_fwd.shape()), fq.dim(1)));
  require(!k_bwd.defined() || k_bwd.shape() == k_fwd.shape(), op,
          fmt::format("k_bwd {} must have the shape of k_fwd {}", shape_str(k_bwd.shape()), shape_str(k_fwd.shape())));
  ToeplitzGeom t;
  t.B = fq.dim(0), t.H = fq.dim(1), t.m = fq.dim(3), t.e = x.dim(3);
  t.g = kernel_geometry(fq.dim(2), k_fwd.value());
  const ConvGeom& g = t.g;
  const int64_t BH = t.B * t.H, N = g.N, nbmax = std::min(kFeatureBlock, t.m);
  const bool two_sided = k_bwd.defined();
  Tensor kspec = kernel_spectrum(k_fwd.value(), two_sided ? &k_bwd.value() : nullptr, g);  // [H, Mh] complex
  // Channel-major copies, so that every row the transforms read or write is contiguous.
  const Tensor fqT = transpose_rows(fq.value(), BH, N, t.m), fkT = transpose_rows(fk.value(), BH, N, t.m),
               xT = transpose_rows(x.value(), BH, N, t.e);  // [BH, m | e, N]
  Tensor rT = Tensor::zeros({BH, t.e, N});
  kernels::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
    Tensor rows = Tensor::empty({nbmax, g.M}), spec = Tensor::empty({nbmax, g.Mh, 2});
    for (int64_t bh = b0; bh < b1; ++bh) {
      const cfloat* K = as_complex(kspec) + (bh % t.H) * g.Mh;
      for (int64_t c = 0; c < t.e; ++c) {
        const float* xc = xT.data() + (bh * t.e + c) * N;
        float* rc = rT.data() + (bh * t.e + c) * N;
        for (int64_t a0 = 0; a0 < t.m; a0 += nbmax) {  // S rows = conv(fk[:, a] x[:, c]); r_c += fq[:, a] S
          const int64_t nb = std::min(nbmax, t.m - a0);
          product_rows(fkT.data() + (bh * t.m + a0) * N, xc, rows.data(), nb, g);
          fft::r2c(rows.data(), as_complex(spec), row_layout(nb, g, true));
          times_kernel(as_complex(spec), as_complex(spec), K, false, nb, g.Mh);
          fft::c2r(as_complex(spec), rows.data(), row_layout(nb, g, false));
          for (int64_t k = 0; k < nb; ++k) {
            const float* qa = fqT.data() + (bh * t.m + a0 + k) * N;
            const float* sr = rows.data() + k * g.M;
            for (int64_t n = 0; n < N; ++n) rc[n] += qa[n] * sr[n];
          }
        }
      }
    }
  });
  Tensor r = transpose_rows(rT, BH, t.e, N).reshape(x.shape());

  const GradSink gq = fq.sink(), gk = fk.sink(), gx = x.sink(), gkf = k_fwd.sink(),
                 gkb = two_sided ? k_bwd.sink() : GradSink();
  std::vector<Var> inputs{fq, fk, x, k_fwd};
  if (two_sided) inputs.push_back(k_bwd);
  return make_op_result(std::move(r), inputs, [gq, gk, gx, gkf, gkb, fqT, fkT, xT, kspec, t](const Tensor& dr) {
    const ConvGeom& g = t.g;
    const int64_t BH = t.B * t.H, N = g.N, nbmax = std::min(kFeatureBlock, t.m);
    const bool want_k = gkf.wanted() || gkb.wanted();
    const Tensor drT = transpose_rows(dr, BH, N, t.e);  // [BH, e, N]
    Tensor dqT = Tensor::zeros({BH, t.m, N}), dkT = Tensor::zeros({BH, t.m, N}), dxT = Tensor::zeros({BH, t.e, N});
    Tensor acc = want_k ? Tensor::zeros({BH, g.Mh, 2}) : Tensor();  // sum over channels of conj(U) dS
    kernels::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      Tensor rows = Tensor::empty({nbmax, g.M}), uspec = Tensor::empty({nbmax, g.Mh, 2}),
             sspec = Tensor::empty({nbmax, g.Mh, 2});
      cfloat *U = as_complex(uspec), *X = as_complex(sspec);
      for (int64_t bh = b0; bh < b1; ++bh) {
        const cfloat* K = as_complex(kspec) + (bh % t.H) * g.Mh;
        cfloat* A = want_k ? as_complex(acc) + bh * g.Mh : nullptr;
        for (int64_t c = 0; c < t.e; ++c) {
          const float* xc = xT.data() + (bh * t.e + c) * N;
          const float* drc = drT.data() + (bh * t.e + c) * N;
          float* dxc = dxT.data() + (bh * t.e + c) * N;
          for (int64_t a0 = 0; a0 < t.m; a0 += nbmax) {
            const int64_t nb = std::min(nbmax, t.m - a0);
            const float* fka = fkT.data() + (bh * t.m + a0) * N;
            const float* fqa = fqT.data() + (bh * t.m + a0) * N;
            // U = spectra of fk[:, a] x[:, c]; S = conv -> dfq[:, a] += dr_c S
            product_rows(fka, xc, rows.data(), nb, g);
            fft::r2c(rows.data(), U, row_layout(nb, g, true));
            if (gq.wanted()) {
              times_kernel(U, X, K, false, nb, g.Mh);
              fft::c2r(X, rows.data(), row_layout(nb, g, false));
              for (int64_t k = 0; k < nb; ++k) {
                float* dq = dqT.data() + (bh * t.m + a0 + k) * N;
                const float* sr = rows.data() + k * g.M;
                for (int64_t n = 0; n < N; ++n) dq[n] += drc[n] * sr[n];
              }
            }
            // dS = fq[:, a] dr_c, its spectra; the kernels' gradient sums conj(U) dS
            product_rows(fqa, drc, rows.data(), nb, g);
            fft::r2c(rows.data(), X, row_layout(nb, g, true));
            if (A)
              for (int64_t k = 0; k < nb; ++k)
                for (int64_t f = 0; f < g.Mh; ++f) A[f] += std::conj(U[k * g.Mh + f]) * X[k * g.Mh + f];
            if (!gk.wanted() && !gx.wanted()) continue;
            // dU = correlation of dS with the kernel -> dfk[:, a] += dU x_c, dx_c += dU fk[:, a]
            times_kernel(X, X, K, true, nb, g.Mh);
            fft::c2r(X, rows.data(), row_layout(nb, g, false));
            for (int64_t k = 0; k < nb; ++k) {
              const float* du = rows.data() + k * g.M;
              const float* fkr = fka + k * N;
              float* dk = dkT.data() + (bh * t.m + a0 + k) * N;
              for (int64_t n = 0; n < N; ++n) {
                dk[n] += du[n] * xc[n];
                dxc[n] += du[n] * fkr[n];
              }
            }
          }
        }
      }
    });
    if (gq.wanted()) gq.accumulate(transpose_rows(dqT, BH, t.m, N).reshape({t.B, t.H, N, t.m}));
    if (gk.wanted()) gk.accumulate(transpose_rows(dkT, BH, t.m, N).reshape({t.B, t.H, N, t.m}));
    if (gx.wanted()) gx.accumulate(transpose_rows(dxT, BH, t.e, N).reshape({t.B, t.H, N, t.e}));
    if (want_k) {
      Tensor red = Tensor::zeros({t.H, g.Mh, 2});  // summed over the batch
      cfloat* rp = as_complex(red);
      const cfloat* ap = as_complex(acc);
      for (int64_t bh = 0; bh < BH; ++bh)
        for (int64_t f = 0; f < g.Mh; ++f) rp[(bh % t.H) * g.Mh + f] += ap[bh * g.Mh + f];
      accumulate_kernel_grads(red, g, gkf, gkb);
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
