#pragma once
// The two vector loops the hand-written kernels share (GLA, LSH and Sinkhorn attention).
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

}  // namespace ab::vec
