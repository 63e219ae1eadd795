// poolformer — MetaFormer's pooling token mixer: y = AvgPool_k(x) - x.
// Yu et al. 2022 (CVPR), "MetaFormer Is Actually What You Need for Vision"; reference
// `Pooling(pool_size=3)`: nn.AvgPool2d(k, stride 1, padding k // 2, count_include_pad=False) minus
// the input. Here the 1-D adaptation along the sequence, per channel, with no parameters:
//   centered (encoder): y[t] = mean_{s in [t - k//2, t + k//2] ∩ [0, N)} x[s] - x[t]
//   causal:             y[t] = mean_{s in [t - k + 1, t] ∩ [0, N)} x[s] - x[t]  (trailing window)
// The divisor counts only positions inside the sequence (count_include_pad = false) and, with a
// key-padding mask, only real (unpadded) positions; a window with no real position averages to 0.
// Time O(B N D k); nothing saved for backward but the mask (the average is linear); no N x N.
// Decode (causal): the last k - 1 inputs of every sequence.
// Capabilities: causal, bidirectional, padding mask, decode. pool_size must be odd (a centered
// window needs a middle; the causal form follows the same rule).
#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"

namespace {

// Window [t + lo, t + hi] of position t.
struct Window {
  int64_t lo, hi;
};

// y = avg(x) - x over the window; keep: [B * N] (1 real, 0 padded) or empty.
// x, y: [B, N, D]
void pool_forward(const float* x, float* y, const std::vector<float>& keep, int64_t B, int64_t N, int64_t D, Window w) {
  ab::parallel_for(B * N, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t r_begin, int64_t r_end) {
                      for (int64_t row = r_begin; row < r_end; ++row) {
                        const int64_t b = row / N, t = row % N;
                        float* yr = y + row * D;
                        std::fill(yr, yr + D, 0.f);
                        float count = 0.f;
                        for (int64_t s = std::max<int64_t>(0, t + w.lo); s <= std::min(N - 1, t + w.hi); ++s) {
                          const float k = keep.empty() ? 1.f : keep[b * N + s];
                          if (k == 0.f) continue;
                          count += 1.f;
                          const float* xs = x + (b * N + s) * D;
                          for (int64_t d = 0; d < D; ++d) yr[d] += xs[d];
                        }
                        const float inv = count > 0.f ? 1.f / count : 0.f;
                        const float* xr = x + row * D;
                        for (int64_t d = 0; d < D; ++d) yr[d] = yr[d] * inv - xr[d];
                      }
                    });
}

// The adjoint: dx[s] = keep[s] sum_{t : s in window(t)} g[t] / count(t) - g[s].
void pool_backward(const float* g, float* dx, const std::vector<float>& keep, int64_t B, int64_t N, int64_t D, Window w) {
  auto count = [&](int64_t b, int64_t t) {
    float c = 0.f;
    for (int64_t s = std::max<int64_t>(0, t + w.lo); s <= std::min(N - 1, t + w.hi); ++s)
      c += keep.empty() ? 1.f : keep[b * N + s];
    return c;
  };
  ab::parallel_for(B * N, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t r_begin, int64_t r_end) {
                      for (int64_t row = r_begin; row < r_end; ++row) {
                        const int64_t b = row / N, s = row % N;
                        float* dr = dx + row * D;
                        const float* gr = g + row * D;
                        for (int64_t d = 0; d < D; ++d) dr[d] = -gr[d];
                        if (!keep.empty() && keep[row] == 0.f) continue;
                        // t with t + lo <= s <= t + hi
                        for (int64_t t = std::max<int64_t>(0, s - w.hi); t <= std::min(N - 1, s - w.lo); ++t) {
                          const float c = count(b, t);
                          if (c == 0.f) continue;
                          const float inv = 1.f / c;
                          const float* gt = g + (b * N + t) * D;
                          for (int64_t d = 0; d < D; ++d) dr[d] += inv * gt[d];
                        }
                      }
                    });
}

class PoolState final : public ab::DecodeState {
 public:
  PoolState(int64_t batch, int64_t dim, int64_t taps)
      : batch_(batch), dim_(dim), hist_len_(taps - 1), hist_(ab::Tensor::zeros({batch, taps - 1, dim})) {}
  // x_t: [B, 1, D] -> [B, 1, D]
  ab::Tensor step(const ab::Tensor& x_t) {
    const int64_t B = batch_, D = dim_, H = hist_len_;
    if (x_t.numel() != B * D)
      throw ab::UsageError(fmt::format("poolformer decode takes x_t [{}, 1, {}], got {}", B, D, ab::shape_str(x_t.shape())));
    const int64_t have = std::min(seen_, H);  // history rows holding real inputs (the last `have`)
    ab::Tensor y = ab::Tensor::empty({B, 1, D});
    const float inv = 1.f / static_cast<float>(have + 1);
    for (int64_t b = 0; b < B; ++b) {
      float* hb = hist_.data() + b * H * D;
      const float* xr = x_t.data() + b * D;
      float* yr = y.data() + b * D;
      for (int64_t d = 0; d < D; ++d) {
        float s = xr[d];
        for (int64_t j = H - have; j < H; ++j) s += hb[j * D + d];
        yr[d] = s * inv - xr[d];
      }
      if (H > 0) {
        std::memmove(hb, hb + D, static_cast<size_t>((H - 1) * D) * sizeof(float));
        std::memcpy(hb + (H - 1) * D, xr, static_cast<size_t>(D) * sizeof(float));
      }
    }
    ++seen_;
    return y;
  }
  int64_t bytes() const override { return hist_.bytes(); }

 private:
  int64_t batch_, dim_, hist_len_, seen_ = 0;
  ab::Tensor hist_;  // [B, k - 1, D], most recent input last
};

class PoolFormer final : public ab::Mixer {
 public:
  explicit PoolFormer(const ab::MixerConfig& cfg) : k_(cfg.params.at("pool_size").get<int64_t>()), d_model_(cfg.d_model) {
    if (k_ % 2 == 0) throw ab::UsageError(fmt::format("variant 'poolformer' parameter 'pool_size' must be odd, got {}", k_));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "poolformer", "pooling", "MetaFormer pooling mixer: average over a k-window minus the token (no parameters)",
        "Yu et al. 2022, MetaFormer Is Actually What You Need for Vision (PoolFormer)",
        {ab::int_param("pool_size", 3,
                       "window length k (odd): centered k//2 each side, or the k trailing tokens when causal", 1, 255)},
        {.causal = true, .bidirectional = true, .padding_mask = true, .decode = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, k = a.params->at("pool_size").get<int64_t>();
      ab::Cost c;
      c.flops = B * N * D * (k + 2);  // k - 1 adds, a scale and a subtraction per element
      c.activation_bytes = 0;         // linear in x: nothing saved (the mask only when given)
      c.state_bytes = 4 * B * (k - 1) * D;
      c.peak_bytes = 4 * 2 * B * N * D;  // y and dx: backward is the same pooling of the gradient
      return c;
    };
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  ab::Var forward(const ab::Var& x, const ab::MixerContext& ctx) override {
    const int64_t B = x.dim(0), N = x.dim(1), D = x.dim(2);
    const Window w = ctx.causal ? Window{-(k_ - 1), 0} : Window{-(k_ / 2), k_ / 2};
    std::vector<float> keep;
    if (ctx.key_mask) {
      keep.resize(static_cast<size_t>(B * N));
      for (int64_t i = 0; i < B * N; ++i) keep[i] = ab::is_padded_key((*ctx.key_mask)[i]) ? 0.f : 1.f;
    }
    ab::Tensor y = ab::Tensor::empty({B, N, D});
    pool_forward(x.value().data(), y.data(), keep, B, N, D, w);
    return ab::make_op_result(std::move(y), {x}, [gx = x.sink(), keep, B, N, D, w](const ab::Tensor& g) {
      ab::Tensor dx = ab::Tensor::empty({B, N, D});
      pool_backward(g.data(), dx.data(), keep, B, N, D, w);
      gx.accumulate(dx);
    });
  }

  std::unique_ptr<ab::DecodeState> begin_decode(int64_t batch, const ab::MixerContext&) override {
    return std::make_unique<PoolState>(batch, d_model_, k_);
  }
  ab::Tensor decode_step(const ab::Tensor& x_t, ab::DecodeState& state, const ab::MixerContext&) override {
    return static_cast<PoolState&>(state).step(x_t);
  }

 private:
  int64_t k_;
  int64_t d_model_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(PoolFormer);
