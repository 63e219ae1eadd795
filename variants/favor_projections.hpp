#pragma once
// FAVOR+ random projections (Choromanski et al. 2021), shared by performer and sea: the [m, d]
// matrix W whose rows feed ab::favor_features.
#include <cmath>
#include <cstdint>
#include <vector>

#include "attnbench/rng.hpp"
#include "attnbench/tensor.hpp"

namespace ab_favor {

// W [m, d]: rows orthogonal within blocks of d, norms ~ chi_d (or sqrt(d) when not orthogonal:
// plain Gaussian rows then).
inline ab::Tensor draw_projections(int64_t m, int64_t d, bool orthogonal, ab::RngStream rng) {
  ab::Tensor w = ab::Tensor::empty({m, d});
  std::vector<double> block(static_cast<size_t>(d * d));
  for (int64_t b0 = 0; b0 < m; b0 += d) {
    for (auto& x : block) x = rng.normal();
    if (orthogonal) {
      for (int64_t i = 0; i < d; ++i) {  // modified Gram-Schmidt on the rows
        double* ri = block.data() + i * d;
        for (int64_t j = 0; j < i; ++j) {
          const double* rj = block.data() + j * d;
          double dot = 0;
          for (int64_t c = 0; c < d; ++c) dot += ri[c] * rj[c];
          for (int64_t c = 0; c < d; ++c) ri[c] -= dot * rj[c];
        }
        double nrm = 0;
        for (int64_t c = 0; c < d; ++c) nrm += ri[c] * ri[c];
        nrm = std::sqrt(nrm);
        for (int64_t c = 0; c < d; ++c) ri[c] /= nrm;
      }
    }
    for (int64_t i = 0; i < d && b0 + i < m; ++i) {
      double scale = 1.0;
      if (orthogonal) {  // the norm a Gaussian row would have had
        double s = 0;
        for (int64_t c = 0; c < d; ++c) {
          const double g = rng.normal();
          s += g * g;
        }
        scale = std::sqrt(s);
      }
      for (int64_t c = 0; c < d; ++c) w[(b0 + i) * d + c] = static_cast<float>(scale * block[i * d + c]);
    }
  }
  return w;
}

}  // namespace ab_favor
