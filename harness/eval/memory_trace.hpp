#pragma once
// `attnbench check --trace-memory`: measure a variant's saved-for-backward and peak bytes (as the
// memory_model and peak_model checks measure them, measure_mixer_memory) over a grid of small
// sizes, fit each as a polynomial in B, N, D, H with exact rational coefficients, verify the fit
// at a larger held-out size, and print it as a formula and as C++ for the variant's cost model.
#include <cstdint>
#include <string>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/cost.hpp"

namespace ab {

struct SizePoint {
  int64_t B, N, D, H;
};

// One term c * B^b N^n D^d H^h of a fitted polynomial, c = num / den.
struct MemoryTerm {
  int b, n, d, h;
  int64_t num, den;
};

using Polynomial = std::vector<MemoryTerm>;

struct MemoryFit {
  bool exact = false;  // reproduces every traced size and the held-out one to the byte
  // The fit: one polynomial, or for a peak the largest of several (the moments of the forward
  // and backward that are the worst at some traced size).
  std::vector<Polynomial> pieces;
  std::string problem;  // why there is no exact fit: the size, prediction and measurement
  // Largest |fit - measured| / measured over the traced sizes, and at the held-out size.
  double max_error = 0, held_out_error = 0;
  // Not exact, but within kApproximateHeldOut at the held-out size (a peak whose transient
  // buffers are not polynomials in the sizes, e.g. a library's scratch space).
  bool approximate = false;
};
inline constexpr double kApproximateHeldOut = 0.03;

// Fits values[i] measured at points[i] over the monomials that occur in mixers (1, B, N, D, H,
// D^2, B*N, B*D, B*H, N^2, N*D, B*N*H, B*N*D, B*N^2, B*H*N^2, B*D^2/H, B*N*D^2/H); rational
// coefficients with denominators up to 64; exact = every point reproduced, then held_out too.
// relative: least squares of the relative error (for an approximate fit).
MemoryFit fit_memory_polynomial(const std::vector<SizePoint>& points, const std::vector<double>& values,
                                const SizePoint& held_out, double held_out_value, bool relative = false);

// "16*B*N*D + 4*B*H*N^2" (text) or "16 * B * N * D + 4 * B * H * N * N" (C++ over doubles B, N,
// D, H); several pieces as "max(p1, p2)" or "std::max({p1, p2})".
std::string memory_formula(const std::vector<Polynomial>& pieces, bool cpp);
double evaluate(const std::vector<Polynomial>& pieces, const SizePoint& p);

// The internals of measure_mixer_memory (check.cpp), also recording the live bytes above the
// start of the forward after every allocation when timeline is given.
MemoryMeasure measure_mixer_memory_timeline(const VariantSpec& spec, const Json& resolved, int64_t B, int64_t N,
                                            int64_t D, int64_t H, bool causal, uint64_t seed,
                                            std::vector<int64_t>* timeline);

struct MemoryTrace {
  bool causal = false;
  int threads = 1;
  std::vector<SizePoint> points;
  SizePoint held_out{};
  MemoryFit saved, peak;  // fitted to the measurements
  std::vector<double> measured_saved, measured_peak;  // at points, then held_out
  bool has_cost = false;
  std::vector<Cost> declared;  // the cost model at points, then held_out, then check's two memory sizes
  int skipped = 0;                         // grid sizes the variant refused
  std::string skipped_detail;              // the first refusal
  std::string unstable;                    // non-empty when a size measured twice differed
  bool ok() const { return (saved.exact || saved.approximate) && (peak.exact || peak.approximate) && unstable.empty(); }
};

// params: the variant's parameters as check's memory checks resolve them (defaults plus --set).
MemoryTrace trace_memory(const VariantSpec& spec, const Json& params, uint64_t seed);

// The report `check --trace-memory` prints: the formulas, the comparison with the declared cost
// model, and the C++ lines to paste (only when both fits are exact).
std::string render_memory_trace(const VariantSpec& spec, const MemoryTrace& t);

}  // namespace ab
