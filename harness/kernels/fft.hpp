#pragma once
// A small FFT service on FFTW3 single precision, shared by the Fourier and long-convolution mixers
// (FNet, S4D, Hyena, M2, long convolutions).
//
// * Batched 1-D transforms along any strided axis (FFTW's guru64 interface): a Layout gives the
//   length, the element strides and any number of batch loops, so an axis of a [B, N, D] tensor is
//   transformed in place of a transpose.
// * Plans are created once per (kind, direction, length, strides, loops, in-place-ness, alignment
//   of the arrays) with FFTW_ESTIMATE (deterministic, no measuring), under one mutex (FFTW's planner
//   is not thread-safe), and cached for the life of the process. Execution uses FFTW's new-array
//   interface, which is thread-safe; a plan is only reused for arrays with the alignment it was made
//   for (the cache key holds fftwf_alignment_of of both arrays), so any offset into a tensor works.
// * Large batches run in parallel (TBB) in chunks of a fixed size that depends only on the layout,
//   never on the thread count, so results are identical for any number of threads.
// * Conventions are FFTW's: transforms are unnormalised, forward X_k = sum_t x_t e^{-2 pi i k t / n},
//   inverse with e^{+2 pi i k t / n}. The contiguous conveniences irfft / ifft divide by n.
// Strides and distances are in elements of the array they index: floats for real arrays, complex
// numbers for complex arrays. The real-to-complex transform of length n has n / 2 + 1 outputs.
#include <complex>
#include <cstdint>
#include <vector>

#include "attnbench/autograd.hpp"

namespace ab::fft {

using cfloat = std::complex<float>;

// One batch loop: `count` transforms, `in_dist` / `out_dist` elements apart.
struct Loop {
  int64_t count = 1;
  int64_t in_dist = 0;
  int64_t out_dist = 0;
};

// Element t of the transform picked by loop indices (j_0, j_1, ...) is read at
//   in  + t * in_stride  + sum_k j_k * loops[k].in_dist
// and the output element at out + t * out_stride + sum_k j_k * loops[k].out_dist.
struct Layout {
  int64_t n = 0;  // transform length (the real length for r2c / c2r)
  int64_t in_stride = 1;
  int64_t out_stride = 1;
  std::vector<Loop> loops;  // empty = one transform
};

enum class Direction { forward, inverse };

// Complex to complex. in == out (same layout) is an in-place transform.
void c2c(const cfloat* in, cfloat* out, const Layout& layout, Direction dir);
// Real to complex (n real -> n/2+1 complex; the rest follows from Hermitian symmetry).
void r2c(const float* in, cfloat* out, const Layout& layout);
// Complex (n/2+1, Hermitian half) to real (n), unnormalised; the input is not modified.
void c2r(const cfloat* in, float* out, const Layout& layout);

inline int64_t rfft_length(int64_t n) { return n / 2 + 1; }

// ---- contiguous conveniences: rows of length n, `batch` rows ----
void rfft(const float* x, cfloat* X, int64_t n, int64_t batch);    // x [batch, n] -> X [batch, n/2+1]
void irfft(const cfloat* X, float* x, int64_t n, int64_t batch);   // X [batch, n/2+1] -> x [batch, n], / n
void fft(const cfloat* x, cfloat* X, int64_t n, int64_t batch);    // [batch, n] -> [batch, n]
void ifft(const cfloat* X, cfloat* x, int64_t n, int64_t batch);   // [batch, n] -> [batch, n], / n

// The smallest m >= n whose prime factors are 2, 3, 5 and 7 (fast FFTW sizes), e.g. for the
// zero-padded length of a linear convolution (good_size(2 * n)).
int64_t good_size(int64_t n);

struct CacheStats {
  int64_t plans = 0;   // plans in the cache
  int64_t lookups = 0; // plan requests
};
CacheStats cache_stats();

}  // namespace ab::fft

namespace ab {

// Fourier token mixing (FNet): x [B, N, D] -> y [B, N, D],
//   y[b] = scale * Re(F_N x[b] F_D)   (2-D DFT over the sequence and hidden axes, real part).
// Linear and self-adjoint (the DFT matrices are symmetric and x is real), so the backward is the
// same map applied to the output gradient. Saves nothing for backward. Computed as a real-to-complex
// FFT over D, a complex FFT over N on the half spectrum, and the Hermitian mirror for the rest.
Var fourier_mix(const Var& x, float scale = 1.0f);

}  // namespace ab
