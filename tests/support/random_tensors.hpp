#pragma once
// Test inputs drawn from the check stream: the same tensor for the same (seed, key) on every
// platform, like every draw of the harness; slices of them; and the tabulated [B, N, C] tensors
// of the naive references.
#include "attnbench/rng.hpp"
#include "attnbench/tensor.hpp"

namespace ab::test {

// Uniform in [lo, hi).
inline Tensor uniform_tensor(const Shape& s, uint64_t seed, uint64_t key, float lo = -1.f, float hi = 1.f) {
  RngStream r(seed, Purpose::check, key);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = lo + (hi - lo) * r.uniform();
  return t;
}

// Uniform in [-scale, scale), drawn as scale * (2u - 1).
inline Tensor symmetric_tensor(const Shape& s, uint64_t seed, uint64_t key, float scale = 1.f) {
  RngStream r(seed, Purpose::check, key);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = scale * (2.f * r.uniform() - 1.f);
  return t;
}

// Normal with standard deviation `scale`.
inline Tensor normal_tensor(const Shape& s, uint64_t seed, uint64_t key, float scale = 1.f) {
  RngStream r(seed, Purpose::check, key);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = r.normal() * scale;
  return t;
}

// Position t of x [B, H, N, *] (or [B, H, N]) as [B, H, 1, *] (or [B, H, 1]): one decode step's input.
inline Tensor position(const Tensor& x, int64_t t) {
  const int64_t outer = x.dim(0) * x.dim(1), n = x.dim(2), inner = x.numel() / (outer * n);
  Shape s = x.shape();
  s[2] = 1;
  Tensor y = Tensor::empty(s);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) y[o * inner + i] = x[(o * n + t) * inner + i];
  return y;
}

// y [B, N, C] with y[b, t, c] = f(b, t, c), summed in double by f and rounded once: the loop nest
// of the naive sequence-mixing references.
template <class F>
Tensor per_position(const Shape& s, F f) {
  const int64_t B = s.at(0), N = s.at(1), C = s.at(2);
  Tensor y = Tensor::empty(s);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t c = 0; c < C; ++c) y[(b * N + t) * C + c] = static_cast<float>(f(b, t, c));
  return y;
}

}  // namespace ab::test
