#pragma once
// Test inputs drawn from the check stream: the same tensor for the same (seed, key) on every
// platform, like every draw of the harness.
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

}  // namespace ab::test
