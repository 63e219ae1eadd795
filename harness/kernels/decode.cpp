// Ready-made decode states: the KV cache with exact softmax over it, and the running state of
// causal kernelised attention.
#include "attnbench/kernels/decode.hpp"
#include "attnbench/parallel.hpp"
#include "attnbench/params.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace ab {

KvCache::KvCache(int64_t batch, int64_t heads, int64_t head_dim) : batch_(batch), heads_(heads), dim_(head_dim) {
  grow(16);
}

void KvCache::grow(int64_t capacity) {
  Tensor k = Tensor::empty({batch_, heads_, capacity, dim_}), v = Tensor::empty({batch_, heads_, capacity, dim_});
  for (int64_t bh = 0; bh < batch_ * heads_ && length_ > 0; ++bh) {
    const size_t n = static_cast<size_t>(length_ * dim_) * sizeof(float);
    std::memcpy(k.data() + bh * capacity * dim_, k_.data() + bh * capacity_ * dim_, n);
    std::memcpy(v.data() + bh * capacity * dim_, v_.data() + bh * capacity_ * dim_, n);
  }
  k_ = std::move(k);
  v_ = std::move(v);
  capacity_ = capacity;
}

void KvCache::append(const Tensor& k_t, const Tensor& v_t) {
  if (k_t.numel() != batch_ * heads_ * dim_ || v_t.numel() != k_t.numel())
    throw UsageError(fmt::format("KvCache::append takes [{}, {}, 1, {}] keys and values, got {} and {}", batch_,
                                 heads_, dim_, shape_str(k_t.shape()), shape_str(v_t.shape())));
  if (length_ == capacity_) grow(2 * capacity_);
  const size_t n = static_cast<size_t>(dim_) * sizeof(float);
  for (int64_t bh = 0; bh < batch_ * heads_; ++bh) {
    std::memcpy(k_.data() + (bh * capacity_ + length_) * dim_, k_t.data() + bh * dim_, n);
    std::memcpy(v_.data() + (bh * capacity_ + length_) * dim_, v_t.data() + bh * dim_, n);
  }
  ++length_;
}

const float* KvCache::keys(int64_t b, int64_t h) const { return k_.data() + (b * heads_ + h) * capacity_ * dim_; }
const float* KvCache::values(int64_t b, int64_t h) const { return v_.data() + (b * heads_ + h) * capacity_ * dim_; }

Tensor attend_cached(const Tensor& q_t, const KvCache& cache, float scale,
                     const std::function<void(int64_t bh, float* w, int64_t L)>& weigh) {
  // q_t: [B, H, 1, d] -> [B, H, 1, d]
  const int64_t B = q_t.dim(0), H = q_t.dim(1), d = q_t.dim(3), L = cache.length();
  Tensor out = Tensor::zeros(q_t.shape());
  ab::parallel_for(B * H, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> w(static_cast<size_t>(L));
    for (int64_t bh = lo; bh < hi; ++bh) {
      const float* q = q_t.data() + bh * d;
      const float *K = cache.keys(bh / H, bh % H), *V = cache.values(bh / H, bh % H);
      for (int64_t j = 0; j < L; ++j) {
        float dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += q[c] * K[j * d + c];
        w[j] = scale * dot;
      }
      weigh(bh, w.data(), L);
      float* o = out.data() + bh * d;
      for (int64_t j = 0; j < L; ++j)
        for (int64_t c = 0; c < d; ++c) o[c] += w[j] * V[j * d + c];
    }
  });
  return out;
}

void softmax_in_place(float* w, int64_t n) {
  float m = -INFINITY, total = 0;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, w[j]);
  for (int64_t j = 0; j < n; ++j) total += (w[j] = std::exp(w[j] - m));
  for (int64_t j = 0; j < n && total > 0; ++j) w[j] /= total;
}

Tensor softmax_attend_cached(const Tensor& q_t, const KvCache& cache, float scale) {
  return attend_cached(q_t, cache, scale, [](int64_t, float* w, int64_t L) { softmax_in_place(w, L); });
}

LinearAttentionState::LinearAttentionState(int64_t batch, int64_t heads, int64_t feature_dim, int64_t value_dim)
    : batch_(batch),
      heads_(heads),
      m_(feature_dim),
      dv_(value_dim),
      s_(Tensor::zeros({batch, heads, feature_dim, value_dim})),
      z_(Tensor::zeros({batch, heads, feature_dim})) {}

Tensor LinearAttentionState::step(const Tensor& phi_q, const Tensor& phi_k, const Tensor& v, float eps) {
  const int64_t BH = batch_ * heads_;
  if (phi_q.numel() != BH * m_ || phi_k.numel() != BH * m_ || v.numel() != BH * dv_)
    throw UsageError(fmt::format("LinearAttentionState::step takes [{0}, {1}, 1, {2}] features and [{0}, {1}, 1, {3}] "
                                 "values, got {4}, {5}, {6}", batch_, heads_, m_, dv_, shape_str(phi_q.shape()),
                                 shape_str(phi_k.shape()), shape_str(v.shape())));
  Tensor out = Tensor::zeros({batch_, heads_, 1, dv_});
  ab::parallel_for(BH, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bh = lo; bh < hi; ++bh) {
      float* S = s_.data() + bh * m_ * dv_;
      float* z = z_.data() + bh * m_;
      const float *q = phi_q.data() + bh * m_, *k = phi_k.data() + bh * m_, *vv = v.data() + bh * dv_;
      float* o = out.data() + bh * dv_;
      float den = 0;
      for (int64_t a = 0; a < m_; ++a) {
        z[a] += k[a];
        den += q[a] * z[a];
        for (int64_t c = 0; c < dv_; ++c) {
          S[a * dv_ + c] += k[a] * vv[c];
          o[c] += q[a] * S[a * dv_ + c];
        }
      }
      if (den == 0.f) {
        for (int64_t c = 0; c < dv_; ++c) o[c] = 0.f;
      } else {
        for (int64_t c = 0; c < dv_; ++c) o[c] /= den + eps;
      }
    }
  });
  return out;
}

}  // namespace ab
