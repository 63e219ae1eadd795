#pragma once
// A mixer's output without recording a tape, and how far it is from a reference.
#include <algorithm>
#include <cmath>

#include "attnbench/autograd.hpp"
#include "attnbench/variant.hpp"

namespace ab::test {

// x [B, N, D] -> mixer.forward(x, ctx) [B, N, D], inference only.
inline Tensor forward_value(Mixer& mixer, const Tensor& x, const MixerContext& ctx) {
  NoGrad ng;
  return mixer.forward(Var(x), ctx).value();
}

// Largest |a - b| and largest |b| over two tensors of one shape (b the reference), for a tolerance
// relative to the reference's scale.
struct Deviation {
  double worst = 0, largest = 0;
};
inline Deviation deviation(const Tensor& a, const Tensor& b) {
  Deviation d;
  for (int64_t i = 0; i < b.numel(); ++i) {
    d.worst = std::max(d.worst, double(std::fabs(a[i] - b[i])));
    d.largest = std::max(d.largest, double(std::fabs(b[i])));
  }
  return d;
}

}  // namespace ab::test
