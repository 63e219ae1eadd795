// Memory cost models from measurements (memory_trace.hpp): trace, fit exactly, verify, print.
#include "eval/memory_trace.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

#include "attnbench/ops.hpp"

namespace ab {

namespace {

struct Monomial {
  int b, n, d, h;
};
// The terms that occur in mixers' memory: activations (B*N*D), score matrices (B*H*N^2),
// per-row statistics (B*N*H, B*N), masks (N^2, B*N^2), recurrent or chunk states (B*D^2/H,
// B*N*D^2/H), weights and their gradients (D^2, D), positional tables (N*D, N), constants.
// Highest degree first, the order a formula is printed in. Each variable takes at most three
// exponents, so three sizes per variable on a full grid determine every coefficient.
constexpr Monomial kBasis[] = {{1, 2, 0, 1}, {1, 1, 2, -1}, {1, 2, 0, 0}, {1, 1, 1, 0}, {1, 1, 0, 1}, {1, 0, 2, -1},
                               {0, 2, 0, 0}, {0, 1, 1, 0},  {0, 0, 2, 0}, {1, 1, 0, 0}, {1, 0, 1, 0}, {1, 0, 0, 1},
                               {1, 0, 0, 0}, {0, 1, 0, 0},  {0, 0, 1, 0}, {0, 0, 0, 1}, {0, 0, 0, 0}};
constexpr size_t kTerms = sizeof(kBasis) / sizeof(kBasis[0]);
// check's own sizes (memory_model at B=2 N=256, peak_model there and at B=1 N=1024; D=64 H=4),
// where a mismatch shows the declared cost model against the traced formula.
constexpr SizePoint kCheckSizes[2] = {{2, 256, 64, 4}, {1, 1024, 64, 4}};

long double value_of(int b, int n, int d, int h, const SizePoint& p) {
  return std::pow(static_cast<long double>(p.B), b) * std::pow(static_cast<long double>(p.N), n) *
         std::pow(static_cast<long double>(p.D), d) * std::pow(static_cast<long double>(p.H), h);
}

long double predict(const std::vector<MemoryTerm>& terms, const SizePoint& p) {
  long double s = 0;
  for (const auto& t : terms) s += value_of(t.b, t.n, t.d, t.h, p) * t.num / t.den;
  return s;
}

std::string size_str(const SizePoint& p) { return fmt::format("B={} N={} D={} H={}", p.B, p.N, p.D, p.H); }

// The smallest-denominator fraction within rounding noise of c (denominators up to 64).
std::pair<int64_t, int64_t> rational(long double c) {
  for (int64_t q = 1; q <= 64; ++q) {
    const long double x = c * q;
    const long double p = std::round(x);
    if (std::fabs(x - p) <= 1e-6L * std::max<long double>(1, std::fabs(x))) return {static_cast<int64_t>(p), q};
  }
  return {static_cast<int64_t>(std::llround(c * 64)), 64};  // not a small fraction: verification will say so
}

std::string monomial_str(const MemoryTerm& t, bool cpp) {
  std::vector<std::string> f;
  auto put = [&](const char* v, int e) {
    if (cpp)
      for (int i = 0; i < e; ++i) f.push_back(v);
    else if (e == 1)
      f.push_back(v);
    else if (e > 1)
      f.push_back(fmt::format("{}^{}", v, e));
  };
  put("B", t.b), put("H", std::max(t.h, 0)), put("N", t.n), put("D", t.d);
  std::string s;
  for (const auto& x : f) s += (s.empty() ? "" : (cpp ? " * " : "*")) + x;
  if (t.h < 0) s += cpp ? " / H" : "/H";
  return s;
}

}  // namespace

namespace {
std::string polynomial_str(const Polynomial& terms, bool cpp) {
  std::string out;
  for (const auto& t : terms) {
    const std::string mono = monomial_str(t, cpp);
    const int64_t num = std::llabs(t.num);
    std::string term;
    if (cpp) {
      term = mono.empty() ? fmt::format("{}", num) : num == 1 ? mono : fmt::format("{} * {}", num, mono);
      if (t.den != 1) term += fmt::format(" / {}.0", t.den);
    } else {
      const std::string coef = t.den != 1 ? fmt::format("({}/{})", num, t.den) : fmt::format("{}", num);
      term = mono.empty() ? coef : (num == 1 && t.den == 1) ? mono : coef + "*" + mono;
    }
    if (out.empty()) out = t.num < 0 ? "-" + term : term;
    else out += (t.num < 0 ? " - " : " + ") + term;
  }
  return out.empty() ? "0" : out;
}
}  // namespace

std::string memory_formula(const std::vector<Polynomial>& pieces, bool cpp) {
  if (pieces.size() == 1) return polynomial_str(pieces.front(), cpp);
  std::string out;
  for (const auto& p : pieces) out += (out.empty() ? "" : ", ") + polynomial_str(p, cpp);
  return cpp ? "std::max({" + out + "})" : "max(" + out + ")";
}

double evaluate(const std::vector<Polynomial>& pieces, const SizePoint& p) {
  long double best = 0;
  for (size_t i = 0; i < pieces.size(); ++i) best = i ? std::max(best, predict(pieces[i], p)) : predict(pieces[i], p);
  return static_cast<double>(best);
}

MemoryFit fit_memory_polynomial(const std::vector<SizePoint>& points, const std::vector<double>& values,
                                const SizePoint& held_out, double held_out_value, bool relative) {
  MemoryFit fit;
  const size_t m = points.size();
  if (m < kTerms) {
    fit.problem = fmt::format("only {} sizes could be traced, fewer than the {} terms to fit", m, kTerms);
    return fit;
  }
  // Least squares by modified Gram-Schmidt on unit-norm columns, in long double; relative: each
  // row divided by its value, so that small sizes count as much as large ones.
  auto weight = [&](size_t i) { return relative ? std::max<long double>(values[i], 1) : 1.0L; };
  std::vector<std::vector<long double>> q(kTerms, std::vector<long double>(m));
  std::vector<long double> norm(kTerms), r(kTerms * kTerms, 0), rhs(kTerms);
  for (size_t j = 0; j < kTerms; ++j) {
    long double s = 0;
    for (size_t i = 0; i < m; ++i) {
      q[j][i] = value_of(kBasis[j].b, kBasis[j].n, kBasis[j].d, kBasis[j].h, points[i]) / weight(i);
      s += q[j][i] * q[j][i];
    }
    norm[j] = std::sqrt(s);
    for (auto& x : q[j]) x /= norm[j];
  }
  for (size_t j = 0; j < kTerms; ++j) {
    for (size_t k = 0; k < j; ++k) {
      long double dot = 0;
      for (size_t i = 0; i < m; ++i) dot += q[k][i] * q[j][i];
      r[k * kTerms + j] = dot;
      for (size_t i = 0; i < m; ++i) q[j][i] -= dot * q[k][i];
    }
    long double s = 0;
    for (auto x : q[j]) s += x * x;
    r[j * kTerms + j] = std::sqrt(s);
    if (r[j * kTerms + j] < 1e-9L) {
      fit.problem = "the traced sizes do not determine every term (sizes were skipped)";
      return fit;
    }
    for (auto& x : q[j]) x /= r[j * kTerms + j];
    long double dot = 0;
    for (size_t i = 0; i < m; ++i) dot += q[j][i] * values[i] / weight(i);
    rhs[j] = dot;
  }
  std::vector<long double> c(kTerms);
  for (size_t j = kTerms; j-- > 0;) {
    long double s = rhs[j];
    for (size_t k = j + 1; k < kTerms; ++k) s -= r[j * kTerms + k] * c[k];
    c[j] = s / r[j * kTerms + j];
  }
  Polynomial terms;
  for (size_t j = 0; j < kTerms; ++j) {
    // An approximation gets whole bytes: its fractions would only be noise.
    const auto [num, den] = relative ? std::pair<int64_t, int64_t>{std::llround(c[j] / norm[j]), 1} : rational(c[j] / norm[j]);
    if (num != 0) terms.push_back({kBasis[j].b, kBasis[j].n, kBasis[j].d, kBasis[j].h, num, den});
  }
  fit.pieces = {terms};
  for (size_t i = 0; i < m; ++i)
    fit.max_error = std::max(fit.max_error, static_cast<double>(std::fabs(predict(terms, points[i]) - values[i]) /
                                                                 std::max(1.0, values[i])));
  fit.held_out_error = static_cast<double>(std::fabs(predict(terms, held_out) - held_out_value) /
                                           std::max(1.0, held_out_value));
  // Exact means to the byte: the tracking allocator's figures are whole granules.
  for (size_t i = 0; i < m; ++i) {
    const long double p = predict(terms, points[i]);
    if (std::fabs(p - values[i]) >= 0.5L) {
      fit.problem = fmt::format("no polynomial over the terms reproduces the traced bytes: at {} the best fit "
                                "predicts {:.0f}, measured {:.0f} (does the memory depend on a parameter that "
                                "changes with the size, or on the thread count?)",
                                size_str(points[i]), static_cast<double>(p), values[i]);
      return fit;
    }
  }
  const long double p = predict(terms, held_out);
  if (std::fabs(p - held_out_value) >= 0.5L) {
    fit.problem = fmt::format("the fit reproduces every traced size but not the held-out size {}: it predicts "
                              "{:.0f}, measured {:.0f} ({:+.1f}%); it would be wrong at real sizes",
                              size_str(held_out), static_cast<double>(p), held_out_value,
                              100.0 * (held_out_value - static_cast<double>(p)) / std::max(1.0L, p));
    return fit;
  }
  fit.exact = true;
  return fit;
}

namespace {
// The peak as the largest of the moments that are the worst somewhere: the allocator's timeline
// has the same allocations in the same order at every size (the same code runs), so the live
// bytes after allocation k are a polynomial per k, and the peak is their maximum.
MemoryFit fit_peak(const std::vector<SizePoint>& points, const std::vector<std::vector<int64_t>>& timelines,
                   const std::vector<double>& peaks, const SizePoint& held_out, const std::vector<int64_t>& held_timeline,
                   double held_peak) {
  MemoryFit single = fit_memory_polynomial(points, peaks, held_out, held_peak);
  if (single.exact) return single;
  for (size_t i = 0; i < points.size(); ++i)
    if (timelines[i].size() != held_timeline.size()) {
      single.problem += fmt::format("; and the allocations differ in number between sizes ({} at {}, {} at {}), so "
                                    "the moment of the peak cannot be followed",
                                    timelines[i].size(), size_str(points[i]), held_timeline.size(), size_str(held_out));
      return single;
    }
  std::vector<size_t> moments;  // the worst allocation at each traced size
  for (const auto& t : timelines) {
    const size_t k = static_cast<size_t>(std::max_element(t.begin(), t.end()) - t.begin());
    if (std::find(moments.begin(), moments.end(), k) == moments.end()) moments.push_back(k);
  }
  auto moment = [&](size_t k, bool relative) {
    std::vector<double> live;
    for (const auto& t : timelines) live.push_back(static_cast<double>(t[k]));
    return fit_memory_polynomial(points, live, held_out, static_cast<double>(held_timeline[k]), relative);
  };
  auto add_piece = [](MemoryFit& f, const Polynomial& p) {
    bool seen = false;
    for (const auto& q : f.pieces) seen = seen || memory_formula({q}, false) == memory_formula({p}, false);
    if (!seen) f.pieces.push_back(p);
  };
  MemoryFit fit;
  std::string why;
  for (size_t k : moments) {
    const MemoryFit one = moment(k, false);
    if (!one.exact) {
      why = fmt::format("the peak is no single polynomial ({}), and the moment after allocation {} (the peak at some "
                        "sizes) is none either: {}",
                        single.problem, k + 1, one.problem);
      break;
    }
    add_piece(fit, one.pieces.front());
  }
  if (why.empty()) {
    const double predicted = evaluate(fit.pieces, held_out);
    if (std::fabs(predicted - held_peak) < 0.5) {
      fit.exact = true;
      return fit;
    }
    why = fmt::format("the largest of the moments that are the peak at the traced sizes predicts {:.0f} at the "
                      "held-out size {}, measured {:.0f}: another moment is the peak there",
                      predicted, size_str(held_out), held_peak);
  }
  // No exact formula: the same moments fitted for the least relative error, kept where one of
  // them is the largest at some traced size, and judged at the held-out size.
  MemoryFit approx;
  for (size_t k : moments) add_piece(approx, moment(k, true).pieces.front());
  std::vector<Polynomial> kept;
  for (const auto& p : approx.pieces) {
    bool largest = false;
    for (const auto& pt : points) largest = largest || evaluate({p}, pt) >= evaluate(approx.pieces, pt);
    if (largest) kept.push_back(p);
  }
  approx.pieces = kept;
  for (size_t i = 0; i < points.size(); ++i)
    approx.max_error = std::max(approx.max_error, std::fabs(evaluate(approx.pieces, points[i]) - peaks[i]) /
                                                      std::max(1.0, peaks[i]));
  approx.held_out_error = std::fabs(evaluate(approx.pieces, held_out) - held_peak) / std::max(1.0, held_peak);
  approx.approximate = approx.held_out_error <= kApproximateHeldOut;
  approx.problem = why;
  return approx;
}
}  // namespace

MemoryTrace trace_memory(const VariantSpec& spec, const Json& params, uint64_t seed) {
  MemoryTrace t;
  // As check's memory_model and peak_model: the defaults plus the caller's parameters, and the
  // causal form only for a variant without a bidirectional one.
  const Json resolved = resolve_params(spec.params, params, spec.name);
  t.causal = !spec.caps.bidirectional;
  t.threads = num_threads();
  // Powers of two (and B = 3) keep every tensor a whole number of allocator granules (64 bytes
  // below 64 KiB, 4 KiB pages above), so the counts are exact polynomials.
  t.held_out = {3, 128, 64, 8};
  std::vector<std::vector<int64_t>> timelines;
  for (int64_t B : {1, 2, 3})
    for (int64_t N : {16, 32, 64})
      for (int64_t D : {16, 32, 64})
        for (int64_t H : {1, 2, 4}) {
          std::vector<int64_t> timeline;
          try {
            const MemoryMeasure mm = measure_mixer_memory_timeline(spec, resolved, B, N, D, H, t.causal, seed, &timeline);
            t.points.push_back({B, N, D, H});
            t.measured_saved.push_back(static_cast<double>(mm.saved_bytes));
            t.measured_peak.push_back(static_cast<double>(mm.peak_bytes));
            timelines.push_back(std::move(timeline));
          } catch (const std::exception& e) {
            if (t.skipped++ == 0) t.skipped_detail = fmt::format("{}: {}", size_str({B, N, D, H}), e.what());
          }
        }
  std::vector<int64_t> held_timeline;
  MemoryMeasure held{};
  try {
    held = measure_mixer_memory_timeline(spec, resolved, t.held_out.B, t.held_out.N, t.held_out.D, t.held_out.H,
                                         t.causal, seed, &held_timeline);
  } catch (const std::exception& e) {
    t.saved.problem = t.peak.problem = fmt::format("the held-out size {} failed: {}", size_str(t.held_out), e.what());
    return t;
  }
  if (!t.points.empty()) {  // the same size again must measure the same, or no fit can be trusted
    const SizePoint& p = t.points.front();
    const MemoryMeasure again = measure_mixer_memory(spec, resolved, p.B, p.N, p.D, p.H, t.causal, seed);
    if (again.saved_bytes != static_cast<int64_t>(t.measured_saved.front()) ||
        again.peak_bytes != static_cast<int64_t>(t.measured_peak.front()))
      t.unstable = fmt::format("{} measured twice gave saved {:.0f} / {}, peak {:.0f} / {} bytes (with {} threads; "
                               "try --threads 1)",
                               size_str(p), t.measured_saved.front(), again.saved_bytes, t.measured_peak.front(),
                               again.peak_bytes, t.threads);
  }
  t.saved = fit_memory_polynomial(t.points, t.measured_saved, t.held_out, static_cast<double>(held.saved_bytes));
  t.peak = fit_peak(t.points, timelines, t.measured_peak, t.held_out, held_timeline, static_cast<double>(held.peak_bytes));
  t.measured_saved.push_back(static_cast<double>(held.saved_bytes));
  t.measured_peak.push_back(static_cast<double>(held.peak_bytes));
  if (spec.cost) {
    t.has_cost = true;
    std::vector<SizePoint> at = t.points;
    at.push_back(t.held_out);
    at.insert(at.end(), std::begin(kCheckSizes), std::end(kCheckSizes));
    for (const auto& p : at) t.declared.push_back(spec.cost({p.B, p.N, p.D, p.H, &resolved, t.causal}));
  }
  return t;
}

std::string render_memory_trace(const VariantSpec& spec, const MemoryTrace& t) {
  std::string out = fmt::format(
      "memory trace of {} ({} form, {} thread{}): {} sizes, B in {{1, 2, 3}}, N and D in {{16, 32, 64}}, "
      "H in {{1, 2, 4}}; held out: {}\n",
      spec.name, t.causal ? "causal" : "bidirectional", t.threads, t.threads == 1 ? "" : "s", t.points.size(),
      size_str(t.held_out));
  if (t.skipped)
    out += fmt::format("  {} sizes skipped (the variant refused them), first: {}\n", t.skipped, t.skipped_detail);
  if (!t.unstable.empty()) out += fmt::format("  NOT REPEATABLE: {}\n", t.unstable);
  std::vector<SizePoint> sizes = t.points;
  sizes.push_back(t.held_out);
  auto block = [&](const char* what, const char* field, const MemoryFit& fit, const std::vector<double>& measured,
                   double Cost::*member) {
    if (!fit.exact && !fit.approximate) {
      out += fmt::format("{}: NO FIT; {}{}\n", what, fit.problem,
                         fit.pieces.empty() ? ""
                                            : fmt::format("; the nearest approximation is off by {:.1f}% at the "
                                                          "held-out size (more than {:.0f}%)",
                                                          100 * fit.held_out_error, 100 * kApproximateHeldOut));
      return;
    }
    out += fmt::format("{} (Cost::{}) {} {}\n", what, field, fit.exact ? "=" : "~", memory_formula(fit.pieces, false));
    if (fit.exact)
      out += "  exact at every traced size and at the held-out one\n";
    else
      out += fmt::format("  APPROXIMATE, within {:.1f}% at the traced sizes and {:.1f}% at the held-out one; no exact "
                         "formula: {}\n",
                         100 * fit.max_error, 100 * fit.held_out_error, fit.problem);
    if (!t.has_cost) return;
    // The declared cost model against the measurements, at the size where it is furthest off.
    size_t worst = 0;
    double worst_off = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const double off = std::fabs(t.declared[i].*member - measured[i]) / std::max(measured[i], 1.0);
      if (off > worst_off) worst = i, worst_off = off;
    }
    if (worst_off == 0) {
      out += fmt::format("  the declared {} agrees to the byte at every traced size\n", field);
      return;
    }
    bool is_formula = true;  // an approximation pasted as printed is as good as it gets
    for (size_t i = 0; i < sizes.size(); ++i)
      is_formula = is_formula && std::fabs(t.declared[i].*member - evaluate(fit.pieces, sizes[i])) < 0.5;
    if (is_formula) {
      out += fmt::format("  the declared {} is this formula\n", field);
      return;
    }
    auto vs = [](double declared, double measured) {
      return declared <= 0 ? std::string("not declared")
                           : fmt::format("{:+.1f}%", 100.0 * (measured - declared) / declared);
    };
    // Off only at the smallest sizes (constants, small buffers) is not what check measures.
    bool close_at_check = true;
    for (size_t i = 0; i < 2; ++i) {
      const double have = t.declared[sizes.size() + i].*member, want = evaluate(fit.pieces, kCheckSizes[i]);
      close_at_check = close_at_check && have > 0 && std::fabs(want - have) <= 0.01 * have;
    }
    out += fmt::format("  {}: the declared {} is {:.0f} at {}, measured {:.0f} ({})\n",
                       close_at_check ? "DIFFERS AT SMALL SIZES ONLY (within 1% at check's sizes)" : "MISMATCH", field,
                       t.declared[worst].*member, size_str(sizes[worst]), measured[worst],
                       vs(t.declared[worst].*member, measured[worst]));
    for (size_t i = 0; i < 2; ++i) {
      const double want = evaluate(fit.pieces, kCheckSizes[i]);
      const double have = t.declared[sizes.size() + i].*member;
      out += fmt::format("    at {} (a size check measures): declared {:.0f}, traced formula {:.0f} ({})\n",
                         size_str(kCheckSizes[i]), have, want, vs(have, want));
    }
  };
  block("saved for backward", "activation_bytes", t.saved, t.measured_saved, &Cost::activation_bytes);
  block("peak of forward+backward", "peak_bytes", t.peak, t.measured_peak, &Cost::peak_bytes);
  if (t.ok())
    out += fmt::format("paste into the cost function (B, N, D, H: a.batch, a.length, a.d_model, a.heads as double{}):\n"
                       "      c.activation_bytes = {};\n      c.peak_bytes = {};\n",
                       t.peak.pieces.size() > 1 ? "; std::max needs <algorithm>" : "",
                       memory_formula(t.saved.pieces, true), memory_formula(t.peak.pieces, true));
  else
    out += "nothing to paste: no formula was found (see above)\n";
  return out;
}

}  // namespace ab
