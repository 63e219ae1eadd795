// Exact attention with an online softmax over key blocks (FlashAttention forward, FlashAttention-2
// backward). No N x N buffer: per thread, one or two score tiles [Br, Bc] and a few [Br or Bc, d]
// blocks; k packed into panels once per call (the size of k).
//
// Forward, per (batch*head, query block of Br rows), for each key block of Bc keys:
//   S = (q * scale * log2 e) k^T  (+ mask * log2 e, causal -inf)      [Br, Bc], base-2 logits
//   m' = max(m, rowmax S);  P = 2^(S - m');  l = l 2^(m - m') + rowsum P;  O = O 2^(m - m') + P v
// then O /= l and lse = (m + log2 l) ln 2 (natural log of the softmax denominator).
// Backward, per (batch*head, key block), for each query block (P recomputed from lse):
//   P = 2^(S - lse log2 e);  dV += P^T dO;  dP = dO V^T;  dS = P o (dP - D) * scale,
//   D = rowsum(dO o O);  dQ += dS K;  dK += dS^T Q.
// GEMMs on tiles go through one micro-kernel interface C[M, N] (+)= A[M, K] B[K, N] where A is
// addressed with arbitrary row/column strides (so P^T and dS^T need no transposition) and B rows
// are contiguous: k and v blocks are packed into 64-column panels [d][64] where they are the
// transposed operand. With AVX-512: register-blocked broadcast-FMA kernels (6 x 64 for d = 64)
// and a degree-5 polynomial exp2; otherwise plain loops the compiler vectorises.
// With opt.bf16 (AVX512_BF16, checked at run time): the same schedule, every tile product with
// bf16 inputs and fp32 sums (vdpbf16ps, twice the fp32 FMA rate); q, k, v, dO are rounded once per
// call into pair-interleaved copies, P and dS once per tile; backward accumulates dK^T and dV^T.

// GCC 12 reports a false -Wmaybe-uninitialized inside its own AVX-512 headers
// (_mm512_undefined_ps in _mm512_max_ps) once they are inlined; it must be off where they are read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "attnbench/kernels/flash_attention.hpp"
#include "attnbench/parallel.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#ifdef __AVX512F__
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace ab {

namespace {

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kPanel = 64;  // columns of a packed k / v panel
constexpr int64_t kLane = 16;   // row widths of score tiles are multiples of this

// 2^f on [-0.5, 0.5]: degree-5 fit for relative error (max 2.4e-7 in fp32 Horner).
constexpr float kE0 = 1.000000119e+00f, kE1 = 6.931469440e-01f, kE2 = 2.402212024e-01f,
                kE3 = 5.550713092e-02f, kE4 = 9.675540961e-03f, kE5 = 1.327647129e-03f;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t m) { return ceil_div(a, m) * m; }

// Per-thread scratch reused across calls (fresh pages are expensive here); carved into
// 64-byte-aligned pieces.
class Scratch {
 public:
  ~Scratch() { std::free(data_); }
  void reserve(int64_t floats) {
    if (floats <= cap_) return;
    std::free(data_);
    const auto bytes = static_cast<size_t>(round_up(floats, kLane) * 4);
    data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!data_) throw std::bad_alloc();
    cap_ = floats;
  }
  float* data() { return data_; }

 private:
  float* data_ = nullptr;
  int64_t cap_ = 0;
};
thread_local Scratch tls_scratch;

// Hands out consecutive aligned pieces of one buffer; first call with base = nullptr only counts.
struct Carver {
  float* base;
  int64_t used = 0;
  float* take(int64_t n) {
    float* p = base ? base + used : nullptr;
    used += round_up(std::max<int64_t>(n, 1), kLane);
    return p;
  }
};

// Packs rows [0, n) of src [n, d] into panels dst[ceil(n/64)][d][64] (dst[p][c][j] = src[64p+j][c]),
// zero beyond n.
void pack_panels(const float* src, int64_t n, int64_t d, float* dst) {
  const int64_t npan = ceil_div(n, kPanel);
  for (int64_t p = 0; p < npan; ++p) {
    float* panel = dst + p * kPanel * d;
    const int64_t j0 = p * kPanel, nj = std::min(kPanel, n - j0);
    for (int64_t j = 0; j < nj; ++j) {
      const float* row = src + (j0 + j) * d;
      for (int64_t c = 0; c < d; ++c) panel[c * kPanel + j] = row[c];
    }
    if (nj < kPanel)
      for (int64_t c = 0; c < d; ++c) std::fill(panel + c * kPanel + nj, panel + (c + 1) * kPanel, 0.f);
  }
}

// ---- portable kernels: plain loops, 16-lane partial reductions the compiler can vectorise ----
struct Portable {
  static float exp2(float x) {
    x = std::min(std::max(x, -127.f), 127.f);
    const float n = std::floor(x + 0.5f);
    const float f = x - n;
    float p = kE5;
    p = p * f + kE4;
    p = p * f + kE3;
    p = p * f + kE2;
    p = p * f + kE1;
    p = p * f + kE0;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, 4);
    return x < -126.f ? 0.f : p * scale;
  }

  // C[M, N] (+)= A[M, K] B[K, N]; A(i, k) = a[i * a_rs + k * a_cs]; B row k at b + k * ldb.
  static void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                   int64_t ldb, float* c, int64_t ldc, bool acc) {
    for (int64_t i = 0; i < M; ++i) {
      float* __restrict crow = c + i * ldc;
      if (!acc) std::fill(crow, crow + N, 0.f);
      for (int64_t k = 0; k < K; ++k) {
        const float av = a[i * a_rs + k * a_cs];
        const float* __restrict brow = b + k * ldb;
        for (int64_t j = 0; j < N; ++j) crow[j] += av * brow[j];
      }
    }
  }

  // s[j] += bias[j] (bias may be null: 0) for j < lim, -inf for lim <= j < w (w a multiple of 16);
  // returns the max.
  static float mask_max(float* s, const float* bias, int64_t w, int64_t lim) {
    float mx[kLane];
    std::fill(mx, mx + kLane, -kInf);
    for (int64_t j0 = 0; j0 < w; j0 += kLane)
      for (int64_t l = 0; l < kLane; ++l) {
        const int64_t j = j0 + l;
        const float x = j < lim ? s[j] + (bias ? bias[j] : 0.f) : -kInf;
        s[j] = x;
        mx[l] = mx[l] > x ? mx[l] : x;
      }
    float m = -kInf;
    for (float x : mx) m = std::max(m, x);
    return m;
  }

  // s[j] = 2^(s[j] - m) for j < w; returns the sum.
  static float exp_sum(float* s, int64_t w, float m) {
    float acc[kLane] = {};
    for (int64_t j0 = 0; j0 < w; j0 += kLane)
      for (int64_t l = 0; l < kLane; ++l) {
        const float p = exp2(s[j0 + l] - m);
        s[j0 + l] = p;
        acc[l] += p;
      }
    float t = 0;
    for (float x : acc) t += x;
    return t;
  }

  // s[j] = 2^(s[j] + bias[j] - lse2) for j < lim (bias may be null: 0), 0 for lim <= j < w.
  static void probs(float* s, const float* bias, int64_t w, int64_t lim, float lse2) {
    for (int64_t j = 0; j < w; ++j) s[j] = j < lim ? exp2(s[j] + (bias ? bias[j] : 0.f) - lse2) : 0.f;
  }

  // dp[j] = p[j] * (dp[j] - D) * scale for j < w.
  static void dsoftmax(const float* p, float* dp, int64_t w, float D, float scale) {
    for (int64_t j = 0; j < w; ++j) dp[j] = p[j] * (dp[j] - D) * scale;
  }

  static void scale_row(float* x, int64_t n, float a) {
    for (int64_t j = 0; j < n; ++j) x[j] *= a;
  }
};

#ifdef __AVX512F__
// ---- AVX-512 kernels ----
struct Avx512 {
  static __m512 exp2v(__m512 x) {
    // Below -200 the result is exactly 0 (also for -inf); scalef handles the whole exponent range.
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-200.f)), _mm512_set1_ps(128.f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(kE5);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE0));
    return _mm512_scalef_ps(p, n);
  }

  static __mmask16 tail_mask(int64_t n) {  // low n bits (n in 1..16)
    return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1u);
  }

  // The accumulator tile of both micro-kernels (fp32 and bf16 inputs): C[MR, 16 NV], the last 16
  // columns masked by `tail`; loaded when accumulating, else zero.
  template <int MR, int NV>
  static inline __attribute__((always_inline)) void load_tile(__m512 (&cr)[MR][NV], const float* c, int64_t ldc,
                                                              __mmask16 tail, bool acc) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const float* cp = c + i * ldc + 16 * v;
        cr[i][v] = !acc ? _mm512_setzero_ps() : v == NV - 1 ? _mm512_maskz_loadu_ps(tail, cp) : _mm512_loadu_ps(cp);
      }
  }

  template <int MR, int NV>
  static inline __attribute__((always_inline)) void store_tile(__m512 (&cr)[MR][NV], float* c, int64_t ldc,
                                                               __mmask16 tail) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        float* cp = c + i * ldc + 16 * v;
        if (v == NV - 1)
          _mm512_mask_storeu_ps(cp, tail, cr[i][v]);
        else
          _mm512_storeu_ps(cp, cr[i][v]);
      }
  }

  // The micro-kernel: C[MR, 16 NV] (+)= A[MR, K] B[K, 16 NV], the last 16 columns masked by `tail`.
  template <int MR, int NV>
  static void micro(int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb, float* c,
                    int64_t ldc, __mmask16 tail, bool acc) {
    __m512 cr[MR][NV];
    Avx512::load_tile<MR, NV>(cr, c, ldc, tail, acc);
    const float* ar[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) ar[i] = a + i * a_rs;
    for (int64_t k = 0; k < K; ++k) {
      const float* bk = b + k * ldb;
      __m512 bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, bk + 16 * v) : _mm512_loadu_ps(bk + 16 * v);
      const int64_t ak = k * a_cs;
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512 av = _mm512_set1_ps(ar[i][ak]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) cr[i][v] = _mm512_fmadd_ps(av, bv[v], cr[i][v]);
      }
    }
    Avx512::store_tile<MR, NV>(cr, c, ldc, tail);
  }

  // Rows per micro-kernel call for NV vectors of columns: at most 24 accumulators.
  static constexpr int rows_for(int nv) { return nv == 4 ? 6 : nv == 3 ? 8 : 12; }

  template <int NV, int R>
  static void micro_tail(int r, int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb,
                         float* c, int64_t ldc, __mmask16 tail, bool acc) {
    if constexpr (R > 0) {
      if (r == R)
        micro<R, NV>(K, a, a_rs, a_cs, b, ldb, c, ldc, tail, acc);
      else
        micro_tail<NV, R - 1>(r, K, a, a_rs, a_cs, b, ldb, c, ldc, tail, acc);
    }
  }

  template <int NV>
  static void column_block(int64_t M, int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                           int64_t ldb, float* c, int64_t ldc, __mmask16 tail, bool acc) {
    constexpr int MR = rows_for(NV);
    int64_t i = 0;
    for (; i + MR <= M; i += MR) micro<MR, NV>(K, a + i * a_rs, a_rs, a_cs, b, ldb, c + i * ldc, ldc, tail, acc);
    if (i < M)
      micro_tail<NV, MR - 1>(static_cast<int>(M - i), K, a + i * a_rs, a_rs, a_cs, b, ldb, c + i * ldc, ldc, tail, acc);
  }

  static void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                   int64_t ldb, float* c, int64_t ldc, bool acc) {
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
      const int64_t nn = std::min<int64_t>(64, N - n0);
      const int nv = static_cast<int>(ceil_div(nn, 16));
      const __mmask16 tail = tail_mask(nn - 16 * (nv - 1));
      switch (nv) {
        case 4: column_block<4>(M, K, a, a_rs, a_cs, b + n0, ldb, c + n0, ldc, tail, acc); break;
        case 3: column_block<3>(M, K, a, a_rs, a_cs, b + n0, ldb, c + n0, ldc, tail, acc); break;
        case 2: column_block<2>(M, K, a, a_rs, a_cs, b + n0, ldb, c + n0, ldc, tail, acc); break;
        default: column_block<1>(M, K, a, a_rs, a_cs, b + n0, ldb, c + n0, ldc, tail, acc); break;
      }
    }
  }

  static __m512 lim_mask(__m512 x, int64_t j, int64_t lim) {
    if (j + 16 <= lim) return x;
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j)),
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __mmask16 keep = _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(static_cast<int>(lim)));
    return _mm512_mask_mov_ps(_mm512_set1_ps(-kInf), keep, x);
  }

  static float mask_max(float* s, const float* bias, int64_t w, int64_t lim) {
    __m512 mx0 = _mm512_set1_ps(-kInf), mx1 = mx0;
    if (!bias) {  // unmasked keys: only the causal / ragged end needs writing
      int64_t j = 0;
      for (; j + 32 <= std::min(w, lim); j += 32) {
        mx0 = _mm512_max_ps(mx0, _mm512_loadu_ps(s + j));
        mx1 = _mm512_max_ps(mx1, _mm512_loadu_ps(s + j + 16));
      }
      for (; j < w; j += 16) {
        __m512 x = _mm512_loadu_ps(s + j);
        if (j + 16 > lim) {
          x = lim_mask(x, j, lim);
          _mm512_storeu_ps(s + j, x);
        }
        mx0 = _mm512_max_ps(mx0, x);
      }
    } else {
      for (int64_t j = 0; j < w; j += 16) {
        const __m512 x = lim_mask(_mm512_add_ps(_mm512_loadu_ps(s + j), _mm512_loadu_ps(bias + j)), j, lim);
        _mm512_storeu_ps(s + j, x);
        mx0 = _mm512_max_ps(mx0, x);
      }
    }
    return _mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1));
  }

  static float exp_sum(float* s, int64_t w, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < w; j += 16) {
      const __m512 p = exp2v(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv));
      _mm512_storeu_ps(s + j, p);
      acc = _mm512_add_ps(acc, p);
    }
    return _mm512_reduce_add_ps(acc);
  }

  static void probs(float* s, const float* bias, int64_t w, int64_t lim, float lse2) {
    const __m512 lv = _mm512_set1_ps(lse2);
    for (int64_t j = 0; j < w; j += 16) {
      __m512 x = _mm512_loadu_ps(s + j);
      if (bias) x = _mm512_add_ps(x, _mm512_loadu_ps(bias + j));
      _mm512_storeu_ps(s + j, exp2v(_mm512_sub_ps(lim_mask(x, j, lim), lv)));
    }
  }

  static void dsoftmax(const float* p, float* dp, int64_t w, float D, float scale) {
    const __m512 dv = _mm512_set1_ps(D), sv = _mm512_set1_ps(scale);
    for (int64_t j = 0; j < w; j += 16) {
      const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(p + j), _mm512_sub_ps(_mm512_loadu_ps(dp + j), dv));
      _mm512_storeu_ps(dp + j, _mm512_mul_ps(t, sv));
    }
  }

  static void scale_row(float* x, int64_t n, float a) {
    const __m512 av = _mm512_set1_ps(a);
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail_mask(n - j);
      _mm512_mask_storeu_ps(x + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), av));
    }
  }
};

// ---- bf16 tile products (AVX512_BF16): C[M, N] (+)= A[M, K] B[K, N] with bf16 inputs, fp32 sums ----
// vdpbf16ps multiplies pairs: lane n of C gets A(i, 2kk) B(2kk, n) + A(i, 2kk+1) B(2kk+1, n). So A
// is bf16 row-major with k contiguous (one 32-bit pair broadcast per row and kk) and B is
// "pair-interleaved": [K/2][N][2], element (k, n) at b[((k/2) ldb + n) 2 + k%2], one 512-bit load
// per 16 columns. Target attributes keep the rest of the build free of AVX512_BF16 instructions;
// flash_attention_has_bf16() gates every call at run time.
#define AB_BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
using bf16_t = uint16_t;

// n bf16 values held in a Tensor (so the harness's memory accounting sees them like kpacked).
struct Bf16Buffer {
  Tensor t;
  explicit Bf16Buffer(int64_t n) : t(Tensor::empty({std::max<int64_t>(ceil_div(n, 2), 1)})) {}
  bf16_t* data() { return reinterpret_cast<bf16_t*>(t.data()); }
};

// Round to nearest even, like vcvtneps2bf16 (a NaN stays a NaN).
bf16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<bf16_t>((u >> 16) | 0x40u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<bf16_t>(u >> 16);
}

// A-layout: dst[i * lda + k] = bf16(mult * src[i * rs + k * cs]) for i < M, k < K; 0 for K <= k < lda.
void pack_a_bf16(const float* src, int64_t rs, int64_t cs, int64_t M, int64_t K, float mult, bf16_t* dst,
                 int64_t lda) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t k = 0; k < K; ++k) dst[i * lda + k] = to_bf16(mult * src[i * rs + k * cs]);
    std::fill(dst + i * lda + K, dst + (i + 1) * lda, bf16_t{0});
  }
}

// B-layout: element (k, n) = src[k * rs + n * cs] for k < K, n < N into [K2][ldb][2]; zero for
// K <= k < 2 K2 and N <= n < ldb.
void pack_b_bf16(const float* src, int64_t rs, int64_t cs, int64_t K, int64_t N, int64_t K2, bf16_t* dst,
                 int64_t ldb) {
  std::fill(dst, dst + K2 * ldb * 2, bf16_t{0});
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) dst[((k / 2) * ldb + n) * 2 + (k & 1)] = to_bf16(src[k * rs + n * cs]);
}

struct Bf16 {
  template <int MR, int NV>
  AB_BF16_FN static void micro(int64_t K2, const bf16_t* a, int64_t lda, const bf16_t* b, int64_t ldb, float* c,
                               int64_t ldc, __mmask16 tail, bool acc) {
    __m512 cr[MR][NV];
    Avx512::load_tile<MR, NV>(cr, c, ldc, tail, acc);
    for (int64_t kk = 0; kk < K2; ++kk) {
      const bf16_t* bk = b + kk * ldb * 2;
      __m512bh bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        bv[v] = (__m512bh)(v == NV - 1 ? _mm512_maskz_loadu_epi32(tail, bk + 32 * v) : _mm512_loadu_si512(bk + 32 * v));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        int32_t pair;
        std::memcpy(&pair, a + i * lda + 2 * kk, 4);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) cr[i][v] = _mm512_dpbf16_ps(cr[i][v], av, bv[v]);
      }
    }
    Avx512::store_tile<MR, NV>(cr, c, ldc, tail);
  }

  template <int NV, int R>
  AB_BF16_FN static void micro_tail(int r, int64_t K2, const bf16_t* a, int64_t lda, const bf16_t* b, int64_t ldb,
                                    float* c, int64_t ldc, __mmask16 tail, bool acc) {
    if constexpr (R > 0) {
      if (r == R)
        micro<R, NV>(K2, a, lda, b, ldb, c, ldc, tail, acc);
      else
        micro_tail<NV, R - 1>(r, K2, a, lda, b, ldb, c, ldc, tail, acc);
    }
  }

  template <int NV>
  AB_BF16_FN static void column_block(int64_t M, int64_t K2, const bf16_t* a, int64_t lda, const bf16_t* b,
                                      int64_t ldb, float* c, int64_t ldc, __mmask16 tail, bool acc) {
    constexpr int MR = Avx512::rows_for(NV);
    int64_t i = 0;
    for (; i + MR <= M; i += MR) micro<MR, NV>(K2, a + i * lda, lda, b, ldb, c + i * ldc, ldc, tail, acc);
    if (i < M)
      micro_tail<NV, MR - 1>(static_cast<int>(M - i), K2, a + i * lda, lda, b, ldb, c + i * ldc, ldc, tail, acc);
  }

  // C[M, N] (+)= A[M, 2 K2] B[2 K2, N]: a A-layout (row stride lda), b B-layout (ldb columns).
  AB_BF16_FN static void gemm(int64_t M, int64_t N, int64_t K2, const bf16_t* a, int64_t lda, const bf16_t* b,
                              int64_t ldb, float* c, int64_t ldc, bool acc) {
    for (int64_t n0 = 0; n0 < N; n0 += 64) {
      const int64_t nn = std::min<int64_t>(64, N - n0);
      const int nv = static_cast<int>(ceil_div(nn, 16));
      const __mmask16 tail = Avx512::tail_mask(nn - 16 * (nv - 1));
      switch (nv) {
        case 4: column_block<4>(M, K2, a, lda, b + 2 * n0, ldb, c + n0, ldc, tail, acc); break;
        case 3: column_block<3>(M, K2, a, lda, b + 2 * n0, ldb, c + n0, ldc, tail, acc); break;
        case 2: column_block<2>(M, K2, a, lda, b + 2 * n0, ldb, c + n0, ldc, tail, acc); break;
        default: column_block<1>(M, K2, a, lda, b + 2 * n0, ldb, c + n0, ldc, tail, acc); break;
      }
    }
  }

  // Tile rows to A-layout: dst[i * lda + j] = bf16(src[i * lds + j]), i < M, j < w (w a multiple of 16).
  AB_BF16_FN static void rows_a(const float* src, int64_t lds, int64_t M, int64_t w, bf16_t* dst, int64_t lda) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < w; j += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i * lda + j),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i * lds + j)));
  }

  // Tile rows as the K dimension of a B operand: rows 2kk, 2kk+1 of src[M, w] interleaved into
  // dst[kk][w][2] for kk < ceil(M/2) (a missing last row is 0); w a multiple of 16.
  AB_BF16_FN static void rows_b(const float* src, int64_t lds, int64_t M, int64_t w, bf16_t* dst) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int64_t r = 0; r < M; r += 2) {
      const float* r0 = src + r * lds;
      const float* r1 = r + 1 < M ? r0 + lds : nullptr;
      bf16_t* out = dst + (r / 2) * w * 2;
      for (int64_t j = 0; j < w; j += 16) {
        const __m256i lo = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + j));
        const __m256i hi = r1 ? (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + j)) : _mm256_setzero_si256();
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        _mm512_storeu_si512(out + 2 * j, _mm512_permutexvar_epi16(idx, both));
      }
    }
  }
};
#endif

// Bias of keys [k0, k0 + n) in base-2 units: (mask + head bias) * log2 e (then -inf up to w, a
// multiple of 16). Returns the bias to add, nullptr when it is 0 for every key (no mask and no head
// bias, or nothing masked here), and sets `all_masked` when no key of the block is visible.
const float* key_bias(const float* mask_row, const float* head_row, int64_t k0, int64_t n, int64_t w, float* bias,
                      bool& all_masked) {
  all_masked = n <= 0;
  if (!mask_row && !head_row) return nullptr;
  bool any_visible = false, any_bias = false;
  for (int64_t j = 0; j < w; ++j) {
    bias[j] = j >= n ? -kInf : ((mask_row ? mask_row[k0 + j] : 0.f) + (head_row ? head_row[k0 + j] : 0.f)) * kLog2e;
    any_visible = any_visible || (j < n && bias[j] != -kInf);
    any_bias = any_bias || (j < n && bias[j] != 0.f);
  }
  all_masked = !any_visible;
  return any_bias ? bias : nullptr;
}

struct Problem {
  int64_t B, H, Nq, Nk, d;
  const float* mask;  // [mask_batch, Nk] or null
  int64_t mask_batch;
  float scale;
  bool causal;
  const float* head_bias = nullptr;  // [B H, Nk] or null
  const float* mask_row(int64_t bh) const {
    return mask ? mask + (mask_batch == 1 ? 0 : bh / H) * Nk : nullptr;
  }
  const float* head_row(int64_t bh) const { return head_bias ? head_bias + bh * Nk : nullptr; }
};

// One key block of the online softmax, rows [0, mq) of the query block at q0: S[mq, w] holds the
// base-2 logits of keys [k0, k0 + ncols); they become 2^(S - m_new), and the running max m, sum l
// and output accumulator oacc[mq, d] are rescaled to the new max.
template <class KR>
void online_softmax_block(const Problem& pb, float* S, int64_t ldS, const float* kbias, int64_t w, int64_t mq,
                          int64_t q0, int64_t k0, int64_t ncols, float* m, float* l, float* oacc) {
  const int64_t d = pb.d;
  for (int64_t i = 0; i < mq; ++i) {
    const int64_t lim = pb.causal ? std::clamp<int64_t>(q0 + i - k0 + 1, 0, ncols) : ncols;
    float* srow = S + i * ldS;
    const float mnew = std::max(m[i], KR::mask_max(srow, kbias, w, lim));
    const float msafe = mnew == -kInf ? 0.f : mnew;
    const float alpha = std::exp2(m[i] - msafe);
    const float sum = KR::exp_sum(srow, w, msafe);
    l[i] = l[i] * alpha + sum;
    m[i] = mnew;
    if (alpha != 1.f) KR::scale_row(oacc + i * d, d, alpha);
  }
}

// The query block's output O = oacc / l and log-sum-exp (natural units; +inf for a row that saw no key).
void finish_rows(const Problem& pb, const float* oacc, const float* m, const float* l, int64_t mq, float* oh,
                 float* lh) {
  const int64_t d = pb.d;
  for (int64_t i = 0; i < mq; ++i) {
    const bool seen = l[i] > 0.f;
    const float inv = seen ? 1.f / l[i] : 0.f;
    for (int64_t j = 0; j < d; ++j) oh[i * d + j] = oacc[i * d + j] * inv;
    lh[i] = seen ? (m[i] + std::log2(l[i])) * kLn2 : kInf;
  }
}

template <class KR>
void forward_impl(const Problem& pb, const float* q, const float* k, const float* v, float* o, float* lse,
                  int64_t Br, int64_t Bc) {
  const int64_t d = pb.d, Nq = pb.Nq, Nk = pb.Nk;
  Br = std::min(Br, std::max<int64_t>(Nq, 1));
  Bc = std::min(Bc, std::max<int64_t>(Nk, 1));
  const int64_t nqb = ceil_div(Nq, Br), nkb = ceil_div(Nk, Bc);
  const int64_t ldS = round_up(Bc, kPanel);
  const float c = pb.scale * kLog2e;
  // k of every (head, key block) packed once into panels: [B H, nkb, ldS / 64, d, 64].
  Tensor kpacked = Tensor::empty({std::max<int64_t>(pb.B * pb.H * nkb * ldS * d, 1)});
  float* kpack = kpacked.data();
  ab::parallel_for(pb.B * pb.H * nkb, 1, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t item = r_begin; item < r_end; ++item) {
      const int64_t bh = item / nkb, k0 = (item % nkb) * Bc;
      pack_panels(k + (bh * Nk + k0) * d, std::min(Bc, Nk - k0), d, kpack + item * ldS * d);
    }
  });
  auto layout = [&](Carver& cv, float** qs, float** oacc, float** S, float** bias, float** m, float** l) {
    *qs = cv.take(Br * d);
    *oacc = cv.take(Br * d);
    *S = cv.take(Br * ldS);
    *bias = cv.take(ldS);
    *m = cv.take(Br);
    *l = cv.take(Br);
  };
  int64_t scratch_floats;
  {
    Carver cv{nullptr};
    float* t[6];
    layout(cv, &t[0], &t[1], &t[2], &t[3], &t[4], &t[5]);
    scratch_floats = cv.used;
  }
  ab::parallel_for(pb.B * pb.H * nqb, 1, [&](int64_t r_begin, int64_t r_end) {
    tls_scratch.reserve(scratch_floats);
    Carver cv{tls_scratch.data()};
    float *qs, *oacc, *S, *bias, *m, *l;
    layout(cv, &qs, &oacc, &S, &bias, &m, &l);
    for (int64_t item = r_begin; item < r_end; ++item) {
      const int64_t bh = item / nqb, q0 = (item % nqb) * Br, mq = std::min(Br, Nq - q0);
      const float* qh = q + (bh * Nq + q0) * d;
      const float* vh = v + bh * Nk * d;
      const float* mrow = pb.mask_row(bh);
      for (int64_t i = 0; i < mq * d; ++i) qs[i] = qh[i] * c;  // [mq, d], base-2 logits scale
      std::fill(oacc, oacc + mq * d, 0.f);
      std::fill(m, m + mq, -kInf);
      std::fill(l, l + mq, 0.f);
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * Bc;
        if (pb.causal && k0 > q0 + mq - 1) break;
        const int64_t nk = std::min(Bc, Nk - k0);
        const int64_t ncols = pb.causal ? std::min(nk, q0 + mq - k0) : nk;  // keys any row of the block sees
        const int64_t w = round_up(ncols, kLane);
        bool all_masked;
        const float* kbias = key_bias(mrow, pb.head_row(bh), k0, ncols, w, bias, all_masked);
        if (all_masked) continue;
        const float* kp = kpack + (bh * nkb + kb) * ldS * d;  // [ceil(nk/64), d, 64]
        for (int64_t p = 0; p * kPanel < ncols; ++p)  // S[mq, ncols] = qs kp^T
          KR::gemm(mq, kPanel, d, qs, d, 1, kp + p * kPanel * d, kPanel, S + p * kPanel, ldS, false);
        online_softmax_block<KR>(pb, S, ldS, kbias, w, mq, q0, k0, ncols, m, l, oacc);
        // oacc[mq, d] += P[mq, ncols] v[k0 : k0 + ncols, d]
        KR::gemm(mq, d, ncols, S, ldS, 1, vh + k0 * d, d, oacc, d, true);
      }
      finish_rows(pb, oacc, m, l, mq, o + (bh * Nq + q0) * d, lse + bh * Nq + q0);
    }
  });
}

#ifdef __AVX512F__
// bf16 forward: as forward_impl, with q (scaled), k^T, P and v rounded to bf16 for the two tile
// products. Packed once per call: kT [BH][d2][ldk][2] (B of S = qs k^T) and vB [BH][Nk2][d][2]
// (B of O += P v). Bc is even so that every key block starts on a pair.
struct Bf16Fwd {
  const Problem& pb;
  const float *q, *v;
  float *o, *lse;
  int64_t Br, Bc, nqb, ldS, d2, ldk, Nk2;
  const bf16_t *kT, *vB;

  // One (head, query block) item; scratch from the thread's buffer.
  AB_BF16_FN void item(int64_t it, bf16_t* qs, float* oacc, float* S, bf16_t* Pa, float* bias, float* m,
                       float* l) const {
    const int64_t d = pb.d, Nq = pb.Nq, Nk = pb.Nk, nkb = ceil_div(Nk, Bc);
    const int64_t bh = it / nqb, q0 = (it % nqb) * Br, mq = std::min(Br, Nq - q0);
    const float* mrow = pb.mask_row(bh);
    pack_a_bf16(q + (bh * Nq + q0) * d, d, 1, mq, d, pb.scale * kLog2e, qs, 2 * d2);  // [mq, 2 d2]
    std::fill(oacc, oacc + mq * d, 0.f);
    std::fill(m, m + mq, -kInf);
    std::fill(l, l + mq, 0.f);
    const bf16_t* kTh = kT + bh * d2 * ldk * 2;
    const bf16_t* vBh = vB + bh * Nk2 * d * 2;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t k0 = kb * Bc;
      if (pb.causal && k0 > q0 + mq - 1) break;
      const int64_t nk = std::min(Bc, Nk - k0);
      const int64_t ncols = pb.causal ? std::min(nk, q0 + mq - k0) : nk;
      const int64_t w = round_up(ncols, kLane);
      bool all_masked;
      const float* kbias = key_bias(mrow, pb.head_row(bh), k0, ncols, w, bias, all_masked);
      if (all_masked) continue;
      Bf16::gemm(mq, w, d2, qs, 2 * d2, kTh + 2 * k0, ldk, S, ldS, false);  // S[mq, w] = qs k^T
      online_softmax_block<Avx512>(pb, S, ldS, kbias, w, mq, q0, k0, ncols, m, l, oacc);
      Bf16::rows_a(S, ldS, mq, w, Pa, ldS);
      // oacc[mq, d] += P[mq, ncols] v[k0 : k0 + ncols, d] (P is 0 beyond ncols, so an odd last pair is exact)
      Bf16::gemm(mq, d, ceil_div(ncols, 2), Pa, ldS, vBh + k0 * d, d, oacc, d, true);
    }
    finish_rows(pb, oacc, m, l, mq, o + (bh * Nq + q0) * d, lse + bh * Nq + q0);
  }
};

void forward_bf16(const Problem& pb, const float* q, const float* k, const float* v, float* o, float* lse, int64_t Br,
                  int64_t Bc) {
  const int64_t d = pb.d, Nq = pb.Nq, Nk = pb.Nk, BH = pb.B * pb.H;
  Br = std::min(Br, std::max<int64_t>(Nq, 1));
  Bc = round_up(std::min(Bc, std::max<int64_t>(Nk, 1)), 2);
  const int64_t ldS = round_up(Bc, kPanel), d2 = ceil_div(d, 2), Nk2 = ceil_div(Nk, 2);
  const int64_t ldk = round_up(Nk + ldS, kLane);  // S reads up to w <= ldS columns from any key block start
  Bf16Buffer kT(BH * d2 * ldk * 2), vB(BH * Nk2 * d * 2);
  ab::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; ++bh) {
      pack_b_bf16(k + bh * Nk * d, 1, d, d, Nk, d2, kT.data() + bh * d2 * ldk * 2, ldk);  // (c, j) = k[j, c]
      pack_b_bf16(v + bh * Nk * d, d, 1, Nk, d, Nk2, vB.data() + bh * Nk2 * d * 2, d);
    }
  });
  const Bf16Fwd f{pb, q, v, o, lse, Br, Bc, ceil_div(Nq, Br), ldS, d2, ldk, Nk2, kT.data(), vB.data()};
  auto layout = [&](Carver& cv, float** qs, float** oacc, float** S, float** Pa, float** bias, float** m, float** l) {
    *qs = cv.take(Br * d2);  // bf16 [Br, 2 d2]
    *oacc = cv.take(Br * d);
    *S = cv.take(Br * ldS);
    *Pa = cv.take(ceil_div(Br * ldS, 2));  // bf16 [Br, ldS]
    *bias = cv.take(ldS);
    *m = cv.take(Br);
    *l = cv.take(Br);
  };
  int64_t scratch_floats;
  {
    Carver cv{nullptr};
    float* t[7];
    layout(cv, &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6]);
    scratch_floats = cv.used;
  }
  ab::parallel_for(BH * f.nqb, 1, [&](int64_t r_begin, int64_t r_end) {
    tls_scratch.reserve(scratch_floats);
    Carver cv{tls_scratch.data()};
    float *qs, *oacc, *S, *Pa, *bias, *m, *l;
    layout(cv, &qs, &oacc, &S, &Pa, &bias, &m, &l);
    for (int64_t it = r_begin; it < r_end; ++it)
      f.item(it, reinterpret_cast<bf16_t*>(qs), oacc, S, reinterpret_cast<bf16_t*>(Pa), bias, m, l);
  });
}

// bf16 backward: backward_impl's five tile products with bf16 inputs. dV and dK are accumulated
// transposed (dV^T[d, keys] += dO^T P, dK^T += q^T dS) so that every A operand is a contiguous
// bf16 row and every B operand a pair-interleaved tile. Packed once per call, per head:
// qsA, doA [Nq][2 d2] (A of S and dP), kT, vT [d2][ldk][2] (B of S and dP), kB [Nk2][d][2]
// (B of dQ), doT, qT [d][ldq] (A of dV^T and dK^T). Br and Bc are even (pairs start on a row).
struct Bf16Bwd {
  const Problem& pb;
  const float *Dp, *L2;
  float *dq_acc, *dk, *dv;
  int64_t Br, Bc, G, ldS, d2, ldk, Nk2, ldq;
  const bf16_t *qsA, *doA, *kT, *vT, *kB, *doT, *qT;

  struct Tiles {
    float *S, *dP, *dkT, *dvT, *bias;
    bf16_t *Xa, *Xb;  // a tile as A rows [Br][ldS] and as B pairs [Br/2][ldS][2]
  };

  AB_BF16_FN void item(int64_t it, const Tiles& t) const {
    const int64_t d = pb.d, Nq = pb.Nq, Nk = pb.Nk, BH = pb.B * pb.H, nkb = ceil_div(Nk, Bc);
    const int64_t bh = it / G, g = it % G, dp2 = 2 * d2;
    const float* Dh = Dp + bh * Nq;
    const float* Lh = L2 + bh * Nq;
    float* dqh = dq_acc + (g * BH + bh) * Nq * d;
    const float* mrow = pb.mask_row(bh);
    const bf16_t* qsAh = qsA + bh * Nq * dp2;
    const bf16_t* doAh = doA + bh * Nq * dp2;
    const bf16_t* kTh = kT + bh * d2 * ldk * 2;
    const bf16_t* vTh = vT + bh * d2 * ldk * 2;
    const bf16_t* kBh = kB + bh * Nk2 * d * 2;
    const bf16_t* doTh = doT + bh * d * ldq;
    const bf16_t* qTh = qT + bh * d * ldq;
    for (int64_t kb = g; kb < nkb; kb += G) {
      const int64_t k0 = kb * Bc, nk = std::min(Bc, Nk - k0);
      float* dkh = dk + (bh * Nk + k0) * d;
      float* dvh = dv + (bh * Nk + k0) * d;
      bool all_masked;
      const float* kbias = key_bias(mrow, pb.head_row(bh), k0, nk, round_up(nk, kLane), t.bias, all_masked);
      if (all_masked || (pb.causal && k0 > Nq - 1)) {
        std::fill(dkh, dkh + nk * d, 0.f);
        std::fill(dvh, dvh + nk * d, 0.f);
        continue;
      }
      std::fill(t.dkT, t.dkT + d * ldS, 0.f);
      std::fill(t.dvT, t.dvT + d * ldS, 0.f);
      for (int64_t q0 = pb.causal ? k0 / Br * Br : 0; q0 < Nq; q0 += Br) {
        const int64_t mq = std::min(Br, Nq - q0), mq2 = ceil_div(mq, 2);
        const int64_t ncols = pb.causal ? std::min(nk, q0 + mq - k0) : nk;
        const int64_t w = round_up(ncols, kLane), nc2 = ceil_div(ncols, 2);
        Bf16::gemm(mq, w, d2, qsAh + q0 * dp2, dp2, kTh + 2 * k0, ldk, t.S, ldS, false);  // S = qs k^T
        for (int64_t i = 0; i < mq; ++i) {
          const int64_t lim = pb.causal ? std::clamp<int64_t>(q0 + i - k0 + 1, 0, ncols) : ncols;
          Avx512::probs(t.S + i * ldS, kbias, w, lim, Lh[q0 + i]);
        }
        Bf16::rows_b(t.S, ldS, mq, w, t.Xb);
        Bf16::gemm(d, ncols, mq2, doTh + q0, ldq, t.Xb, w, t.dvT, ldS, true);  // dV^T[d, ncols] += dO^T P
        Bf16::gemm(mq, w, d2, doAh + q0 * dp2, dp2, vTh + 2 * k0, ldk, t.dP, ldS, false);  // dP = dO v^T
        for (int64_t i = 0; i < mq; ++i) Avx512::dsoftmax(t.S + i * ldS, t.dP + i * ldS, w, Dh[q0 + i], pb.scale);
        Bf16::rows_a(t.dP, ldS, mq, w, t.Xa, ldS);
        Bf16::gemm(mq, d, nc2, t.Xa, ldS, kBh + k0 * d, d, dqh + q0 * d, d, true);  // dQ[mq, d] += dS k
        Bf16::rows_b(t.dP, ldS, mq, w, t.Xb);
        Bf16::gemm(d, ncols, mq2, qTh + q0, ldq, t.Xb, w, t.dkT, ldS, true);  // dK^T[d, ncols] += q^T dS
      }
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t c = 0; c < d; ++c) {
          dkh[j * d + c] = t.dkT[c * ldS + j];
          dvh[j * d + c] = t.dvT[c * ldS + j];
        }
    }
  }
};

void backward_bf16(const Problem& pb, const float* q, const float* k, const float* v, const float* Dp, const float* L2,
                   const float* dout, float* dq_acc, float* dk, float* dv, int64_t Br, int64_t Bc, int64_t G) {
  const int64_t d = pb.d, Nq = pb.Nq, Nk = pb.Nk, BH = pb.B * pb.H;
  const int64_t ldS = round_up(Bc, kPanel), d2 = ceil_div(d, 2), Nk2 = ceil_div(Nk, 2), dp2 = 2 * d2;
  const int64_t ldk = round_up(Nk + ldS, kLane), ldq = round_up(Nq, 2);
  Bf16Buffer qsA(BH * Nq * dp2), doA(BH * Nq * dp2), kT(BH * d2 * ldk * 2), vT(BH * d2 * ldk * 2),
      kB(BH * Nk2 * d * 2), doT(BH * d * ldq), qT(BH * d * ldq);
  const float c = pb.scale * kLog2e;
  ab::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bh = b0; bh < b1; ++bh) {
      const float *qh = q + bh * Nq * d, *kh = k + bh * Nk * d, *vh = v + bh * Nk * d, *doh = dout + bh * Nq * d;
      pack_a_bf16(qh, d, 1, Nq, d, c, qsA.data() + bh * Nq * dp2, dp2);
      pack_a_bf16(doh, d, 1, Nq, d, 1.f, doA.data() + bh * Nq * dp2, dp2);
      pack_b_bf16(kh, 1, d, d, Nk, d2, kT.data() + bh * d2 * ldk * 2, ldk);
      pack_b_bf16(vh, 1, d, d, Nk, d2, vT.data() + bh * d2 * ldk * 2, ldk);
      pack_b_bf16(kh, d, 1, Nk, d, Nk2, kB.data() + bh * Nk2 * d * 2, d);
      pack_a_bf16(doh, 1, d, d, Nq, 1.f, doT.data() + bh * d * ldq, ldq);
      pack_a_bf16(qh, 1, d, d, Nq, 1.f, qT.data() + bh * d * ldq, ldq);
    }
  });
  const Bf16Bwd b{pb,  Dp,  L2,     dq_acc,     dk,        dv,        Br,        Bc,       G,
                  ldS, d2,  ldk,    Nk2,        ldq,       qsA.data(), doA.data(), kT.data(), vT.data(),
                  kB.data(), doT.data(), qT.data()};
  auto layout = [&](Carver& cv, Bf16Bwd::Tiles& t) {
    t.S = cv.take(Br * ldS);
    t.dP = cv.take(Br * ldS);
    t.dkT = cv.take(d * ldS);
    t.dvT = cv.take(d * ldS);
    t.bias = cv.take(ldS);
    t.Xa = reinterpret_cast<bf16_t*>(cv.take(ceil_div(Br * ldS, 2)));
    t.Xb = reinterpret_cast<bf16_t*>(cv.take(ceil_div(Br + 1, 2) * ldS));
  };
  int64_t scratch_floats;
  {
    Carver cv{nullptr};
    Bf16Bwd::Tiles t;
    layout(cv, t);
    scratch_floats = cv.used;
  }
  ab::parallel_for(BH * G, 1, [&](int64_t r_begin, int64_t r_end) {
    tls_scratch.reserve(scratch_floats);
    Carver cv{tls_scratch.data()};
    Bf16Bwd::Tiles t;
    layout(cv, t);
    for (int64_t it = r_begin; it < r_end; ++it) b.item(it, t);
  });
}
#endif

template <class KR>
void backward_impl(const Problem& pb, const float* q, const float* k, const float* v, const float* o,
                   const float* lse, const float* dout, float* dq, float* dk, float* dv, float* dkb, int64_t Br,
                   int64_t Bc, bool bf16 = false) {
  const int64_t d = pb.d, Nq = pb.Nq, Nk = pb.Nk, BH = pb.B * pb.H;
  Br = std::min(Br, std::max<int64_t>(Nq, 1));
  Bc = std::min(Bc, std::max<int64_t>(Nk, 1));
  if (bf16) {  // the bf16 tiles interleave rows in pairs
    Br = round_up(Br, 2);
    Bc = round_up(Bc, 2);
  }
  const int64_t nkb = ceil_div(Nk, Bc);
  const int64_t ldS = round_up(Bc, kPanel);
  const float c = pb.scale * kLog2e;

  // Per query row: D = rowsum(dO o O) and the log-sum-exp in base-2 units.
  Tensor rowD = Tensor::empty({std::max<int64_t>(BH * Nq, 1)}), lse2 = Tensor::empty({std::max<int64_t>(BH * Nq, 1)});
  float* Dp = rowD.data();
  float* L2 = lse2.data();
  ab::parallel_for(BH * Nq, 256, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t i = r_begin; i < r_end; ++i) {
      float acc[kLane] = {};
      const float* a = dout + i * d;
      const float* b = o + i * d;
      int64_t j = 0;
      for (; j + kLane <= d; j += kLane)
        for (int64_t t = 0; t < kLane; ++t) acc[t] += a[j + t] * b[j + t];
      for (; j < d; ++j) acc[0] += a[j] * b[j];
      float s = 0;
      for (float x : acc) s += x;
      Dp[i] = s;
      L2[i] = lse[i] * kLog2e;
    }
  });

  // Work items (head, group of key blocks g, g + G, ...). One group per head when there are
  // enough heads; else several groups, each with its own dQ partial, summed in a fixed order.
  const int64_t T = std::max<int64_t>(ab::parallel_threads(), 1);
  const int64_t G = BH >= 2 * T ? 1 : std::max<int64_t>(1, std::min(nkb, ceil_div(2 * T, std::max<int64_t>(BH, 1))));
  Tensor partial;
  float* dq_acc = dq;
  if (G > 1) {
    partial = Tensor::zeros({G, BH * Nq * d});
    dq_acc = partial.data();
  } else {
    std::fill(dq, dq + BH * Nq * d, 0.f);
  }

#ifdef __AVX512F__
  if (bf16) backward_bf16(pb, q, k, v, Dp, L2, dout, dq_acc, dk, dv, Br, Bc, G);
#endif
  auto layout = [&](Carver& cv, float** qs, float** S, float** dP, float** kp, float** vp, float** dka, float** dva,
                    float** bias) {
    *qs = cv.take(Br * d);
    *S = cv.take(Br * ldS);
    *dP = cv.take(Br * ldS);
    *kp = cv.take(ldS * d);
    *vp = cv.take(ldS * d);
    *dka = cv.take(Bc * d);
    *dva = cv.take(Bc * d);
    *bias = cv.take(ldS);
  };
  int64_t scratch_floats;
  {
    Carver cv{nullptr};
    float* t[8];
    layout(cv, &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7]);
    scratch_floats = cv.used;
  }
  if (!bf16) ab::parallel_for(BH * G, 1, [&](int64_t r_begin, int64_t r_end) {
    tls_scratch.reserve(scratch_floats);
    Carver cv{tls_scratch.data()};
    float *qs, *S, *dP, *kp, *vp, *dka, *dva, *bias;
    layout(cv, &qs, &S, &dP, &kp, &vp, &dka, &dva, &bias);
    for (int64_t item = r_begin; item < r_end; ++item) {
      const int64_t bh = item / G, g = item % G;
      const float* qh = q + bh * Nq * d;
      const float* kh = k + bh * Nk * d;
      const float* vh = v + bh * Nk * d;
      const float* doh = dout + bh * Nq * d;
      const float* Dh = Dp + bh * Nq;
      const float* Lh = L2 + bh * Nq;
      float* dqh = dq_acc + (g * BH + bh) * Nq * d;
      const float* mrow = pb.mask_row(bh);
      for (int64_t kb = g; kb < nkb; kb += G) {
        const int64_t k0 = kb * Bc, nk = std::min(Bc, Nk - k0);
        float* dkh = dk + (bh * Nk + k0) * d;
        float* dvh = dv + (bh * Nk + k0) * d;
        float* dkbh = dkb ? dkb + bh * Nk + k0 : nullptr;  // [nk]: column sums of dS / scale
        if (dkbh) std::fill(dkbh, dkbh + nk, 0.f);
        bool all_masked;
        const float* kbias = key_bias(mrow, pb.head_row(bh), k0, nk, round_up(nk, kLane), bias, all_masked);
        if (all_masked || (pb.causal && k0 > Nq - 1)) {
          std::fill(dkh, dkh + nk * d, 0.f);
          std::fill(dvh, dvh + nk * d, 0.f);
          continue;
        }
        pack_panels(kh + k0 * d, nk, d, kp);  // [ceil(nk/64), d, 64]
        pack_panels(vh + k0 * d, nk, d, vp);
        std::fill(dka, dka + nk * d, 0.f);
        std::fill(dva, dva + nk * d, 0.f);
        for (int64_t q0 = pb.causal ? k0 / Br * Br : 0; q0 < Nq; q0 += Br) {
          const int64_t mq = std::min(Br, Nq - q0);
          const int64_t ncols = pb.causal ? std::min(nk, q0 + mq - k0) : nk;
          const int64_t w = round_up(ncols, kLane);
          const float* qb = qh + q0 * d;
          const float* dob = doh + q0 * d;
          for (int64_t i = 0; i < mq * d; ++i) qs[i] = qb[i] * c;
          for (int64_t p = 0; p * kPanel < ncols; ++p)  // S[mq, ncols] = qs kp^T
            KR::gemm(mq, kPanel, d, qs, d, 1, kp + p * kPanel * d, kPanel, S + p * kPanel, ldS, false);
          for (int64_t i = 0; i < mq; ++i) {  // P = 2^(S + bias - lse2)
            const int64_t lim = pb.causal ? std::clamp<int64_t>(q0 + i - k0 + 1, 0, ncols) : ncols;
            KR::probs(S + i * ldS, kbias, w, lim, Lh[q0 + i]);
          }
          // dV[ncols, d] += P^T[ncols, mq] dO[mq, d]
          KR::gemm(ncols, d, mq, S, 1, ldS, dob, d, dva, d, true);
          for (int64_t p = 0; p * kPanel < ncols; ++p)  // dP[mq, ncols] = dO vp^T
            KR::gemm(mq, kPanel, d, dob, d, 1, vp + p * kPanel * d, kPanel, dP + p * kPanel, ldS, false);
          for (int64_t i = 0; i < mq; ++i)  // dS = P o (dP - D) * scale, into dP
            KR::dsoftmax(S + i * ldS, dP + i * ldS, w, Dh[q0 + i], pb.scale);
          if (dkbh) {  // the bias enters unscaled: d kb_j = sum_i dS_ij / scale
            const float inv = 1.f / pb.scale;
            for (int64_t i = 0; i < mq; ++i) {
              const float* dsrow = dP + i * ldS;
              for (int64_t j = 0; j < ncols; ++j) dkbh[j] += dsrow[j] * inv;
            }
          }
          // dQ[mq, d] += dS[mq, ncols] k[k0 : k0 + ncols, d]
          KR::gemm(mq, d, ncols, dP, ldS, 1, kh + k0 * d, d, dqh + q0 * d, d, true);
          // dK[ncols, d] += dS^T[ncols, mq] q[q0 : q0 + mq, d]
          KR::gemm(ncols, d, mq, dP, 1, ldS, qb, d, dka, d, true);
        }
        std::copy(dka, dka + nk * d, dkh);
        std::copy(dva, dva + nk * d, dvh);
      }
    }
  });

  if (G > 1) {
    const int64_t n = BH * Nq * d;
    const float* part = partial.data();
    ab::parallel_for(n, 1 << 14, [&](int64_t r_begin, int64_t r_end) {
      for (int64_t i = r_begin; i < r_end; ++i) {
        float s = part[i];
        for (int64_t g = 1; g < G; ++g) s += part[g * n + i];
        dq[i] = s;
      }
    });
  }
}

void check_blocks(const FlashAttentionOptions& opt) {
  if (opt.block_q < 1 || opt.block_k < 1 || opt.bwd_block_q < 1 || opt.bwd_block_k < 1)
    throw std::invalid_argument(fmt::format("flash_attention: block sizes must be >= 1 (got {} {} {} {})", opt.block_q,
                                            opt.block_k, opt.bwd_block_q, opt.bwd_block_k));
}

Problem make_problem(const FlashShape& s, const float* mask, int64_t mask_batch, float scale, bool causal) {
  if (s.batch < 0 || s.heads < 0 || s.q_len < 0 || s.k_len < 0 || s.head_dim < 1)
    throw std::invalid_argument("flash_attention: bad shape");
  if (causal && s.q_len != s.k_len)
    throw std::invalid_argument(
        fmt::format("flash_attention: causal needs equal lengths (q {}, k {})", s.q_len, s.k_len));
  if (mask && mask_batch != 1 && mask_batch != s.batch)
    throw std::invalid_argument(fmt::format("flash_attention: mask batch {} for batch {}", mask_batch, s.batch));
  return Problem{s.batch, s.heads, s.q_len, s.k_len, s.head_dim, mask, mask_batch, scale, causal};
}

}  // namespace

bool flash_attention_has_avx512() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

bool flash_attention_has_bf16() {
#if defined(__AVX512F__) && (defined(__x86_64__) || defined(__i386__))
  unsigned a = 0, b = 0, c = 0, d = 0;  // CPUID.(EAX=7, ECX=1):EAX bit 5 = AVX512_BF16
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)) != 0;
#else
  return false;
#endif
}

namespace {
// The bf16 tiles have no key-bias gradient (no bf16 variant uses a key bias yet): refused, not ignored.
void check_bf16(const FlashAttentionOptions& opt, const float* kb) {
  if (opt.bf16 && kb) throw std::invalid_argument("flash_attention: bf16 tile products take no key bias");
  if (opt.bf16 && (opt.portable || !flash_attention_has_bf16()))
    throw std::invalid_argument(opt.portable ? "flash_attention: bf16 tile products have no portable kernel"
                                             : "flash_attention: bf16 tile products need a CPU with AVX512_BF16 "
                                               "(this one has none; use the fp32 default)");
}
}  // namespace

void flash_attention_forward(const FlashShape& s, const float* q, const float* k, const float* v, const float* key_mask,
                             int64_t mask_batch, float scale, bool causal, float* o, float* lse,
                             const FlashAttentionOptions& opt, const float* kb) {
  check_blocks(opt);
  check_bf16(opt, kb);
  Problem pb = make_problem(s, key_mask, mask_batch, scale, causal);
  pb.head_bias = kb;
#ifdef __AVX512F__
  if (opt.bf16) return forward_bf16(pb, q, k, v, o, lse, opt.block_q, opt.block_k);
  if (!opt.portable) return forward_impl<Avx512>(pb, q, k, v, o, lse, opt.block_q, opt.block_k);
#endif
  forward_impl<Portable>(pb, q, k, v, o, lse, opt.block_q, opt.block_k);
}

void flash_attention_backward(const FlashShape& s, const float* q, const float* k, const float* v,
                              const float* key_mask, int64_t mask_batch, float scale, bool causal, const float* o,
                              const float* lse, const float* dout, float* dq, float* dk, float* dv,
                              const FlashAttentionOptions& opt, const float* kb, float* dkb) {
  check_blocks(opt);
  check_bf16(opt, kb);
  Problem pb = make_problem(s, key_mask, mask_batch, scale, causal);
  pb.head_bias = kb;
  if (!kb) dkb = nullptr;
#ifdef __AVX512F__
  if (!opt.portable)
    return backward_impl<Avx512>(pb, q, k, v, o, lse, dout, dq, dk, dv, dkb, opt.bwd_block_q, opt.bwd_block_k,
                                 opt.bf16);
#endif
  backward_impl<Portable>(pb, q, k, v, o, lse, dout, dq, dk, dv, dkb, opt.bwd_block_q, opt.bwd_block_k);
}

namespace {
// The op behind flash_attention and flash_attention_key_bias; kb undefined = no head bias.
Var flash_attention_op(const Var& q, const Var& k, const Var& v, const Var& kb, float scale, bool causal,
                       const Tensor* key_mask, const FlashAttentionOptions& opt) {
  if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4)
    throw std::invalid_argument(fmt::format("flash_attention: q, k, v must be [B, H, N, d] (got {}, {}, {})",
                                            shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape())));
  const FlashShape s{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  if (k.shape() != v.shape() || k.dim(0) != s.batch || k.dim(1) != s.heads || k.dim(3) != s.head_dim)
    throw std::invalid_argument(fmt::format("flash_attention: q {} does not match k {} and v {}", shape_str(q.shape()),
                                            shape_str(k.shape()), shape_str(v.shape())));
  if (kb.defined() && kb.shape() != Shape{s.batch, s.heads, s.k_len})
    throw std::invalid_argument(fmt::format("flash_attention: key bias {} is not [B, H, Nk] = [{}, {}, {}]",
                                            shape_str(kb.shape()), s.batch, s.heads, s.k_len));
  Tensor mask;
  int64_t mask_batch = 0;
  if (key_mask && key_mask->defined()) {
    mask = *key_mask;
    mask_batch = mask.rank() > 0 ? mask.dim(0) : 0;
    if (mask.rank() < 2 || mask.dim(-1) != s.k_len || mask.numel() != mask_batch * s.k_len ||
        (mask_batch != 1 && mask_batch != s.batch))
      throw std::invalid_argument(fmt::format("flash_attention: key mask {} is not [B, 1, 1, {}] for batch {}",
                                              shape_str(mask.shape()), s.k_len, s.batch));
  }
  Tensor o = Tensor::empty(q.shape());
  Tensor lse = Tensor::empty({s.batch, s.heads, s.q_len});
  const float* mp = mask.defined() ? mask.data() : nullptr;
  const Tensor kbv = kb.defined() ? kb.value() : Tensor();
  flash_attention_forward(s, q.value().data(), k.value().data(), v.value().data(), mp, mask_batch, scale, causal,
                          o.data(), lse.data(), opt, kbv.defined() ? kbv.data() : nullptr);
  Tensor saved_o = o;
  std::vector<Var> inputs = {q, k, v};
  if (kb.defined()) inputs.push_back(kb);
  return make_op_result(
      std::move(o), inputs,
      [gq = q.sink(), gk = k.sink(), gv = v.sink(), gkb = kb.sink(),
       qv = q.value(), kv = k.value(), vv = v.value(), ov = saved_o, lse, mask, mask_batch, kbv, s, scale, causal,
       opt](const Tensor& g) {
        Tensor dq = Tensor::empty(qv.shape()), dk = Tensor::empty(kv.shape()), dv = Tensor::empty(vv.shape());
        Tensor dkb = kbv.defined() ? Tensor::empty(kbv.shape()) : Tensor();
        flash_attention_backward(s, qv.data(), kv.data(), vv.data(), mask.defined() ? mask.data() : nullptr,
                                 mask_batch, scale, causal, ov.data(), lse.data(), g.data(), dq.data(), dk.data(),
                                 dv.data(), opt, kbv.defined() ? kbv.data() : nullptr,
                                 dkb.defined() ? dkb.data() : nullptr);
        gq.accumulate(dq);
        gk.accumulate(dk);
        gv.accumulate(dv);
        if (dkb.defined()) gkb.accumulate(dkb);
      });
}
}  // namespace

Var flash_attention(const Var& q, const Var& k, const Var& v, float scale, bool causal, const Tensor* key_mask,
                    const FlashAttentionOptions& opt) {
  return flash_attention_op(q, k, v, Var(), scale, causal, key_mask, opt);
}

Var flash_attention_key_bias(const Var& q, const Var& k, const Var& v, const Var& key_bias, float scale, bool causal,
                             const Tensor* key_mask, const FlashAttentionOptions& opt) {
  if (!key_bias.defined()) throw std::invalid_argument("flash_attention_key_bias: the key bias is undefined");
  return flash_attention_op(q, k, v, key_bias, scale, causal, key_mask, opt);
}

}  // namespace ab
