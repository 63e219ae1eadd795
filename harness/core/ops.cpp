// Differentiable ops. Forward kernels run eagerly; each backward closure captures only what its
// gradient needs. Reductions use fixed chunking so results do not depend on the thread count.
#include "attnbench/ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

#include "attnbench/params.hpp"
#include "core/backend/onednn.hpp"

namespace ab {

using kernels::kGrain;
using kernels::parallel_for;

namespace {

[[noreturn]] void shape_error(const std::string& op, const std::string& what) {
  throw std::invalid_argument(fmt::format("{}: {}", op, what));
}

int norm_dim(int dim, int rank, const char* op) {
  if (dim < 0) dim += rank;
  if (dim < 0 || dim >= rank) shape_error(op, fmt::format("dimension {} out of range for rank {}", dim, rank));
  return dim;
}

// ---- broadcasting ----
struct Broadcast {
  Shape out;
  std::vector<int64_t> stride_a, stride_b;  // per output dimension; 0 where broadcast
};

std::vector<int64_t> contiguous_strides(const Shape& s) {
  std::vector<int64_t> st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) st[i] = acc, acc *= s[i];
  return st;
}

Broadcast broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t r = std::max(a.size(), b.size());
  Broadcast bc;
  bc.out.assign(r, 1);
  bc.stride_a.assign(r, 0);
  bc.stride_b.assign(r, 0);
  const auto sa = contiguous_strides(a), sb = contiguous_strides(b);
  for (size_t i = 0; i < r; ++i) {
    const int64_t ia = static_cast<int64_t>(i) - static_cast<int64_t>(r - a.size());
    const int64_t ib = static_cast<int64_t>(i) - static_cast<int64_t>(r - b.size());
    const int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1)
      shape_error(op, fmt::format("shapes {} and {} do not broadcast", shape_str(a), shape_str(b)));
    bc.out[i] = std::max(da, db);
    if (ia >= 0 && da != 1) bc.stride_a[i] = sa[ia];
    if (ib >= 0 && db != 1) bc.stride_b[i] = sb[ib];
  }
  return bc;
}

// Calls f(out_index, a_index, b_index) for every output element, row by row in parallel.
template <class F>
void for_each_broadcast(const Broadcast& bc, F&& f) {
  const int r = static_cast<int>(bc.out.size());
  if (r == 0) {
    f(0, 0, 0);
    return;
  }
  const int64_t inner = bc.out[r - 1];
  const int64_t rows = numel(bc.out) / std::max<int64_t>(inner, 1);
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)), [&](int64_t rb, int64_t re) {
    for (int64_t row = rb; row < re; ++row) {
      int64_t rem = row, oa = 0, ob = 0;
      for (int d = r - 2; d >= 0; --d) {
        const int64_t idx = rem % bc.out[d];
        rem /= bc.out[d];
        oa += idx * bc.stride_a[d];
        ob += idx * bc.stride_b[d];
      }
      const int64_t sa = bc.stride_a[r - 1], sb = bc.stride_b[r - 1];
      for (int64_t i = 0; i < inner; ++i) f(row * inner + i, oa + i * sa, ob + i * sb);
    }
  });
}

// Sums g (shaped like bc.out) into the shape of one operand (its strides in `strides`).
Tensor reduce_to(const Tensor& g, const Broadcast& bc, const std::vector<int64_t>& strides, const Shape& shape) {
  if (shape == bc.out) return g;
  Tensor out = Tensor::zeros(shape);
  float* o = out.data();
  const float* gp = g.data();
  // Serial: several outputs map to one input element. Only small broadcast operands reach here.
  const int r = static_cast<int>(bc.out.size());
  std::vector<int64_t> idx(r, 0);
  const int64_t n = g.numel();
  int64_t off = 0;
  for (int64_t i = 0; i < n; ++i) {
    o[off] += gp[i];
    for (int d = r - 1; d >= 0; --d) {
      if (++idx[d] < bc.out[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (bc.out[d] - 1);
      idx[d] = 0;
    }
  }
  return out;
}

// out[o, i] = sum_k x[o, k, i] for x viewed as [outer, n, inner]; deterministic chunking.
void sum_middle(const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  constexpr int64_t kChunk = 256;
  if (outer >= 8 || n <= kChunk) {
    parallel_for(outer, 1, [&](int64_t ob, int64_t oe) {
      for (int64_t o = ob; o < oe; ++o) {
        float* dst = out + o * inner;
        std::fill(dst, dst + inner, 0.f);
        for (int64_t k = 0; k < n; ++k) {
          const float* src = x + (o * n + k) * inner;
          for (int64_t i = 0; i < inner; ++i) dst[i] += src[i];
        }
      }
    });
    return;
  }
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> partial(static_cast<size_t>(chunks * outer * inner), 0.f);
  parallel_for(chunks * outer, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t o = c / chunks, ch = c % chunks;
      float* dst = partial.data() + c * inner;
      for (int64_t k = ch * kChunk; k < std::min(n, (ch + 1) * kChunk); ++k) {
        const float* src = x + (o * n + k) * inner;
        for (int64_t i = 0; i < inner; ++i) dst[i] += src[i];
      }
    }
  });
  for (int64_t o = 0; o < outer; ++o) {
    float* dst = out + o * inner;
    std::fill(dst, dst + inner, 0.f);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const float* src = partial.data() + (o * chunks + ch) * inner;
      for (int64_t i = 0; i < inner; ++i) dst[i] += src[i];
    }
  }
}

Tensor map_unary(const Tensor& x, float (*f)(float, float), float arg) {
  Tensor y = Tensor::empty(x.shape());
  const float* xp = x.data();
  float* yp = y.data();
  parallel_for(x.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) yp[i] = f(xp[i], arg);
  });
  return y;
}

}  // namespace

// ---- linear algebra ----
Var matmul(const Var& a, const Var& b, bool trans_a, bool trans_b) {
  const Shape sa = a.shape(), sb = b.shape();
  if (sa.size() < 2 || sb.size() < 2) shape_error("matmul", "operands need rank >= 2");
  const int64_t M = trans_a ? sa[sa.size() - 1] : sa[sa.size() - 2];
  const int64_t K = trans_a ? sa[sa.size() - 2] : sa[sa.size() - 1];
  const int64_t Kb = trans_b ? sb[sb.size() - 1] : sb[sb.size() - 2];
  const int64_t N = trans_b ? sb[sb.size() - 2] : sb[sb.size() - 1];
  if (K != Kb) shape_error("matmul", fmt::format("inner dimensions differ: {} vs {} ({} x {}, trans {} {})", K, Kb,
                                                 shape_str(sa), shape_str(sb), trans_a, trans_b));
  const Shape batch_shape(sa.begin(), sa.end() - 2);
  const int64_t batch = numel(batch_shape);
  const bool shared_b = sb.size() == 2;
  if (!shared_b && Shape(sb.begin(), sb.end() - 2) != batch_shape)
    shape_error("matmul", fmt::format("batch dimensions differ: {} vs {}", shape_str(sa), shape_str(sb)));
  const int64_t b_batch = shared_b ? 1 : batch;
  Shape out_shape = batch_shape;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor c = Tensor::empty(out_shape);
  kernels::matmul(a.value().data(), b.value().data(), c.data(), batch, b_batch, M, N, K, trans_a, trans_b);
  // dA needs B and dB needs A: keep each only if the other gradient is wanted.
  const GradSink ga = a.sink(), gb = b.sink();
  const Tensor av = gb.wanted() ? a.value() : Tensor(), bv = ga.wanted() ? b.value() : Tensor();
  return make_op_result(std::move(c), {a, b}, [ga, gb, av, bv, sa, sb, batch, b_batch, M, N, K, trans_a, trans_b](const Tensor& g) {
    if (ga.wanted()) {
      Tensor da = Tensor::empty(sa);
      if (!trans_a) {
        kernels::matmul(g.data(), bv.data(), da.data(), batch, b_batch, M, K, N, false, !trans_b);
      } else {
        if (b_batch != batch) throw std::logic_error("matmul backward: trans_a with a shared b is not supported");
        kernels::matmul(bv.data(), g.data(), da.data(), batch, batch, K, M, N, trans_b, true);
      }
      ga.accumulate(da);
    }
    if (gb.wanted()) {
      Tensor db = Tensor::empty(sb);
      if (b_batch == batch) {
        if (!trans_b) kernels::matmul(av.data(), g.data(), db.data(), batch, batch, K, N, M, !trans_a, false);
        else kernels::matmul(g.data(), av.data(), db.data(), batch, batch, N, K, M, true, trans_a);
      } else {
        // Shared b: the batch folds into the reduction dimension.
        if (trans_a) throw std::logic_error("matmul backward: trans_a with a shared b is not supported");
        if (!trans_b) kernels::matmul(av.data(), g.data(), db.data(), 1, 1, K, N, batch * M, true, false);
        else kernels::matmul(g.data(), av.data(), db.data(), 1, 1, N, K, batch * M, true, false);
      }
      gb.accumulate(db);
    }
  });
}

Var linear(const Var& x, const Var& w, const Var& bias) {
  const Shape sx = x.shape();
  if (w.rank() != 2 || sx.empty() || sx.back() != w.dim(0))
    shape_error("linear", fmt::format("x {} does not fit weight {}", shape_str(sx), shape_str(w.shape())));
  const int64_t in = w.dim(0), out = w.dim(1), rows = x.value().numel() / in;
  if (bias.defined() && (bias.rank() != 1 || bias.dim(0) != out))
    shape_error("linear", fmt::format("bias {} does not fit {} outputs", shape_str(bias.shape()), out));
  Shape out_shape = sx;
  out_shape.back() = out;
  Tensor y = Tensor::empty(out_shape);
  kernels::matmul(x.value().data(), w.value().data(), y.data(), 1, 1, rows, out, in, false, false,
                  bias.defined() ? bias.value().data() : nullptr);
  std::vector<Var> inputs{x, w};
  if (bias.defined()) inputs.push_back(bias);
  const GradSink gx = x.sink(), gw = w.sink(), gbias = bias.sink();
  const Tensor xv = gw.wanted() ? x.value() : Tensor(), wv = gx.wanted() ? w.value() : Tensor();
  return make_op_result(std::move(y), inputs, [gx, gw, gbias, xv, wv, sx, rows, in, out](const Tensor& g) {
    if (gx.wanted()) {
      Tensor dx = Tensor::empty(sx);
      kernels::matmul(g.data(), wv.data(), dx.data(), 1, 1, rows, in, out, false, true);
      gx.accumulate(dx);
    }
    if (gw.wanted()) {
      Tensor dw = Tensor::empty({in, out});
      kernels::matmul(xv.data(), g.data(), dw.data(), 1, 1, in, out, rows, true, false);
      gw.accumulate(dw);
    }
    if (gbias.wanted()) {
      Tensor db = Tensor::empty({out});
      sum_middle(g.data(), db.data(), 1, rows, out);
      gbias.accumulate(db);
    }
  });
}

// ---- elementwise ----
namespace {
enum class BinOp { add, sub, mul, div, max, min };

inline float bin_apply(BinOp op, float x, float y) {
  switch (op) {
    case BinOp::add: return x + y;
    case BinOp::sub: return x - y;
    case BinOp::mul: return x * y;
    case BinOp::div: return x / y;
    case BinOp::max: return x >= y ? x : y;
    case BinOp::min: return x <= y ? x : y;
  }
  return 0.f;
}
// d(x op y)/dx and d(x op y)/dy; a tie of max / min goes to x.
inline float bin_dx(BinOp op, float x, float y) {
  switch (op) {
    case BinOp::mul: return y;
    case BinOp::div: return 1.f / y;
    case BinOp::max: return x >= y ? 1.f : 0.f;
    case BinOp::min: return x <= y ? 1.f : 0.f;
    default: return 1.f;
  }
}
inline float bin_dy(BinOp op, float x, float y) {
  switch (op) {
    case BinOp::mul: return x;
    case BinOp::div: return -x / (y * y);
    case BinOp::max: return x >= y ? 0.f : 1.f;
    case BinOp::min: return x <= y ? 0.f : 1.f;
    case BinOp::sub: return -1.f;
    default: return 1.f;
  }
}

Var binary(const Var& a, const Var& b, BinOp op, const char* name) {
  const Broadcast bc = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor y = Tensor::empty(bc.out);
  const float* ap = a.value().data();
  const float* bp = b.value().data();
  float* yp = y.data();
  if (a.shape() == b.shape()) {
    parallel_for(y.numel(), kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) yp[i] = bin_apply(op, ap[i], bp[i]);
    });
  } else {
    for_each_broadcast(bc, [&](int64_t o, int64_t ia, int64_t ib) { yp[o] = bin_apply(op, ap[ia], bp[ib]); });
  }
  // add / sub read no values in backward; mul's gradient of each operand reads the other; div's
  // gradient of a reads b, of b both; max / min compare both.
  const GradSink ga = a.sink(), gb = b.sink();
  const bool linear_op = op == BinOp::add || op == BinOp::sub;
  const bool need_a = !linear_op && (op == BinOp::max || op == BinOp::min ? ga.wanted() || gb.wanted() : gb.wanted());
  const bool need_b = !linear_op && (op == BinOp::mul ? ga.wanted() : ga.wanted() || gb.wanted());
  const Tensor av = need_a ? a.value() : Tensor(), bv = need_b ? b.value() : Tensor();
  return make_op_result(std::move(y), {a, b}, [ga, gb, av, bv, sa = a.shape(), sb = b.shape(), bc, op, linear_op](const Tensor& g) {
    const float* gp = g.data();
    const float* ap = av.defined() ? av.data() : nullptr;
    const float* bp = bv.defined() ? bv.data() : nullptr;
    auto grad_for = [&](const GradSink& self, const Shape& self_shape, const std::vector<int64_t>& self_st, bool is_a) {
      if (!self.wanted()) return;
      if (linear_op) {
        Tensor r = reduce_to(g, bc, self_st, self_shape);
        if (!is_a && op == BinOp::sub) r = map_unary(r, [](float v, float) { return -v; }, 0.f);
        self.accumulate(r);
        return;
      }
      Tensor full = Tensor::empty(bc.out);
      float* fp = full.data();
      for_each_broadcast(bc, [&](int64_t o, int64_t ia, int64_t ib) {
        const float x = ap ? ap[ia] : 0.f, yv = bp ? bp[ib] : 0.f;  // an operand not saved is not read
        fp[o] = gp[o] * (is_a ? bin_dx(op, x, yv) : bin_dy(op, x, yv));
      });
      self.accumulate(reduce_to(full, bc, self_st, self_shape));
    };
    grad_for(ga, sa, bc.stride_a, true);
    grad_for(gb, sb, bc.stride_b, false);
  });
}

// y = f(x) elementwise; backward dx = g * df(s), s = y when df_of_y (saves y) else x (saves x).
template <class F, class DF>
Var pointwise(const Var& x, F f, DF df, bool df_of_y) {
  Tensor y = Tensor::empty(x.shape());
  const float* xp = x.value().data();
  float* yp = y.data();
  parallel_for(y.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) yp[i] = f(xp[i]);
  });
  const Tensor saved = df_of_y ? y : x.value();
  return make_op_result(std::move(y), {x}, [gx = x.sink(), saved, df](const Tensor& g) {
    Tensor dx = Tensor::empty(saved.shape());
    const float* sp = saved.data();
    const float* gp = g.data();
    float* dp = dx.data();
    parallel_for(dx.numel(), kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dp[i] = gp[i] * df(sp[i]);
    });
    gx.accumulate(dx);
  });
}
}  // namespace

Var add(const Var& a, const Var& b) { return binary(a, b, BinOp::add, "add"); }
Var sub(const Var& a, const Var& b) { return binary(a, b, BinOp::sub, "sub"); }
Var mul(const Var& a, const Var& b) { return binary(a, b, BinOp::mul, "mul"); }
Var div(const Var& a, const Var& b) { return binary(a, b, BinOp::div, "div"); }
Var maximum(const Var& a, const Var& b) { return binary(a, b, BinOp::max, "maximum"); }
Var minimum(const Var& a, const Var& b) { return binary(a, b, BinOp::min, "minimum"); }

Var reciprocal(const Var& x) {
  return pointwise(x, [](float v) { return 1.f / v; }, [](float y) { return -y * y; }, true);
}
Var sqrt(const Var& x) {
  return pointwise(x, [](float v) { return std::sqrt(v); }, [](float y) { return 0.5f / y; }, true);
}
Var rsqrt(const Var& x) {
  return pointwise(x, [](float v) { return 1.f / std::sqrt(v); }, [](float y) { return -0.5f * y * y * y; }, true);
}
Var pow(const Var& x, float p) {
  return pointwise(x, [p](float v) { return std::pow(v, p); }, [p](float v) { return p * std::pow(v, p - 1.f); }, false);
}
Var abs(const Var& x) {
  return pointwise(x, [](float v) { return std::fabs(v); }, [](float v) { return v > 0.f ? 1.f : v < 0.f ? -1.f : 0.f; },
                   false);
}
Var clamp(const Var& x, float lo, float hi) {
  if (!(lo <= hi)) throw std::invalid_argument(fmt::format("clamp: lo {} is above hi {}", lo, hi));
  return pointwise(x, [lo, hi](float v) { return std::min(std::max(v, lo), hi); },
                   [lo, hi](float v) { return v > lo && v < hi ? 1.f : 0.f; }, false);
}

Var scale(const Var& a, float s) {
  Tensor y = map_unary(a.value(), [](float v, float k) { return v * k; }, s);
  return make_op_result(std::move(y), {a}, [ga = a.sink(), s](const Tensor& g) {
    ga.accumulate(map_unary(g, [](float v, float k) { return v * k; }, s));
  });
}

Var add_scalar(const Var& a, float s) {
  Tensor y = map_unary(a.value(), [](float v, float k) { return v + k; }, s);
  return make_op_result(std::move(y), {a}, [ga = a.sink()](const Tensor& g) { ga.accumulate(g); });
}

// ---- shape ----
Var reshape(const Var& a, Shape shape) {
  Tensor y = a.value().reshape(std::move(shape));
  return make_op_result(std::move(y), {a}, [ga = a.sink()](const Tensor& g) { ga.accumulate(g); });
}

namespace {
// out = permute(x, perm); out dim i is x dim perm[i]. The last dimension is copied as a run when it stays last.
Tensor permute_tensor(const Tensor& x, const std::vector<int>& perm) {
  const int r = x.rank();
  Shape out_shape(r);
  const auto xs = contiguous_strides(x.shape());
  std::vector<int64_t> src_stride(r);
  for (int i = 0; i < r; ++i) out_shape[i] = x.dim(perm[i]), src_stride[i] = xs[perm[i]];
  Tensor y = Tensor::empty(out_shape);
  if (r == 0 || y.numel() == 0) return y;
  const int64_t inner = out_shape[r - 1], inner_stride = src_stride[r - 1];
  const int64_t rows = y.numel() / inner;
  const float* xp = x.data();
  float* yp = y.data();
  parallel_for(rows, std::max<int64_t>(1, kGrain / inner), [&](int64_t rb, int64_t re) {
    for (int64_t row = rb; row < re; ++row) {
      int64_t rem = row, off = 0;
      for (int d = r - 2; d >= 0; --d) {
        off += (rem % out_shape[d]) * src_stride[d];
        rem /= out_shape[d];
      }
      float* dst = yp + row * inner;
      if (inner_stride == 1) std::memcpy(dst, xp + off, static_cast<size_t>(inner) * sizeof(float));
      else
        for (int64_t i = 0; i < inner; ++i) dst[i] = xp[off + i * inner_stride];
    }
  });
  return y;
}
}  // namespace

Var permute(const Var& a, const std::vector<int>& perm) {
  const int r = a.rank();
  std::vector<int> p(perm);
  if (static_cast<int>(p.size()) != r) shape_error("permute", fmt::format("{} axes for rank {}", p.size(), r));
  std::vector<int> inverse(r, -1);
  for (int i = 0; i < r; ++i) {
    p[i] = norm_dim(p[i], r, "permute");
    if (inverse[p[i]] >= 0) shape_error("permute", "repeated axis");
    inverse[p[i]] = i;
  }
  return make_op_result(permute_tensor(a.value(), p), {a},
                        [ga = a.sink(), inverse](const Tensor& g) { ga.accumulate(permute_tensor(g, inverse)); });
}

Var transpose(const Var& a, int d0, int d1) {
  std::vector<int> perm(a.rank());
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[norm_dim(d0, a.rank(), "transpose")], perm[norm_dim(d1, a.rank(), "transpose")]);
  return permute(a, perm);
}

namespace {
// Copies a block [outer, len, inner] between tensors viewed as [outer, n, inner].
void copy_block(const float* src, int64_t src_n, int64_t src_start, float* dst, int64_t dst_n, int64_t dst_start,
                int64_t outer, int64_t len, int64_t inner) {
  parallel_for(outer, 1, [&](int64_t ob, int64_t oe) {
    for (int64_t o = ob; o < oe; ++o)
      std::memcpy(dst + (o * dst_n + dst_start) * inner, src + (o * src_n + src_start) * inner,
                  static_cast<size_t>(len * inner) * sizeof(float));
  });
}
std::pair<int64_t, int64_t> outer_inner(const Shape& s, int dim) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= s[i];
  for (size_t i = dim + 1; i < s.size(); ++i) inner *= s[i];
  return {outer, inner};
}
}  // namespace

Var slice(const Var& a, int dim, int64_t start, int64_t length) {
  dim = norm_dim(dim, a.rank(), "slice");
  const int64_t n = a.dim(dim);
  if (start < 0 || length < 0 || start + length > n)
    shape_error("slice", fmt::format("[{}, {}) outside dimension {} of size {}", start, start + length, dim, n));
  Shape out_shape = a.shape();
  out_shape[dim] = length;
  const auto oi = outer_inner(a.shape(), dim);
  const int64_t outer = oi.first, inner = oi.second;  // named: clang 14 cannot capture bindings
  Tensor y = Tensor::empty(out_shape);
  copy_block(a.value().data(), n, start, y.data(), length, 0, outer, length, inner);
  return make_op_result(std::move(y), {a}, [ga = a.sink(), sa = a.shape(), start, length, n, outer, inner](const Tensor& g) {
    Tensor da = Tensor::zeros(sa);
    copy_block(g.data(), length, 0, da.data(), n, start, outer, length, inner);
    ga.accumulate(da);
  });
}

Var concat(const std::vector<Var>& parts, int dim) {
  if (parts.empty()) shape_error("concat", "no inputs");
  dim = norm_dim(dim, parts[0].rank(), "concat");
  Shape out_shape = parts[0].shape();
  out_shape[dim] = 0;
  for (const auto& p : parts) {
    Shape s = p.shape();
    if (s.size() != out_shape.size()) shape_error("concat", "ranks differ");
    const int64_t n = s[dim];
    s[dim] = 0;
    Shape ref = out_shape;
    ref[dim] = 0;
    if (s != ref) shape_error("concat", fmt::format("shapes differ outside dimension {}", dim));
    out_shape[dim] += n;
  }
  const auto oi = outer_inner(out_shape, dim);
  const int64_t outer = oi.first, inner = oi.second;  // named: clang 14 cannot capture bindings
  const int64_t total = out_shape[dim];
  Tensor y = Tensor::empty(out_shape);
  int64_t at = 0;
  for (const auto& p : parts) {
    copy_block(p.value().data(), p.dim(dim), 0, y.data(), total, at, outer, p.dim(dim), inner);
    at += p.dim(dim);
  }
  std::vector<std::pair<GradSink, Shape>> sinks;
  for (const auto& p : parts) sinks.emplace_back(p.sink(), p.shape());
  return make_op_result(std::move(y), parts, [sinks, dim, total, outer, inner](const Tensor& g) {
    int64_t at = 0;
    for (const auto& [sink, shape] : sinks) {
      const int64_t n = shape[dim];
      if (sink.wanted()) {
        Tensor dp = Tensor::empty(shape);
        copy_block(g.data(), total, at, dp.data(), n, 0, outer, n, inner);
        sink.accumulate(dp);
      }
      at += n;
    }
  });
}

namespace {
// Checks index [outer, m, inner] against x [outer, n, inner] (same dims except `dim`, ids in [0, n)).
void check_index(const Shape& xs, int dim, const std::vector<int32_t>& index, const Shape& is) {
  Shape a = xs, b = is;
  if (a.size() != b.size()) shape_error("gather", fmt::format("index {} and x {} differ in rank", shape_str(is), shape_str(xs)));
  a[dim] = b[dim] = 0;
  if (a != b) shape_error("gather", fmt::format("index {} must match x {} outside dimension {}", shape_str(is), shape_str(xs), dim));
  if (static_cast<int64_t>(index.size()) != numel(is))
    shape_error("gather", fmt::format("{} ids for index shape {}", index.size(), shape_str(is)));
  for (size_t i = 0; i < index.size(); ++i)
    if (index[i] < 0 || index[i] >= xs[dim])
      throw std::invalid_argument(fmt::format("gather: id {} at {} is outside [0, {})", index[i], i, xs[dim]));
}
}  // namespace

Var gather(const Var& x, int dim, const std::vector<int32_t>& index, const Shape& index_shape) {
  dim = norm_dim(dim, x.rank(), "gather");
  check_index(x.shape(), dim, index, index_shape);
  const auto oi = outer_inner(x.shape(), dim);
  const int64_t outer = oi.first, inner = oi.second;  // named: clang 14 cannot capture bindings
  const int64_t n = x.dim(dim), m = index_shape[dim];
  // x: [outer, n, inner], index and y: [outer, m, inner]
  Tensor y = Tensor::empty(index_shape);
  const float* xp = x.value().data();
  float* yp = y.data();
  parallel_for(outer * m, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t i = 0; i < inner; ++i) yp[r * inner + i] = xp[((r / m) * n + index[r * inner + i]) * inner + i];
  });
  return make_op_result(std::move(y), {x}, [gx = x.sink(), sx = x.shape(), index, outer, n, m, inner](const Tensor& g) {
    Tensor dx = Tensor::zeros(sx);
    const float* gp = g.data();
    float* dp = dx.data();
    // Parallel over `outer` only: ids may repeat within one [m, inner] block.
    parallel_for(outer, 1, [&](int64_t ob, int64_t oe) {
      for (int64_t o = ob; o < oe; ++o)
        for (int64_t j = 0; j < m; ++j)
          for (int64_t i = 0; i < inner; ++i) {
            const int64_t at = (o * m + j) * inner + i;
            dp[(o * n + index[at]) * inner + i] += gp[at];
          }
    });
    gx.accumulate(dx);
  });
}

// ---- normalisation and activations ----
Var softmax(const Var& x, const Tensor* additive_mask) {
  const int64_t cols = x.shape().back(), rows = x.value().numel() / std::max<int64_t>(cols, 1);
  Tensor y = Tensor::empty(x.shape());
  if (additive_mask) {
    const Broadcast bc = broadcast_shapes(x.shape(), additive_mask->shape(), "softmax mask");
    if (bc.out != x.shape())
      shape_error("softmax", fmt::format("mask {} does not broadcast to {}", shape_str(additive_mask->shape()),
                                         shape_str(x.shape())));
    const float* xp = x.value().data();
    const float* mp = additive_mask->data();
    float* yp = y.data();
    for_each_broadcast(bc, [&](int64_t o, int64_t ia, int64_t ib) { yp[o] = xp[ia] + mp[ib]; });
    kernels::softmax_forward(y.data(), y.data(), rows, cols);
  } else {
    kernels::softmax_forward(x.value().data(), y.data(), rows, cols);
  }
  Tensor saved = y;
  return make_op_result(std::move(y), {x}, [gx = x.sink(), saved, rows, cols](const Tensor& g) {
    Tensor dx = Tensor::empty(saved.shape());
    kernels::softmax_backward(saved.data(), g.data(), dx.data(), rows, cols);
    gx.accumulate(dx);
  });
}

namespace {
// Row maximum and sum of exp(r - max) in double: the stable log-sum-exp of one row of logits.
std::pair<float, double> row_max_and_sum(const float* r, int64_t C) {
  const float mx = *std::max_element(r, r + C);
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += std::exp(static_cast<double>(r[c] - mx));
  return {mx, s};
}
}  // namespace

Var log_softmax(const Var& x) {
  const int64_t cols = x.shape().back(), rows = x.value().numel() / std::max<int64_t>(cols, 1);
  Tensor y = Tensor::empty(x.shape());
  const float* xp = x.value().data();
  float* yp = y.data();
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const auto [mx, s] = row_max_and_sum(xp + r * cols, cols);
      const float lse = static_cast<float>(std::log(s)) + mx;
      for (int64_t c = 0; c < cols; ++c) yp[r * cols + c] = xp[r * cols + c] - lse;
    }
  });
  Tensor saved = y;
  return make_op_result(std::move(y), {x}, [gx = x.sink(), saved, rows, cols](const Tensor& g) {
    // dx = g - softmax(x) * sum(g), softmax(x) = exp(y)
    Tensor dx = Tensor::empty(saved.shape());
    const float* yp = saved.data();
    const float* gp = g.data();
    float* dp = dx.data();
    parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        double gs = 0;
        for (int64_t c = 0; c < cols; ++c) gs += gp[r * cols + c];
        for (int64_t c = 0; c < cols; ++c)
          dp[r * cols + c] = gp[r * cols + c] - std::exp(yp[r * cols + c]) * static_cast<float>(gs);
      }
    });
    gx.accumulate(dx);
  });
}

Var layer_norm(const Var& x, const Var& gamma, const Var& beta, float eps) {
  const int64_t cols = x.shape().back(), rows = x.value().numel() / std::max<int64_t>(cols, 1);
  if (gamma.value().numel() != cols || beta.value().numel() != cols)
    shape_error("layer_norm", fmt::format("gamma/beta must have {} elements", cols));
  Tensor y = Tensor::empty(x.shape());
  Tensor mean = Tensor::empty({rows}), var = Tensor::empty({rows});
  kernels::layer_norm_forward(x.value().data(), gamma.value().data(), beta.value().data(), y.data(), mean.data(),
                              var.data(), rows, cols, eps);
  return make_op_result(std::move(y), {x, gamma, beta},
                        [gx = x.sink(), gg = gamma.sink(), gb = beta.sink(), xv = x.value(), gv = gamma.value(),
                         bv = beta.value(), mean, var, rows, cols, eps](const Tensor& g) {
    Tensor dx = Tensor::empty(xv.shape()), dg = Tensor::empty({cols}), db = Tensor::empty({cols});
    kernels::layer_norm_backward(xv.data(), g.data(), gv.data(), bv.data(), mean.data(), var.data(), dx.data(),
                                 dg.data(), db.data(), rows, cols, eps);
    gx.accumulate(dx);
    gg.accumulate(dg);
    gb.accumulate(db);
  });
}

namespace {
// acc[i] = sum_k a[o, k, i] b[o, k, i] in double, for a and b viewed as [outer, n, inner].
void dot_over_middle(const float* a, const float* b, int64_t o, int64_t n, int64_t inner, std::vector<double>& acc) {
  std::fill(acc.begin(), acc.end(), 0.0);
  for (int64_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < inner; ++i) acc[i] += double(a[(o * n + k) * inner + i]) * b[(o * n + k) * inner + i];
}
}  // namespace

Var l2_normalize(const Var& x, int dim, float eps) {
  dim = norm_dim(dim, x.rank(), "l2_normalize");
  const auto oi = outer_inner(x.shape(), dim);
  const int64_t outer = oi.first, inner = oi.second;  // named: clang 14 cannot capture bindings
  const int64_t n = x.dim(dim);
  // x, y: [outer, n, inner]; norm: [outer, inner], max(||x||, eps) over n
  Tensor y = Tensor::empty(x.shape()), norm = Tensor::empty({outer, inner});
  const float* xp = x.value().data();
  float* yp = y.data();
  float* np_ = norm.data();
  parallel_for(outer, 1, [&](int64_t ob, int64_t oe) {
    std::vector<double> ss(static_cast<size_t>(inner));
    for (int64_t o = ob; o < oe; ++o) {
      dot_over_middle(xp, xp, o, n, inner, ss);
      for (int64_t i = 0; i < inner; ++i) np_[o * inner + i] = std::max(static_cast<float>(std::sqrt(ss[i])), eps);
      for (int64_t k = 0; k < n; ++k)
        for (int64_t i = 0; i < inner; ++i) yp[(o * n + k) * inner + i] = xp[(o * n + k) * inner + i] / np_[o * inner + i];
    }
  });
  Tensor saved = y;
  return make_op_result(std::move(y), {x}, [gx = x.sink(), saved, norm, outer, n, inner, eps](const Tensor& g) {
    // dx = (g - y (g . y)) / ||x|| where the norm exceeds eps; g / eps where eps is the divisor.
    Tensor dx = Tensor::empty(saved.shape());
    const float* yp = saved.data();
    const float* gp = g.data();
    const float* np_ = norm.data();
    float* dp = dx.data();
    parallel_for(outer, 1, [&](int64_t ob, int64_t oe) {
      std::vector<double> dot(static_cast<size_t>(inner));
      for (int64_t o = ob; o < oe; ++o) {
        dot_over_middle(gp, yp, o, n, inner, dot);
        for (int64_t k = 0; k < n; ++k)
          for (int64_t i = 0; i < inner; ++i) {
            const int64_t at = (o * n + k) * inner + i;
            const float nv = np_[o * inner + i];
            dp[at] = nv > eps ? (gp[at] - yp[at] * static_cast<float>(dot[i])) / nv : gp[at] / nv;
          }
      }
    });
    gx.accumulate(dx);
  });
}

namespace {
Var eltwise(const Var& x, kernels::Eltwise kind, float alpha) {
  Tensor y = Tensor::empty(x.shape());
  kernels::eltwise_forward(kind, alpha, x.value().data(), y.data(), y.numel());
  const Tensor saved = kernels::eltwise_backward_uses_output(kind) ? y : x.value();
  return make_op_result(std::move(y), {x}, [gx = x.sink(), saved, kind, alpha](const Tensor& g) {
    Tensor dx = Tensor::empty(saved.shape());
    kernels::eltwise_backward(kind, alpha, saved.data(), g.data(), dx.data(), dx.numel());
    gx.accumulate(dx);
  });
}
}  // namespace

Var gelu(const Var& x) { return eltwise(x, kernels::Eltwise::gelu, 0.f); }
Var relu(const Var& x) { return eltwise(x, kernels::Eltwise::relu, 0.f); }
Var elu(const Var& x, float alpha) { return eltwise(x, kernels::Eltwise::elu, alpha); }
Var exp(const Var& x) { return eltwise(x, kernels::Eltwise::exp, 0.f); }
Var sigmoid(const Var& x) { return eltwise(x, kernels::Eltwise::sigmoid, 0.f); }
Var silu(const Var& x) { return eltwise(x, kernels::Eltwise::silu, 0.f); }

// ---- lookup, regularisation, reductions, losses ----
Var embedding(const std::vector<int32_t>& ids, const Shape& ids_shape, const Var& table) {
  if (table.rank() != 2) shape_error("embedding", "table must be [V, D]");
  const int64_t V = table.dim(0), D = table.dim(1), n = numel(ids_shape);
  if (static_cast<int64_t>(ids.size()) != n)
    shape_error("embedding", fmt::format("{} ids for shape {}", ids.size(), shape_str(ids_shape)));
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= V)
      throw std::invalid_argument(fmt::format("embedding: token id {} at position {} is outside [0, {})", ids[i], i, V));
  Shape out_shape = ids_shape;
  out_shape.push_back(D);
  Tensor y = Tensor::empty(out_shape);
  const float* tp = table.value().data();
  float* yp = y.data();
  parallel_for(n, std::max<int64_t>(1, kGrain / D), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(yp + i * D, tp + ids[i] * D, static_cast<size_t>(D) * sizeof(float));
  });
  return make_op_result(std::move(y), {table}, [gt = table.sink(), st = table.shape(), ids, n, D](const Tensor& g) {
    Tensor dt = Tensor::zeros(st);
    float* dp = dt.data();
    const float* gp = g.data();
    for (int64_t i = 0; i < n; ++i)  // serial: tokens repeat
      for (int64_t d = 0; d < D; ++d) dp[ids[i] * D + d] += gp[i * D + d];
    gt.accumulate(dt);
  });
}

namespace {

// Dropout's keep/drop draws: element i of chunk c = i / kDropChunk is decided by a 32-bit integer
// hash of (i mod kDropChunk) keyed by the 4 Philox words of block c of the stream. One Philox
// evaluation per chunk instead of one per 4 elements; the hash is plain 32-bit integer arithmetic
// the compiler vectorises. A draw depends only on the stream and the element index (never on the
// thread count or the chunking of the loop), so backward recomputes the forward's mask.
constexpr int64_t kDropChunk = 1024;

inline uint32_t drop_hash(uint32_t j, uint32_t k0, uint32_t k1, uint32_t k2) {
  uint32_t h = j * 0x9E3779B9u + k0;
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h ^= k1;
  h *= 0x846CA68Bu;
  h ^= h >> 16;
  h += k2;
  h *= 0x21F0AAADu;
  h ^= h >> 15;
  return h;
}

}  // namespace

Var dropout(const Var& x, float p, const RngStream& stream, bool training) {
  if (!training || p <= 0.f) return x;
  if (p >= 1.f) throw std::invalid_argument(fmt::format("dropout: p = {} must be below 1", p));
  const float keep_scale = 1.f / (1.f - p);
  auto apply = [p, keep_scale, stream](const Tensor& in) {
    Tensor out = Tensor::empty(in.shape());
    const float* ip = in.data();
    float* op = out.data();
    // Element i keeps its value iff its draw, as a uniform in [0, 1) (top 24 bits), is >= p.
    const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(p) * 16777216.0);
    const int64_t n = in.numel();
    const int64_t chunks = (n + kDropChunk - 1) / kDropChunk;
    parallel_for(chunks, std::max<int64_t>(1, kGrain / kDropChunk), [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        uint32_t key[4];
        stream.block(static_cast<uint64_t>(c), key);
        const int64_t i0 = c * kDropChunk, m = std::min(kDropChunk, n - i0);
        const float* __restrict src = ip + i0;
        float* __restrict dst = op + i0;
        const uint32_t k0 = key[0], k1 = key[1], k2 = key[2] ^ key[3], thr = threshold;
        const float ks = keep_scale;
        const uint32_t mu = static_cast<uint32_t>(m);
        for (uint32_t j = 0; j < mu; ++j) {  // a select on 32-bit lanes: vectorises
          const uint32_t u = drop_hash(j, k0, k1, k2) >> 8;
          dst[j] = u < thr ? 0.f : src[j] * ks;  // exactly 0 when dropped, even for inf / NaN
        }
      }
    });
    return out;
  };
  // The mask is recomputed from the stream in backward, never stored.
  return make_op_result(apply(x.value()), {x}, [gx = x.sink(), apply](const Tensor& g) { gx.accumulate(apply(g)); });
}

Var sum(const Var& x) {
  const int64_t n = x.value().numel();
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  const float* xp = x.value().data();
  parallel_for(chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double s = 0;
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += xp[i];
      partial[c] = s;
    }
  });
  Tensor y = Tensor::full({1}, static_cast<float>(std::accumulate(partial.begin(), partial.end(), 0.0)));
  return make_op_result(std::move(y), {x}, [gx = x.sink(), sx = x.shape()](const Tensor& g) { gx.accumulate(Tensor::full(sx, g[0])); });
}

Var mean(const Var& x) { return scale(sum(x), 1.f / static_cast<float>(std::max<int64_t>(1, x.value().numel()))); }

namespace {
// The shape of a reduction along `dim`: without it, or with it as 1.
Shape reduced_shape(Shape s, int dim, bool keepdim) {
  if (keepdim) s[dim] = 1;
  else s.erase(s.begin() + dim);
  return s;
}
}  // namespace

Var sum_dim(const Var& x, int dim, bool keepdim) {
  dim = norm_dim(dim, x.rank(), "sum_dim");
  const auto oi = outer_inner(x.shape(), dim);
  const int64_t outer = oi.first, inner = oi.second;  // named: clang 14 cannot capture bindings
  const int64_t n = x.dim(dim);
  const Shape out_shape = reduced_shape(x.shape(), dim, keepdim);
  Tensor y = Tensor::empty(out_shape);
  sum_middle(x.value().data(), y.data(), outer, n, inner);
  return make_op_result(std::move(y), {x}, [gx = x.sink(), sx = x.shape(), outer, inner, n](const Tensor& g) {
    Tensor dx = Tensor::empty(sx);
    const float* gp = g.data();
    float* dp = dx.data();
    parallel_for(outer * n, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        std::memcpy(dp + r * inner, gp + (r / n) * inner, static_cast<size_t>(inner) * sizeof(float));
    });
    gx.accumulate(dx);
  });
}

Var mean_dim(const Var& x, int dim, bool keepdim) {
  const int64_t n = x.dim(norm_dim(dim, x.rank(), "mean_dim"));
  return scale(sum_dim(x, dim, keepdim), 1.f / static_cast<float>(std::max<int64_t>(n, 1)));
}

// The maxima are gathered at their positions, so backward is gather's (routes g to the argmax).
Var max_dim(const Var& x, int dim, bool keepdim) {
  dim = norm_dim(dim, x.rank(), "max_dim");
  const auto oi = outer_inner(x.shape(), dim);
  const int64_t outer = oi.first, inner = oi.second;  // named: clang 14 cannot capture bindings
  const int64_t n = x.dim(dim);
  if (n == 0) shape_error("max_dim", fmt::format("dimension {} of {} is empty", dim, shape_str(x.shape())));
  // x: [outer, n, inner] -> arg: [outer, 1, inner]
  std::vector<int32_t> arg(static_cast<size_t>(outer * inner), 0);
  const float* xp = x.value().data();
  parallel_for(outer, 1, [&](int64_t ob, int64_t oe) {
    for (int64_t o = ob; o < oe; ++o)
      for (int64_t k = 1; k < n; ++k)
        for (int64_t i = 0; i < inner; ++i) {
          int32_t& a = arg[o * inner + i];
          if (xp[(o * n + k) * inner + i] > xp[(o * n + a) * inner + i]) a = static_cast<int32_t>(k);
        }
  });
  const Var m = gather(x, dim, arg, reduced_shape(x.shape(), dim, true));
  return keepdim ? m : reshape(m, reduced_shape(x.shape(), dim, false));
}

Var cumsum(const Var& x, int dim) {
  dim = norm_dim(dim, x.rank(), "cumsum");
  const auto oi = outer_inner(x.shape(), dim);
  const int64_t outer = oi.first, inner = oi.second;  // named: clang 14 cannot capture bindings
  const int64_t n = x.dim(dim);
  // Prefix (forward) or suffix (backward) sums of [outer, n, inner] along n.
  auto scan = [outer, n, inner](const Tensor& in, bool reverse) {
    Tensor y = Tensor::empty(in.shape());
    const float* ip = in.data();
    float* yp = y.data();
    parallel_for(outer, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, n * inner)), [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        const float* xi = ip + o * n * inner;
        float* yo = yp + o * n * inner;
        for (int64_t s = 0; s < n; ++s) {
          const int64_t t = reverse ? n - 1 - s : s;
          const int64_t prev = reverse ? t + 1 : t - 1;
          for (int64_t c = 0; c < inner; ++c) yo[t * inner + c] = xi[t * inner + c] + (s > 0 ? yo[prev * inner + c] : 0.f);
        }
      }
    });
    return y;
  };
  return make_op_result(scan(x.value(), false), {x}, [gx = x.sink(), scan](const Tensor& g) { gx.accumulate(scan(g, true)); });
}

TopK topk(const Var& x, int64_t k) {
  if (x.rank() == 0) shape_error("topk", "x has rank 0");
  const int64_t cols = x.shape().back(), rows = x.value().numel() / std::max<int64_t>(cols, 1);
  if (k < 0 || k > cols) shape_error("topk", fmt::format("k = {} outside [0, {}]", k, cols));
  Shape out_shape = x.shape();
  out_shape.back() = k;
  std::vector<int32_t> idx(static_cast<size_t>(rows * k));
  const float* xp = x.value().data();
  parallel_for(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
    std::vector<int32_t> order(static_cast<size_t>(cols));
    for (int64_t r = b; r < e; ++r) {
      const float* row = xp + r * cols;
      // NaN ranks above everything (as in torch), which also keeps the order strict and weak.
      auto key = [row](int32_t i) { return std::isnan(row[i]) ? std::numeric_limits<float>::infinity() : row[i]; };
      auto before = [&](int32_t i, int32_t j) {
        const float a = key(i), b = key(j);
        return a > b || (a == b && (std::isnan(row[i]) > std::isnan(row[j]) || (std::isnan(row[i]) == std::isnan(row[j]) && i < j)));
      };
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
      std::copy(order.begin(), order.begin() + k, idx.begin() + r * k);
    }
  });
  Var values = gather(x, -1, idx, out_shape);
  return {std::move(values), std::move(idx)};
}

Var cross_entropy(const Var& logits, const std::vector<int32_t>& labels, int32_t ignore_label) {
  if (logits.rank() != 2) shape_error("cross_entropy", "logits must be [M, C]");
  const int64_t M = logits.dim(0), C = logits.dim(1);
  if (static_cast<int64_t>(labels.size()) != M)
    shape_error("cross_entropy", fmt::format("{} labels for {} rows", labels.size(), M));
  int64_t counted = 0;
  for (int64_t i = 0; i < M; ++i) {
    if (labels[i] == ignore_label) continue;
    if (labels[i] < 0 || labels[i] >= C)
      throw std::invalid_argument(fmt::format("cross_entropy: label {} at row {} is outside [0, {})", labels[i], i, C));
    ++counted;
  }
  const float* lp = logits.value().data();
  std::vector<double> row_loss(static_cast<size_t>(M), 0.0);
  parallel_for(M, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (labels[i] == ignore_label) continue;
      const float* r = lp + i * C;
      const auto [mx, s] = row_max_and_sum(r, C);
      row_loss[i] = std::log(s) + mx - r[labels[i]];
    }
  });
  const double total = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  Tensor y = Tensor::full({1}, counted ? static_cast<float>(total / counted) : 0.f);
  return make_op_result(std::move(y), {logits}, [gl = logits.sink(), lv = logits.value(), labels, ignore_label, M, C, counted](const Tensor& g) {
    Tensor d = Tensor::zeros(lv.shape());
    if (counted == 0) return gl.accumulate(d);
    const float* lp = lv.data();
    float* dp = d.data();
    const float k = g[0] / static_cast<float>(counted);
    parallel_for(M, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        if (labels[i] == ignore_label) continue;
        const float* r = lp + i * C;
        const auto [mx, s] = row_max_and_sum(r, C);
        for (int64_t c = 0; c < C; ++c) dp[i * C + c] = static_cast<float>(std::exp(r[c] - mx) / s) * k;
        dp[i * C + labels[i]] -= k;
      }
    });
    gl.accumulate(d);
  });
}

// ---- non-differentiable helpers ----
std::vector<float> kernels::key_keep_flags(const Tensor* mask, int64_t B, int64_t N, const char* op) {
  if (!mask) return {};
  const Shape& s = mask->shape();
  if (!(s.size() == 4 && s[0] == B && s[1] == 1 && s[2] == 1 && s[3] == N))
    throw std::invalid_argument(fmt::format("{}: key mask {} must be [{}, 1, 1, {}]", op, shape_str(s), B, N));
  std::vector<float> keep(static_cast<size_t>(B * N));
  for (int64_t i = 0; i < B * N; ++i) keep[i] = is_padded_key((*mask)[i]) ? 0.f : 1.f;
  return keep;
}

Tensor keep_flags(const Tensor* key_mask, Shape shape) {
  if (!key_mask) return Tensor();
  const Shape& s = key_mask->shape();
  if (!(s.size() == 4 && s[1] == 1 && s[2] == 1 && numel(shape) == s[0] * s[3]))
    throw std::invalid_argument(fmt::format("keep_flags: key mask {} must be [B, 1, 1, N] with B * N = numel of {}",
                                            shape_str(s), shape_str(shape)));
  Tensor keep = Tensor::empty(std::move(shape));
  for (int64_t i = 0; i < keep.numel(); ++i) keep[i] = is_padded_key((*key_mask)[i]) ? 0.f : 1.f;
  return keep;
}

Tensor key_padding_mask(const std::vector<int32_t>& tokens, int64_t batch, int64_t length, int32_t pad_id) {
  Tensor m = Tensor::empty({batch, 1, 1, length});
  for (int64_t i = 0; i < batch * length; ++i)
    m[i] = tokens[i] == pad_id ? -std::numeric_limits<float>::infinity() : 0.f;
  return m;
}

Tensor causal_mask(int64_t length) {
  Tensor m = Tensor::empty({length, length});
  for (int64_t i = 0; i < length; ++i)
    for (int64_t j = 0; j < length; ++j) m[i * length + j] = j > i ? -std::numeric_limits<float>::infinity() : 0.f;
  return m;
}

void set_num_threads(int threads) { kernels::set_threads(threads); }

void set_matmul_precision(const std::string& precision) {
  if (precision != "fp32" && precision != "bf16")
    throw UsageError(unknown_name_message("matmul precision", precision, {"fp32", "bf16"}));
  kernels::set_matmul_precision(precision == "bf16" ? kernels::MatmulPrecision::bf16 : kernels::MatmulPrecision::fp32);
}
int num_threads() { return kernels::threads(); }

}  // namespace ab
