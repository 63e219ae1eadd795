// oneDNN 2.6 primitives behind a cache keyed by operation and shape. All v2-specific API use is
// in this file. Scratchpads come from the tracking allocator so that they count in peak bytes.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include <fmt/format.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <tbb/global_control.h>

#include "attnbench/params.hpp"
#include "attnbench/tensor.hpp"
#include "core/backend/onednn.hpp"

namespace ab::kernels {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& stream() {
  static thread_local dnnl::stream s(engine());
  return s;
}

struct Cached {
  dnnl::primitive prim;
  memory::desc scratch;
};

// Primitive creation costs 0.2-0.5 ms; a training step executes hundreds of primitives.
template <class Make>
const Cached& cached(const std::string& key, Make make) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<Cached>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, std::make_unique<Cached>(make())).first;
  return *it->second;
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

template <class Prim>
Cached make_cached(const typename Prim::primitive_desc& pd) {
  return Cached{Prim(pd), pd.scratchpad_desc()};
}

memory mem(const memory::desc& md, const void* p) { return memory(md, engine(), const_cast<void*>(p)); }

void run(const Cached& c, std::unordered_map<int, memory> args) {
  Tensor scratch;
  if (c.scratch.get_size() > 0) {
    scratch = Tensor::empty({static_cast<int64_t>((c.scratch.get_size() + 3) / 4)});
    args.emplace(DNNL_ARG_SCRATCHPAD, mem(c.scratch, scratch.data()));
  }
  c.prim.execute(stream(), args);
  stream().wait();
}

memory::desc md2(int64_t rows, int64_t cols) { return memory::desc({rows, cols}, dt::f32, tag::ab); }

}  // namespace

namespace {

// One oneDNN matmul with explicit leading dimensions (lda, ldb: the stored row length of a and b;
// c is contiguous). `single` marks a call made inside our own OpenMP region: its primitive is
// created there too, so that oneDNN plans it for one thread, and it is cached apart.
// a and b hold fp32, or bf16 (as uint16_t) when `in` says so; c and bias are fp32.
void matmul_one(const void* a, const void* b, float* c, int64_t batch, int64_t b_batch, int64_t M, int64_t N,
                int64_t K, bool trans_a, bool trans_b, const float* bias, bool accumulate, int64_t lda, int64_t ldb,
                bool single, dt in) {
  const memory::desc a_md({batch, M, K}, in, trans_a ? memory::dims{M * K, 1, lda} : memory::dims{M * K, lda, 1});
  const memory::desc b_md({b_batch, K, N}, in, trans_b ? memory::dims{N * K, 1, ldb} : memory::dims{N * K, ldb, 1});
  const memory::desc c_md({batch, M, N}, dt::f32, memory::dims{M * N, N, 1});
  const memory::desc bias_md({1, 1, N}, dt::f32, memory::dims{N, N, 1});
  const std::string key = fmt::format("mm{}{} {} {} {} {} {} {}{} {}{} {} {}", single ? "1" : "",
                                      in == dt::bf16 ? "h" : "", batch, b_batch, M, N, K, trans_a, trans_b,
                                      bias != nullptr, accumulate, lda, ldb);
  const Cached& p = cached(key, [&] {
    auto attr = user_scratchpad();
    if (accumulate) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    auto d = bias ? dnnl::matmul::desc(a_md, b_md, bias_md, c_md) : dnnl::matmul::desc(a_md, b_md, c_md);
    return make_cached<dnnl::matmul>(dnnl::matmul::primitive_desc(d, attr, engine()));
  });
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, mem(a_md, a)}, {DNNL_ARG_WEIGHTS, mem(b_md, b)}, {DNNL_ARG_DST, mem(c_md, c)}};
  if (bias) args.emplace(DNNL_ARG_BIAS, mem(bias_md, bias));
  run(p, std::move(args));
}

// oneDNN 2.6 runs the skinny GEMMs of a linear layer (rows = batch * length in the tens of
// thousands, 64-128 columns, K = 64-128) on two threads hardly faster than on one, and a weight
// gradient (K = rows) slower. These are split here instead: by rows of c, or, when c is too small
// to split, by K into per-thread partials summed in a fixed order; each piece is one
// single-threaded primitive inside an OpenMP region. The split depends only on the shape and the
// thread count, so results are identical run to run for a given thread count.
constexpr int64_t kRowSplitMin = 2048;   // rows of c per thread, at least
constexpr int64_t kKSplitMin = 4096;     // reduction length per thread, at least
constexpr double kSplitFlopsMin = 1 << 23;

int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }

MatmulPrecision g_precision = MatmulPrecision::fp32;

// fp32 -> bf16, rounding to nearest even (NaN stays NaN); into a tracked buffer of n uint16_t.
Tensor to_bf16(const float* x, int64_t n) {
  Tensor out = Tensor::empty({(n + 1) / 2});
  auto* y = reinterpret_cast<uint16_t*>(out.data());
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint32_t u;
      std::memcpy(&u, x + i, 4);
      const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
      y[i] = static_cast<uint16_t>(nan ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  });
  return out;
}

}  // namespace

void set_matmul_precision(MatmulPrecision p) {
  if (p == MatmulPrecision::bf16) {  // refuse here, not later inside an OpenMP region
    const memory::desc md({1, 16, 16}, dt::bf16, memory::dims{256, 16, 1}), out({1, 16, 16}, dt::f32, memory::dims{256, 16, 1});
    try {
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(md, md, out), engine());
    } catch (const dnnl::error&) {
      throw UsageError("oneDNN 2.6 has no bf16 matmul on this CPU (it needs AVX512_BF16 or AMX); use fp32");
    }
  }
  g_precision = p;
}
MatmulPrecision matmul_precision() { return g_precision; }

void matmul(const float* a_f32, const float* b_f32, float* c, int64_t batch, int64_t b_batch, int64_t M, int64_t N,
            int64_t K, bool trans_a, bool trans_b, const float* bias, bool accumulate) {
  if (batch == 0 || M == 0 || N == 0) return;
  // bf16: both inputs rounded once here; oneDNN accumulates in fp32 and writes fp32.
  const bool half = g_precision == MatmulPrecision::bf16 && K > 0;
  Tensor a16, b16;
  if (half) {
    a16 = to_bf16(a_f32, batch * M * K);
    b16 = to_bf16(b_f32, b_batch * K * N);
  }
  const dt in = half ? dt::bf16 : dt::f32;
  const int64_t es = half ? 2 : 4;  // bytes per input element
  const char* a = half ? reinterpret_cast<const char*>(a16.data()) : reinterpret_cast<const char*>(a_f32);
  const char* b = half ? reinterpret_cast<const char*>(b16.data()) : reinterpret_cast<const char*>(b_f32);
  const int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
  const int T = threads();
  const double flops = 2.0 * static_cast<double>(batch) * M * N * K;
#if ATTNBENCH_PLAIN_THREADS
  constexpr bool may_split = false;  // TSan build: oneDNN stays on one OpenMP thread
#else
  constexpr bool may_split = true;
#endif
  if (may_split && T > 1 && batch == 1 && K > 0 && flops >= kSplitFlopsMin && !omp_in_parallel()) {
    if (M >= kRowSplitMin * T) {
      // c rows [m0, m0 + mc) from a's rows (or, transposed, columns) [m0, m0 + mc).
      const int64_t chunk = round16((M + T - 1) / T);
      // One piece per loop index, not per thread number: where the OpenMP pragmas are not compiled
      // (clang with -fopenmp=libgomp, the sanitizer presets) the loop still does every piece.
#pragma omp parallel for num_threads(T) schedule(static, 1)
      for (int t = 0; t < T; ++t) {
        const int64_t m0 = std::min<int64_t>(M, t * chunk), mc = std::min(chunk, M - m0);
        if (mc > 0)
          matmul_one(a + es * (trans_a ? m0 : m0 * K), b, c + m0 * N, 1, 1, mc, N, K, trans_a, trans_b, bias,
                     accumulate, lda, ldb, true, in);
      }
      return;
    }
    if (K >= kKSplitMin * T && M * N <= (1 << 16)) {
      // Partial products over K [k0, k0 + kc), then c (+)= sum of the partials in thread order.
      const int64_t chunk = round16((K + T - 1) / T);
      Tensor partials = Tensor::empty({static_cast<int64_t>(T), M * N});
      float* part = partials.data();
#pragma omp parallel for num_threads(T) schedule(static, 1)
      for (int t = 0; t < T; ++t) {
        const int64_t k0 = std::min<int64_t>(K, t * chunk), kc = std::min(chunk, K - k0);
        float* out = part + static_cast<int64_t>(t) * M * N;
        if (kc > 0)
          matmul_one(a + es * (trans_a ? k0 * M : k0), b + es * (trans_b ? k0 : k0 * N), out, 1, 1, M, N, kc, trans_a,
                     trans_b, nullptr, false, lda, ldb, true, in);
        else
          std::fill(out, out + M * N, 0.f);
      }
      const int64_t n = M * N;
      for (int64_t i = 0; i < n; ++i) {
        float v = part[i];
        for (int t = 1; t < T; ++t) v += part[static_cast<int64_t>(t) * n + i];
        if (bias) v += bias[i % N];
        c[i] = accumulate ? c[i] + v : v;
      }
      return;
    }
  }
  matmul_one(a, b, c, batch, b_batch, M, N, K, trans_a, trans_b, bias, accumulate, lda, ldb, false, in);
}

void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols) {
  const auto md = md2(rows, cols);
  const Cached& p = cached(fmt::format("smf {} {}", rows, cols), [&] {
    dnnl::softmax_forward::desc d(dnnl::prop_kind::forward_training, md, 1);
    return make_cached<dnnl::softmax_forward>(dnnl::softmax_forward::primitive_desc(d, user_scratchpad(), engine()));
  });
  run(p, {{DNNL_ARG_SRC, mem(md, x)}, {DNNL_ARG_DST, mem(md, y)}});
}

void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  const auto md = md2(rows, cols);
  const Cached& p = cached(fmt::format("smb {} {}", rows, cols), [&] {
    dnnl::softmax_forward::desc fd(dnnl::prop_kind::forward_training, md, 1);
    dnnl::softmax_forward::primitive_desc fpd(fd, engine());
    dnnl::softmax_backward::desc d(md, md, 1);
    return make_cached<dnnl::softmax_backward>(dnnl::softmax_backward::primitive_desc(d, user_scratchpad(), engine(), fpd));
  });
  run(p, {{DNNL_ARG_DST, mem(md, y)}, {DNNL_ARG_DIFF_DST, mem(md, dy)}, {DNNL_ARG_DIFF_SRC, mem(md, dx)}});
}

namespace {
const auto kLnFlags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
memory::desc stat_md(int64_t rows) { return memory::desc({rows}, dt::f32, tag::a); }
memory::desc vec_md(int64_t n) { return memory::desc({n}, dt::f32, tag::a); }
dnnl::layer_normalization_forward::primitive_desc ln_fwd_pd(int64_t rows, int64_t cols, float eps) {
  dnnl::layer_normalization_forward::desc d(dnnl::prop_kind::forward_training, md2(rows, cols), stat_md(rows), eps,
                                            kLnFlags);
  return dnnl::layer_normalization_forward::primitive_desc(d, user_scratchpad(), engine());
}
// The arguments forward and backward share: x [rows, cols], the row mean and variance [rows],
// gamma and beta [cols].
std::unordered_map<int, memory> ln_args(int64_t rows, int64_t cols, const float* x, const float* mean,
                                        const float* variance, const float* gamma, const float* beta) {
  return {{DNNL_ARG_SRC, mem(md2(rows, cols), x)},
          {DNNL_ARG_MEAN, mem(stat_md(rows), mean)},
          {DNNL_ARG_VARIANCE, mem(stat_md(rows), variance)},
          {DNNL_ARG_SCALE, mem(vec_md(cols), gamma)},
          {DNNL_ARG_SHIFT, mem(vec_md(cols), beta)}};
}
}  // namespace

void layer_norm_forward(const float* x, const float* gamma, const float* beta, float* y, float* mean,
                        float* variance, int64_t rows, int64_t cols, float eps) {
  const Cached& p = cached(fmt::format("lnf {} {} {}", rows, cols, eps),
                           [&] { return make_cached<dnnl::layer_normalization_forward>(ln_fwd_pd(rows, cols, eps)); });
  auto args = ln_args(rows, cols, x, mean, variance, gamma, beta);
  args.emplace(DNNL_ARG_DST, mem(md2(rows, cols), y));
  run(p, std::move(args));
}

void layer_norm_backward(const float* x, const float* dy, const float* gamma, const float* beta, const float* mean,
                         const float* variance, float* dx, float* dgamma, float* dbeta, int64_t rows,
                         int64_t cols, float eps) {
  const Cached& p = cached(fmt::format("lnb {} {} {}", rows, cols, eps), [&] {
    dnnl::layer_normalization_backward::desc d(dnnl::prop_kind::backward, md2(rows, cols), md2(rows, cols),
                                               stat_md(rows), eps, kLnFlags);
    return make_cached<dnnl::layer_normalization_backward>(dnnl::layer_normalization_backward::primitive_desc(d, user_scratchpad(), engine(),
                                                                          ln_fwd_pd(rows, cols, eps)));
  });
  auto args = ln_args(rows, cols, x, mean, variance, gamma, beta);
  args.emplace(DNNL_ARG_DIFF_DST, mem(md2(rows, cols), dy));
  args.emplace(DNNL_ARG_DIFF_SRC, mem(md2(rows, cols), dx));
  args.emplace(DNNL_ARG_DIFF_SCALE, mem(vec_md(cols), dgamma));
  args.emplace(DNNL_ARG_DIFF_SHIFT, mem(vec_md(cols), dbeta));
  run(p, std::move(args));
}

namespace {
struct EltAlg {
  dnnl::algorithm alg;
  bool uses_dst;
  float alpha_default;
};
EltAlg elt_alg(Eltwise k) {
  using A = dnnl::algorithm;
  switch (k) {
    case Eltwise::gelu: return {A::eltwise_gelu_erf, false, 0.f};
    case Eltwise::relu: return {A::eltwise_relu, false, 0.f};
    case Eltwise::elu: return {A::eltwise_elu, false, 1.f};
    case Eltwise::exp: return {A::eltwise_exp_use_dst_for_bwd, true, 0.f};
    case Eltwise::sigmoid: return {A::eltwise_logistic_use_dst_for_bwd, true, 0.f};
    case Eltwise::silu: return {A::eltwise_swish, false, 1.f};
  }
  return {A::eltwise_relu, false, 0.f};
}
float elt_alpha(Eltwise k, float alpha) { return k == Eltwise::elu ? alpha : elt_alg(k).alpha_default; }
dnnl::eltwise_forward::primitive_desc elt_fwd_pd(Eltwise k, float alpha, int64_t n) {
  dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_training, elt_alg(k).alg, vec_md(n), elt_alpha(k, alpha), 0.f);
  return dnnl::eltwise_forward::primitive_desc(d, user_scratchpad(), engine());
}
}  // namespace

bool eltwise_backward_uses_output(Eltwise kind) { return elt_alg(kind).uses_dst; }

void eltwise_forward(Eltwise kind, float alpha, const float* x, float* y, int64_t n) {
  if (n == 0) return;
  const Cached& p = cached(fmt::format("ef {} {} {}", int(kind), alpha, n),
                           [&] { return make_cached<dnnl::eltwise_forward>(elt_fwd_pd(kind, alpha, n)); });
  run(p, {{DNNL_ARG_SRC, mem(vec_md(n), x)}, {DNNL_ARG_DST, mem(vec_md(n), y)}});
}

void eltwise_backward(Eltwise kind, float alpha, const float* saved, const float* dy, float* dx, int64_t n) {
  if (n == 0) return;
  const Cached& p = cached(fmt::format("eb {} {} {}", int(kind), alpha, n), [&] {
    dnnl::eltwise_backward::desc d(elt_alg(kind).alg, vec_md(n), vec_md(n), elt_alpha(kind, alpha), 0.f);
    return make_cached<dnnl::eltwise_backward>(
        dnnl::eltwise_backward::primitive_desc(d, user_scratchpad(), engine(), elt_fwd_pd(kind, alpha, n)));
  });
  run(p, {{elt_alg(kind).uses_dst ? DNNL_ARG_DST : DNNL_ARG_SRC, mem(vec_md(n), saved)},
          {DNNL_ARG_DIFF_DST, mem(vec_md(n), dy)},
          {DNNL_ARG_DIFF_SRC, mem(vec_md(n), dx)}});
}

namespace {
std::unique_ptr<tbb::global_control>& tbb_limit() {
  static std::unique_ptr<tbb::global_control> g;
  return g;
}
int g_threads = 0;
}  // namespace

void set_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  g_threads = n;
#if ATTNBENCH_PLAIN_THREADS
  omp_set_num_threads(1);  // TSan build: oneDNN's uninstrumented OpenMP stays single-threaded
#else
  omp_set_num_threads(n);
#endif
  tbb_limit() = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                      static_cast<size_t>(n));
}

#if ATTNBENCH_PLAIN_THREADS
// OMP_NUM_THREADS is read once as our loops' default; oneDNN's OpenMP is then held to one thread.
const int g_default_threads = [] {
  const int n = omp_get_max_threads();
  omp_set_num_threads(1);
  return n;
}();
int threads() { return g_threads > 0 ? g_threads : g_default_threads; }
#else
int threads() { return g_threads > 0 ? g_threads : omp_get_max_threads(); }
#endif

const char* onednn_version() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return fmt::format("{}.{}.{} ({}, cpu runtime {})", ver->major, ver->minor, ver->patch, ver->hash,
                       ver->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other");
  }();
  return v.c_str();
}

void add_inplace(float* y, const float* x, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] += x[i];
  });
}

}  // namespace ab::kernels

#include <tbb/version.h>
namespace ab::kernels {
const char* tbb_version() { return TBB_runtime_version(); }
}  // namespace ab::kernels
