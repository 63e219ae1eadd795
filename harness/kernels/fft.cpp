// The FFT service (fft.hpp): FFTW3 single precision, guru64 plans cached by layout and alignment,
// batches split into fixed-size chunks run with TBB.
#include "attnbench/kernels/fft.hpp"
#include "attnbench/parallel.hpp"

#include <fftw3.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>

namespace ab::fft {

namespace {

static_assert(sizeof(cfloat) == sizeof(fftwf_complex), "std::complex<float> must match fftwf_complex");

enum class Kind : int64_t { c2c = 1, r2c = 2, c2r = 3 };

// Work per parallel task, in transform elements; fixed so chunking never depends on threads.
constexpr int64_t kTaskElements = int64_t(1) << 15;

struct Cache {
  std::mutex mutex;
  std::map<std::vector<int64_t>, fftwf_plan> plans;
  int64_t lookups = 0;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: plans may be used until exit
  return *c;
}

fftwf_plan make_plan(Kind kind, Direction dir, const Layout& l, void* in, void* out, unsigned flags) {
  fftwf_iodim64 dim{l.n, l.in_stride, l.out_stride};
  std::vector<fftwf_iodim64> loops;
  for (const Loop& lp : l.loops) loops.push_back({lp.count, lp.in_dist, lp.out_dist});
  const int hr = static_cast<int>(loops.size());
  const fftwf_iodim64* hd = loops.empty() ? nullptr : loops.data();
  switch (kind) {
    case Kind::c2c:
      return fftwf_plan_guru64_dft(1, &dim, hr, hd, static_cast<fftwf_complex*>(in), static_cast<fftwf_complex*>(out),
                                   dir == Direction::forward ? FFTW_FORWARD : FFTW_BACKWARD, flags);
    case Kind::r2c:
      return fftwf_plan_guru64_dft_r2c(1, &dim, hr, hd, static_cast<float*>(in), static_cast<fftwf_complex*>(out), flags);
    case Kind::c2r:
      return fftwf_plan_guru64_dft_c2r(1, &dim, hr, hd, static_cast<fftwf_complex*>(in), static_cast<float*>(out), flags);
  }
  return nullptr;
}

// The cached plan for this problem and these arrays' alignment, created on first use.
fftwf_plan get_plan(Kind kind, Direction dir, const Layout& l, void* in, void* out) {
  std::vector<int64_t> key{static_cast<int64_t>(kind), dir == Direction::forward ? -1 : 1, l.n, l.in_stride,
                           l.out_stride, in == out ? 1 : 0,
                           fftwf_alignment_of(static_cast<float*>(in)), fftwf_alignment_of(static_cast<float*>(out))};
  for (const Loop& lp : l.loops) key.insert(key.end(), {lp.count, lp.in_dist, lp.out_dist});
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  ++c.lookups;
  auto it = c.plans.find(key);
  if (it != c.plans.end()) return it->second;
  // FFTW_ESTIMATE neither measures nor writes the arrays while planning.
  unsigned flags = FFTW_ESTIMATE | (kind == Kind::c2r ? FFTW_PRESERVE_INPUT : 0u);
  fftwf_plan p = make_plan(kind, dir, l, in, out, flags);
  if (!p)
    throw std::runtime_error(fmt::format("FFTW could not plan a transform of length {} (kind {}, strides {}/{}, {} loops)",
                                         l.n, static_cast<int>(kind), l.in_stride, l.out_stride, l.loops.size()));
  c.plans.emplace(std::move(key), p);
  return p;
}

void run_plan(Kind kind, fftwf_plan p, void* in, void* out) {
  switch (kind) {
    case Kind::c2c:
      fftwf_execute_dft(p, static_cast<fftwf_complex*>(in), static_cast<fftwf_complex*>(out));
      break;
    case Kind::r2c:
      fftwf_execute_dft_r2c(p, static_cast<float*>(in), static_cast<fftwf_complex*>(out));
      break;
    case Kind::c2r:
      fftwf_execute_dft_c2r(p, static_cast<fftwf_complex*>(in), static_cast<float*>(out));
      break;
  }
}

void validate(const Layout& l, const char* what) {
  if (l.n <= 0) throw std::invalid_argument(fmt::format("fft::{}: transform length {} must be positive", what, l.n));
  for (const Loop& lp : l.loops)
    if (lp.count < 0) throw std::invalid_argument(fmt::format("fft::{}: negative loop count {}", what, lp.count));
}

void execute(Kind kind, Direction dir, const void* in_c, void* out, const Layout& l, const char* what) {
  validate(l, what);
  void* in = const_cast<void*>(in_c);  // FFTW's signatures are not const; c2r plans preserve the input
  int64_t total = 1;
  size_t split = 0;
  for (size_t i = 0; i < l.loops.size(); ++i) {
    total *= l.loops[i].count;
    if (l.loops[i].count > l.loops[split].count) split = i;
  }
  if (total == 0) return;
  const size_t in_elem = kind == Kind::r2c ? sizeof(float) : sizeof(cfloat);
  const size_t out_elem = kind == Kind::c2r ? sizeof(float) : sizeof(cfloat);
  // Split the largest loop into chunks of a size fixed by the layout alone.
  int64_t chunk = l.loops.empty() ? 1 : l.loops[split].count;
  if (!l.loops.empty()) {
    const int64_t others = total / std::max<int64_t>(l.loops[split].count, 1);
    chunk = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, l.n * others));
  }
  if (l.loops.empty() || chunk >= l.loops[split].count) {
    run_plan(kind, get_plan(kind, dir, l, in, out), in, out);
    return;
  }
  const int64_t count = l.loops[split].count, tasks = (count + chunk - 1) / chunk;
  ab::parallel_for(tasks, 1, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t t = r_begin; t < r_end; ++t) {
      const int64_t start = t * chunk, len = std::min(chunk, count - start);
      Layout part = l;
      part.loops[split].count = len;
      char* pin = static_cast<char*>(in) + start * l.loops[split].in_dist * static_cast<int64_t>(in_elem);
      char* pout = static_cast<char*>(out) + start * l.loops[split].out_dist * static_cast<int64_t>(out_elem);
      run_plan(kind, get_plan(kind, dir, part, pin, pout), pin, pout);
    }
  });
}

template <class T>
void scale_inplace(T* x, int64_t n, float s) {
  ab::parallel_for(n, kTaskElements, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t i = r_begin; i < r_end; ++i) x[i] *= s;
  });
}

}  // namespace

void c2c(const cfloat* in, cfloat* out, const Layout& layout, Direction dir) {
  execute(Kind::c2c, dir, in, out, layout, "c2c");
}
void r2c(const float* in, cfloat* out, const Layout& layout) {
  execute(Kind::r2c, Direction::forward, in, out, layout, "r2c");
}
void c2r(const cfloat* in, float* out, const Layout& layout) {
  execute(Kind::c2r, Direction::inverse, in, out, layout, "c2r");
}

void rfft(const float* x, cfloat* X, int64_t n, int64_t batch) {
  r2c(x, X, Layout{n, 1, 1, {{batch, n, rfft_length(n)}}});
}
void irfft(const cfloat* X, float* x, int64_t n, int64_t batch) {
  c2r(X, x, Layout{n, 1, 1, {{batch, rfft_length(n), n}}});
  scale_inplace(x, n * batch, 1.0f / static_cast<float>(n));
}
void fft(const cfloat* x, cfloat* X, int64_t n, int64_t batch) {
  c2c(x, X, Layout{n, 1, 1, {{batch, n, n}}}, Direction::forward);
}
void ifft(const cfloat* X, cfloat* x, int64_t n, int64_t batch) {
  c2c(X, x, Layout{n, 1, 1, {{batch, n, n}}}, Direction::inverse);
  scale_inplace(x, n * batch, 1.0f / static_cast<float>(n));
}

int64_t good_size(int64_t n) {
  if (n <= 1) return 1;
  for (int64_t m = n;; ++m) {
    int64_t r = m;
    for (int64_t p : {2, 3, 5, 7})
      while (r % p == 0) r /= p;
    if (r == 1) return m;
  }
}

CacheStats cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {static_cast<int64_t>(c.plans.size()), c.lookups};
}

}  // namespace ab::fft

namespace ab {

namespace {

// x [B, N, D] -> y [B, N, D] = scale * Re(F_N x F_D).
Tensor fourier_mix_values(const Tensor& x, float scale) {
  const int64_t B = x.dim(0), N = x.dim(1), D = x.dim(2), Dh = fft::rfft_length(D);
  Tensor half = Tensor::empty({B, N, Dh, 2});  // complex [B, N, D/2+1]
  auto* c = reinterpret_cast<fft::cfloat*>(half.data());
  // Over the hidden axis: B*N real rows of length D.
  fft::r2c(x.data(), c, fft::Layout{D, 1, 1, {{B * N, D, Dh}}});
  // Over the sequence axis, in place: stride Dh, loops over the batch and the D/2+1 columns.
  fft::c2c(c, c, fft::Layout{N, Dh, Dh, {{B, N * Dh, N * Dh}, {Dh, 1, 1}}}, fft::Direction::forward);
  // Columns above D/2 by Hermitian symmetry of a real input: Y[n, d] = conj(Y[-n mod N, D - d]).
  Tensor y = Tensor::empty({B, N, D});
  float* yp = y.data();
  ab::parallel_for(B * N, 16, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t row = r_begin; row < r_end; ++row) {
      const int64_t b = row / N, n = row % N, mirror = b * N + (N - n) % N;
      const fft::cfloat* src = c + row * Dh;
      const fft::cfloat* msrc = c + mirror * Dh;
      float* dst = yp + row * D;
      for (int64_t d = 0; d < Dh && d < D; ++d) dst[d] = scale * src[d].real();
      for (int64_t d = Dh; d < D; ++d) dst[d] = scale * msrc[D - d].real();
    }
  });
  return y;
}

}  // namespace

Var fourier_mix(const Var& x, float scale) {
  if (x.rank() != 3)
    throw std::invalid_argument(fmt::format("fourier_mix: x must be [B, N, D], got {}", shape_str(x.shape())));
  // Self-adjoint: <g, Re(F x F)> = <Re(F g F), x> for real x and g, as F is symmetric.
  return make_op_result(fourier_mix_values(x.value(), scale), {x}, [gx = x.sink(), scale](const Tensor& g) {
    gx.accumulate(fourier_mix_values(g, scale));
  });
}

}  // namespace ab
