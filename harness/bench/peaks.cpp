// The machine's own ceilings, measured in the same run as the cells they judge: the FMA peak of
// a register-only loop (fp32, and bf16 dot products where the CPU has them) and the memory
// bandwidth of a triad over buffers larger than the last-level cache.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "bench/bench.hpp"

namespace ab {
namespace {

using Clock = std::chrono::steady_clock;

// Runs body(t) on `threads` threads at once and returns the wall time of the slowest, in seconds.
template <class F>
double timed_on_threads(int threads, F body) {
  std::vector<std::thread> pool;
  const auto t0 = Clock::now();
  for (int t = 1; t < threads; ++t) pool.emplace_back(body, t);
  body(0);
  for (auto& th : pool) th.join();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A ceiling is the best of several tries: other work on a shared machine only lowers a try.
double best(const std::vector<double>& xs) { return *std::max_element(xs.begin(), xs.end()); }

// 12 independent accumulator chains: enough to cover the FMA latency on both pipes of current
// cores. Returns FLOPs done (a multiply-add counts 2); `sink` keeps the result alive.
constexpr int kChains = 12;

#if defined(__AVX512F__)
constexpr int kLanes = 16;
// A lane sum through memory (GCC 12's _mm512_reduce_add_ps warns of an uninitialised operand).
float lane_sum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0;
  for (float x : lanes) s += x;
  return s;
}

double fma_loop_fp32(int64_t iters, float* sink) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(1.f + c * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  *sink = lane_sum(s);
  return 2.0 * kLanes * kChains * static_cast<double>(iters);
}
#else
constexpr int kLanes = 8;
typedef float v8 __attribute__((vector_size(32)));
double fma_loop_fp32(int64_t iters, float* sink) {
  v8 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = v8{} + (1.f + c * 1e-3f);
  const v8 a = v8{} + 0.999999f, b = v8{} + 1e-7f;
  for (int64_t i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * a + b;
  float s = 0;
  for (int c = 0; c < kChains; ++c)
    for (int l = 0; l < kLanes; ++l) s += acc[c][l];
  *sink = s;
  return 2.0 * kLanes * kChains * static_cast<double>(iters);
}
#endif

#if defined(__AVX512BF16__)
// vdpbf16ps: per fp32 lane, two bf16 products added to the accumulator (4 FLOPs per lane).
double dot_loop_bf16(int64_t iters, float* sink) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_setzero_ps();
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);  // 1, ~6e-8
  for (int64_t i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  *sink = lane_sum(s);
  return 4.0 * 16 * kChains * static_cast<double>(iters);
}
#endif

double loop_peak(int threads, double (*loop)(int64_t, float*)) {
  constexpr int64_t kIters = 8 << 20;  // ~0.02-0.03 s per thread at today's clock rates
  std::vector<float> sinks(static_cast<size_t>(threads) * 16);
  loop(kIters / 16, sinks.data());  // warm-up: clocks and caches settle
  std::vector<double> rates;
  for (int rep = 0; rep < 7; ++rep) {
    double flops = 0;
    std::vector<double> per_thread(static_cast<size_t>(threads));
    const double s = timed_on_threads(threads, [&](int t) { per_thread[t] = loop(kIters, &sinks[t * 16]); });
    for (double f : per_thread) flops += f;
    rates.push_back(flops / s / 1e9);
  }
  return best(rates);
}

}  // namespace

MachinePeaks calibrate_machine_peaks(int threads) {
  MachinePeaks p;
  p.threads = std::max(1, threads);
  p.fma_fp32_gflops = loop_peak(p.threads, fma_loop_fp32);
#if defined(__AVX512BF16__)
  p.fma_bf16_gflops = loop_peak(p.threads, dot_loop_bf16);
#endif
  // Triad a = b + s c over three 64 MiB arrays (beyond any last-level cache of this class of
  // machine), split over the threads; pages touched before the timing. Counts 3 x 4 bytes per
  // element (two reads, one write), as STREAM does.
  const int64_t n = int64_t{16} << 20;
  std::vector<float> a(n), b(n, 1.f), c(n, 2.f);
  const int64_t chunk = (n + p.threads - 1) / p.threads;
  auto triad = [&](int t) {
    const int64_t lo = t * chunk, hi = std::min(n, lo + chunk);
    float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    const float* __restrict pc = c.data();
    for (int64_t i = lo; i < hi; ++i) pa[i] = pb[i] + 3.f * pc[i];
  };
  timed_on_threads(p.threads, triad);
  std::vector<double> rates;
  for (int rep = 0; rep < 5; ++rep) rates.push_back(3.0 * 4.0 * n / timed_on_threads(p.threads, triad) / 1e9);
  p.bandwidth_gbs = best(rates);
  return p;
}

Json MachinePeaks::to_json() const {
  Json j = {{"threads", threads}, {"fma_fp32_gflops", fma_fp32_gflops}, {"bandwidth_gbs", bandwidth_gbs}};
  if (fma_bf16_gflops > 0) j["fma_bf16_gflops"] = fma_bf16_gflops;
  if (gemm_fp32_gflops > 0) j["gemm_fp32_gflops"] = gemm_fp32_gflops;
  return j;
}

}  // namespace ab
