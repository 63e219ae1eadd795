#include "attnbench/kernels/short_conv.hpp"
#include "attnbench/params.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "core/backend/onednn.hpp"

namespace ab {

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("short_conv: " + what);
}
}  // namespace

Var short_conv(const Var& x, const Var& w, const Var& bias, bool causal) {
  require(x.rank() == 3, fmt::format("x {} must be [B, N, C]", shape_str(x.shape())));
  const int64_t B = x.dim(0), N = x.dim(1), C = x.dim(2);
  require(w.rank() == 2 && w.dim(0) == C && w.dim(1) >= 1,
          fmt::format("weights {} must be [C = {}, K >= 1]", shape_str(w.shape()), C));
  require(!bias.defined() || (bias.rank() == 1 && bias.dim(0) == C),
          fmt::format("bias {} must be [C = {}]", shape_str(bias.shape()), C));
  const int64_t K = w.dim(1);
  // Tap j reads position t + off(j).
  const int64_t half = causal ? 0 : (K - 1) / 2;
  auto off = [causal, half](int64_t j) { return causal ? -j : j - half; };
  // Weights transposed to [K, C] so the channel loop is contiguous.
  std::vector<float> wt(static_cast<size_t>(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < K; ++j) wt[j * C + c] = w.value()[c * K + j];
  Tensor y = Tensor::empty({B, N, C});
  {
    const float* xp = x.value().data();
    const float* bp = bias.defined() ? bias.value().data() : nullptr;
    float* yp = y.data();
    kernels::parallel_for(B * N, std::max<int64_t>(1, kernels::kGrain / (C * K)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = r % N;
        float* yr = yp + r * C;
        if (bp) std::copy(bp, bp + C, yr); else std::fill(yr, yr + C, 0.f);
        for (int64_t j = 0; j < K; ++j) {
          const int64_t s = t + off(j);
          if (s < 0 || s >= N) continue;
          const float* xr = xp + (r + off(j)) * C;
          const float* wj = wt.data() + j * C;
          for (int64_t c = 0; c < C; ++c) yr[c] += wj[c] * xr[c];
        }
      }
    });
  }
  const GradSink gx = x.sink(), gw = w.sink(), gb = bias.defined() ? bias.sink() : GradSink();
  const Tensor xv = gw.wanted() ? x.value() : Tensor();
  std::vector<Var> inputs{x, w};
  if (bias.defined()) inputs.push_back(bias);
  return make_op_result(std::move(y), inputs, [gx, gw, gb, xv, wt = std::move(wt), B, N, C, K, causal, half](const Tensor& g) {
    auto off = [causal, half](int64_t j) { return causal ? -j : j - half; };
    const float* gp = g.data();
    if (gx.wanted()) {  // dx[s] = sum_j w[j] g[s - off(j)]
      Tensor dx = Tensor::empty({B, N, C});
      float* dp = dx.data();
      kernels::parallel_for(B * N, std::max<int64_t>(1, kernels::kGrain / (C * K)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t s = r % N;
          float* dr = dp + r * C;
          std::fill(dr, dr + C, 0.f);
          for (int64_t j = 0; j < K; ++j) {
            const int64_t t = s - off(j);
            if (t < 0 || t >= N) continue;
            const float* gr = gp + (r - off(j)) * C;
            const float* wj = wt.data() + j * C;
            for (int64_t c = 0; c < C; ++c) dr[c] += wj[c] * gr[c];
          }
        }
      });
      gx.accumulate(dx);
    }
    if (gw.wanted() || gb.wanted()) {
      // dw[c, j] = sum_{b, t} g[b, t, c] x[b, t + off(j), c], db[c] = sum_{b, t} g[b, t, c]; per block of
      // 16 channels and group of 8 taps, so each g row is loaded once for 8 independent accumulators
      // (one accumulator per tap was bound by the FMA latency). Fixed order: thread-count independent.
      Tensor dw = gw.wanted() ? Tensor::zeros({C, K}) : Tensor(), db = gb.wanted() ? Tensor::zeros({C}) : Tensor();
      const float* xp = gw.wanted() ? xv.data() : nullptr;
      constexpr int64_t kBlock = 16, kTaps = 8;
      kernels::parallel_for((C + kBlock - 1) / kBlock, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t c0 = q * kBlock, nc = std::min(C, c0 + kBlock) - c0;
          if (db.defined()) {
            float acc[kBlock] = {};
            for (int64_t r = 0; r < B * N; ++r)
              for (int64_t c = 0; c < nc; ++c) acc[c] += gp[r * C + c0 + c];
            for (int64_t c = 0; c < nc; ++c) db[c0 + c] = acc[c];
          }
          if (!xp) continue;
          for (int64_t j0 = 0; j0 < K; j0 += kTaps) {
            const int64_t nj = std::min(kTaps, K - j0);
            float acc[kTaps][kBlock] = {};
            for (int64_t b = 0; b < B; ++b)
              for (int64_t t = 0; t < N; ++t) {
                const float* gr = gp + (b * N + t) * C + c0;
                for (int64_t jj = 0; jj < nj; ++jj) {
                  const int64_t s = t + off(j0 + jj);
                  if (s < 0 || s >= N) continue;
                  const float* xr = xp + (b * N + s) * C + c0;
                  if (nc == kBlock)  // a constant trip count: one 16-wide FMA
                    for (int64_t c = 0; c < kBlock; ++c) acc[jj][c] += gr[c] * xr[c];
                  else
                    for (int64_t c = 0; c < nc; ++c) acc[jj][c] += gr[c] * xr[c];
                }
              }
            for (int64_t jj = 0; jj < nj; ++jj)
              for (int64_t c = 0; c < nc; ++c) dw[(c0 + c) * K + j0 + jj] = acc[jj][c];
          }
        }
      });
      if (gw.wanted()) gw.accumulate(dw);
      if (gb.wanted()) gb.accumulate(db);
    }
  });
}

ShortConvState::ShortConvState(int64_t batch, int64_t channels, int64_t taps)
    : batch_(batch), channels_(channels), taps_(taps), hist_(Tensor::zeros({batch, std::max<int64_t>(taps - 1, 0), channels})) {}

Tensor ShortConvState::step(const Tensor& x_t, const Tensor& w, const Tensor* bias) {
  const int64_t C = channels_, K = taps_, H = K - 1;
  if (x_t.numel() != batch_ * C || w.numel() != C * K)
    throw UsageError(fmt::format("ShortConvState::step takes x_t [{}, 1, {}] and w [{}, {}], got {} and {}", batch_, C,
                                 C, K, shape_str(x_t.shape()), shape_str(w.shape())));
  Tensor y = Tensor::empty({batch_, 1, C});
  for (int64_t b = 0; b < batch_; ++b) {
    const float* xr = x_t.data() + b * C;
    float* hb = hist_.data() + b * H * C;  // hist row H - 1 is x_{t-1}, row H - j is x_{t-j}
    float* yr = y.data() + b * C;
    for (int64_t c = 0; c < C; ++c) {
      float s = (bias ? (*bias)[c] : 0.f) + w[c * K] * xr[c];
      for (int64_t j = 1; j < K; ++j) s += w[c * K + j] * hb[(H - j) * C + c];
      yr[c] = s;
    }
    if (H > 0) {  // shift the history by one token
      std::memmove(hb, hb + C, static_cast<size_t>((H - 1) * C) * sizeof(float));
      std::memcpy(hb + (H - 1) * C, xr, static_cast<size_t>(C) * sizeof(float));
    }
  }
  return y;
}

}  // namespace ab
