#pragma once
// The vector loops the hand-written kernels share (GLA, LSH and Sinkhorn attention, the delta rule).
#include <bit>
#include <cstdint>

namespace ab::vec {

// a . b with 16 partial sums: vectorises without reassociation flags, and its order is fixed, so
// the result does not depend on the instruction set or the compiler's vectoriser.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) acc[k] += a[i + k] * b[i + k];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int k = 0; k < 16; ++k) s += acc[k];
  return s;
}

// y += a x (restrict: vectorises without run-time alias checks; x and y must not overlap)
inline void axpy(float* __restrict y, const float* __restrict x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// exp(x) without a library call, so that loops over it vectorise (under `#pragma omp simd`):
// 2^n p(r), n = round(x / ln 2) (by adding 1.5 * 2^23), r = x - n ln 2 in two parts, |r| <= ln 2 / 2,
// the degree-6 Taylor polynomial (relative error ~2e-7 against std::exp); 0 below -87
// (exp(-87) ~ 1.6e-38), inputs above 88 are clamped to 88.
inline float exp(float x) {
  const bool under = x < -87.f;
  x = under ? -87.f : (x > 88.f ? 88.f : x);
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const float y = p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return under ? 0.f : y;
}

}  // namespace ab::vec
