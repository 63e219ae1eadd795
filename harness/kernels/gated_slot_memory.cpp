// GSA's key memory: the value-side gated scan and its hand-written backward (see
// gated_slot_memory.hpp for the maths). TBB over batch * head; per (batch, head) the loops are
// sequential over positions, the inner loops run over the slots m or the key width dk.
#include "attnbench/kernels/gated_slot_memory.hpp"
#include "attnbench/params.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "core/backend/onednn.hpp"
#include "kernels/detail/vec.hpp"

namespace ab {

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("gated_slot_memory: " + what);
}

struct Dims {
  int64_t B, H, N, K, M;  // K = dk, M = slots
};

Dims check_shapes(const Tensor& q, const Tensor& k, const Tensor& s, const Tensor& g) {
  require(q.rank() == 4 && s.rank() == 4,
          fmt::format("q {} and s {} must be rank 4", shape_str(q.shape()), shape_str(s.shape())));
  const Dims d{q.dim(0), q.dim(1), q.dim(2), q.dim(3), s.dim(3)};
  require(k.shape() == q.shape(), fmt::format("k {} must have the shape of q {}", shape_str(k.shape()), shape_str(q.shape())));
  const Shape slots{d.B, d.H, d.N, d.M};
  require(s.shape() == slots && g.shape() == slots,
          fmt::format("s {} and log_alpha {} must be {}", shape_str(s.shape()), shape_str(g.shape()), shape_str(slots)));
  return d;
}

// One (batch, head): q, k [N, K], s, g [N, M]; position of scan step n.
struct Slice {
  const float *q, *k, *s, *g;
  int64_t N, K, M;
  bool reverse;
  int64_t pos(int64_t n) const { return reverse ? N - 1 - n : n; }
};

Slice slice_of(const Dims& d, const float* q, const float* k, const float* s, const float* g, int64_t bh, bool rev) {
  return {q + bh * d.N * d.K, k + bh * d.N * d.K, s + bh * d.N * d.M, g + bh * d.N * d.M, d.N, d.K, d.M, rev};
}

// a[j] = exp(g[j])
void decays(const float* g, float* a, int64_t M) {
  for (int64_t j = 0; j < M; ++j) a[j] = std::exp(g[j]);
}

// o [N, M]. State transposed, S [K, M] (S[i, j] = K~[j, i]): the update and the read are one pass
// over it, both vectorised over the slots.
void scan_forward(const Slice& x, float* o) {
  const int64_t K = x.K, M = x.M;
  std::vector<float> S(static_cast<size_t>(K * M), 0.f), a(static_cast<size_t>(M));
  for (int64_t n = 0; n < x.N; ++n) {
    const int64_t t = x.pos(n);
    const float *qt = x.q + t * K, *kt = x.k + t * K, *st = x.s + t * M;
    float* __restrict ot = o + t * M;
    decays(x.g + t * M, a.data(), M);
    std::fill(ot, ot + M, 0.f);
    for (int64_t i = 0; i < K; ++i) {
      float* __restrict row = S.data() + i * M;
      const float ki = kt[i], qi = qt[i];
      for (int64_t j = 0; j < M; ++j) {
        row[j] = a[j] * row[j] + ki * st[j];
        ot[j] += qi * row[j];
      }
    }
  }
}

// dO, o [N, M] -> dq, dk [N, K], ds, dg [N, M] (dg may be null).
void scan_backward(const Slice& x, const float* o, const float* dO, float* dq, float* dk, float* ds, float* dg) {
  const int64_t K = x.K, M = x.M;
  std::vector<float> S(static_cast<size_t>(M * K), 0.f), a(static_cast<size_t>(M));
  // Forward sweep, K~ [M, K]: dq_t = K~_t^T do_t.
  for (int64_t n = 0; n < x.N; ++n) {
    const int64_t t = x.pos(n);
    const float *kt = x.k + t * K, *st = x.s + t * M, *dot_ = dO + t * M;
    float* __restrict dqt = dq + t * K;
    decays(x.g + t * M, a.data(), M);
    std::fill(dqt, dqt + K, 0.f);
    for (int64_t j = 0; j < M; ++j) {
      float* __restrict row = S.data() + j * K;
      const float aj = a[j], sj = st[j], dj = dot_[j];
      for (int64_t i = 0; i < K; ++i) {
        row[i] = aj * row[i] + sj * kt[i];
        dqt[i] += dj * row[i];
      }
    }
  }
  // Reverse sweep, P [M, K]: P_t = do_t q_t^T + diag(alpha_{t+1}) P_{t+1}.
  std::fill(S.begin(), S.end(), 0.f);
  std::fill(a.begin(), a.end(), 1.f);  // alpha of the following step (none after the last)
  std::vector<double> acc(static_cast<size_t>(M), 0.0);
  for (int64_t n = x.N - 1; n >= 0; --n) {
    const int64_t t = x.pos(n);
    const float *qt = x.q + t * K, *kt = x.k + t * K, *st = x.s + t * M, *dot_ = dO + t * M;
    float* __restrict dkt = dk + t * K;
    float* dst = ds + t * M;
    std::fill(dkt, dkt + K, 0.f);
    for (int64_t j = 0; j < M; ++j) {
      float* __restrict row = S.data() + j * K;
      const float aj = a[j], dj = dot_[j], sj = st[j];
      for (int64_t i = 0; i < K; ++i) {
        row[i] = aj * row[i] + dj * qt[i];
        dkt[i] += sj * row[i];
      }
      dst[j] = vec::dot(row, kt, K);
    }
    if (dg) {
      const float* ot = o + t * M;
      for (int64_t j = 0; j < M; ++j) {
        acc[j] += double(dot_[j]) * ot[j] - double(st[j]) * dst[j];
        dg[t * M + j] = static_cast<float>(acc[j]);
      }
    }
    decays(x.g + t * M, a.data(), M);
  }
}

}  // namespace

Var gated_slot_memory(const Var& q, const Var& k, const Var& s, const Var& log_alpha, bool reverse) {
  const Dims d = check_shapes(q.value(), k.value(), s.value(), log_alpha.value());
  const int64_t BH = d.B * d.H;
  Tensor out = Tensor::empty({d.B, d.H, d.N, d.M});
  {
    const float *qp = q.value().data(), *kp = k.value().data(), *sp = s.value().data(), *gp = log_alpha.value().data();
    float* op = out.data();
    kernels::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh) scan_forward(slice_of(d, qp, kp, sp, gp, bh, reverse), op + bh * d.N * d.M);
    });
  }
  const GradSink gq = q.sink(), gk = k.sink(), gs = s.sink(), gg = log_alpha.sink();
  const Tensor qv = q.value(), kv = k.value(), sv = s.value(), lv = log_alpha.value(), ov = out;
  return make_op_result(std::move(out), {q, k, s, log_alpha},
                        [gq, gk, gs, gg, qv, kv, sv, lv, ov, d, reverse](const Tensor& grad) {
    const int64_t BH = d.B * d.H;
    Tensor dq = Tensor::empty(qv.shape()), dk = Tensor::empty(kv.shape()), ds = Tensor::empty(sv.shape());
    Tensor dg = gg.wanted() ? Tensor::empty(lv.shape()) : Tensor();
    const float *qp = qv.data(), *kp = kv.data(), *sp = sv.data(), *gp = lv.data(), *op = ov.data(), *dop = grad.data();
    kernels::parallel_for(BH, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh) {
        const int64_t kk = bh * d.N * d.K, mm = bh * d.N * d.M;
        scan_backward(slice_of(d, qp, kp, sp, gp, bh, reverse), op + mm, dop + mm, dq.data() + kk, dk.data() + kk,
                      ds.data() + mm, dg.defined() ? dg.data() + mm : nullptr);
      }
    });
    if (gq.wanted()) gq.accumulate(dq);
    if (gk.wanted()) gk.accumulate(dk);
    if (gs.wanted()) gs.accumulate(ds);
    if (gg.wanted()) gg.accumulate(dg);
  });
}

Var gated_slot_memory_mix(const Var& q, const Var& k, const Var& s, const Var& log_alpha, bool causal) {
  if (causal) return gated_slot_memory(q, k, s, log_alpha, false);
  return add(gated_slot_memory(q, k, s, log_alpha, false), gated_slot_memory(q, k, s, log_alpha, true));
}

// ---- decoding ----
GatedSlotMemoryState::GatedSlotMemoryState(int64_t batch, int64_t heads, int64_t slots, int64_t key_dim)
    : batch_(batch), heads_(heads), m_(slots), dk_(key_dim), s_(Tensor::zeros({batch, heads, slots, key_dim})) {}

Tensor GatedSlotMemoryState::step(const Tensor& q_t, const Tensor& k_t, const Tensor& s_t, const Tensor& log_alpha_t) {
  const Dims d = check_shapes(q_t, k_t, s_t, log_alpha_t);
  require(d.B == batch_ && d.H == heads_ && d.N == 1 && d.K == dk_ && d.M == m_,
          fmt::format("decode step q {} / s {} does not fit the state [{}, {}, {}, {}]", shape_str(q_t.shape()),
                      shape_str(s_t.shape()), batch_, heads_, m_, dk_));
  Tensor o = Tensor::empty({d.B, d.H, 1, m_});
  for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
    const float *q = q_t.data() + bh * dk_, *k = k_t.data() + bh * dk_, *s = s_t.data() + bh * m_,
                *g = log_alpha_t.data() + bh * m_;
    for (int64_t j = 0; j < m_; ++j) {  // K~ row j = alpha_j K~ row j + s_j k; o_j = K~ row j . q
      float* row = s_.data() + (bh * m_ + j) * dk_;
      const float a = std::exp(g[j]);
      for (int64_t i = 0; i < dk_; ++i) row[i] = a * row[i] + s[j] * k[i];
      o.data()[bh * m_ + j] = vec::dot(row, q, dk_);
    }
  }
  return o;
}

}  // namespace ab
