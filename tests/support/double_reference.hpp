#pragma once
// Kernels against references: gradients of a naive double reference by central differences, and
// the error of a kernel's fp32 result relative to the reference's scale.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include <gtest/gtest.h>

#include "attnbench/tensor.hpp"

namespace ab::test {

// d loss / d x for every element of every input in xs (changed in place and restored), by
// central differences with step h: one gradient per input, in the order of xs.
inline std::vector<std::vector<double>> central_differences(const std::vector<std::vector<double>*>& xs,
                                                            const std::function<double()>& loss, double h = 1e-5) {
  std::vector<std::vector<double>> out;
  for (auto* x : xs) {
    std::vector<double> d(x->size());
    for (size_t i = 0; i < x->size(); ++i) {
      const double x0 = (*x)[i];
      (*x)[i] = x0 + h;
      const double lp = loss();
      (*x)[i] = x0 - h;
      const double lm = loss();
      (*x)[i] = x0;
      d[i] = (lp - lm) / (2 * h);
    }
    out.push_back(std::move(d));
  }
  return out;
}

// Largest |a - b| over the largest |b| (at least 1e-12).
inline double rel_err(const Tensor& a, const std::vector<double>& b) {
  EXPECT_EQ(static_cast<size_t>(a.numel()), b.size());
  double worst = 0, m = 1e-12;
  for (size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, std::fabs(double(a[int64_t(i)]) - b[i]));
    m = std::max(m, std::fabs(b[i]));
  }
  return worst / m;
}

// Largest |a - b| over the largest |b| (at least 1e-6), for two fp32 results of one shape.
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double worst = 0, scale = 1e-6;
  for (int64_t i = 0; i < a.numel(); ++i) scale = std::max(scale, double(std::fabs(b[i])));
  for (int64_t i = 0; i < a.numel(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst / scale;
}

}  // namespace ab::test
