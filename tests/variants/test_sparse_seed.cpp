// Learned / structured sparse attention: nsa (and the block-sparse kernel's per-(batch, head) block
// lists it uses). The references are written here independently, in double, position by position:
// explicit projections, gates, block means and softmaxes over explicit key sets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/variant.hpp"
#include "support/mixer_build.hpp"
#include "support/random_tensors.hpp"

using namespace ab;
using namespace ab::test;

namespace {

// softmax(scale q_i . k_j) v_j over the keys in `keys` (all of them allowed); 0 when empty.
std::vector<double> attend_set(const std::vector<double>& qi, const std::vector<std::vector<double>>& ks,
                               const std::vector<std::vector<double>>& vs, const std::vector<int64_t>& keys,
                               double scale) {
  const size_t d = qi.size();
  std::vector<double> out(vs.empty() ? d : vs[0].size(), 0.0);
  if (keys.empty()) return out;
  std::vector<double> s;
  double mx = -1e300;
  for (int64_t j : keys) {
    double a = 0;
    for (size_t c = 0; c < d; ++c) a += qi[c] * ks[static_cast<size_t>(j)][c];
    s.push_back(a * scale);
    mx = std::max(mx, a * scale);
  }
  double den = 0;
  for (double& a : s) den += (a = std::exp(a - mx));
  for (size_t e = 0; e < keys.size(); ++e)
    for (size_t c = 0; c < out.size(); ++c) out[c] += s[e] / den * vs[static_cast<size_t>(keys[e])][c];
  return out;
}

struct NsaRef {
  int64_t l, n, w, qb;
  bool causal;
  bool full_selection;  // the selected branch as plain (causal) softmax over every key

  // x [B, N, D] -> y [B, N, D], from the mixer's own parameters.
  std::vector<double> operator()(const Mixer& m, const Tensor& x, int64_t H, const Tensor* mask) const {
    const int64_t B = x.dim(0), N = x.dim(1), D = x.dim(2), d = D / H, M = N / l, K = (N + l - 1) / l;
    const Tensor Wq = mixer_param(m, "wq").value(), Wk = mixer_param(m, "wk").value(),
                 Wv = mixer_param(m, "wv").value(), Wo = mixer_param(m, "wo").value(),
                 Wg = mixer_param(m, "wg").value(), Wck = mixer_param(m, "wck").value(),
                 Wcv = mixer_param(m, "wcv").value();
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    auto keep = [&](int64_t b, int64_t j) { return !mask || !is_padded_key((*mask)[(mask->dim(0) == 1 ? 0 : b) * N + j]); };
    std::vector<double> y(static_cast<size_t>(B * N * D), 0.0);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> merged(static_cast<size_t>(N * D), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        auto proj = [&](const Tensor& W, int64_t i, int64_t col0, int64_t width) {
          std::vector<double> r(static_cast<size_t>(width), 0.0);
          for (int64_t c = 0; c < width; ++c)
            for (int64_t e = 0; e < D; ++e) r[c] += x[(b * N + i) * D + e] * W[e * W.dim(1) + col0 + c];
          return r;
        };
        std::vector<std::vector<double>> q, k, v;
        for (int64_t i = 0; i < N; ++i) {
          q.push_back(proj(Wq, i, h * d, d));
          k.push_back(proj(Wk, i, h * d, d));
          v.push_back(proj(Wv, i, h * d, d));
        }
        // Compressed keys / values: block means through the d x d maps.
        std::vector<std::vector<double>> kc, vc;
        std::vector<bool> block_ok;
        for (int64_t t = 0; t < M; ++t) {
          std::vector<double> mk(static_cast<size_t>(d), 0.0), mv(static_cast<size_t>(d), 0.0);
          bool ok = true;
          for (int64_t j = t * l; j < t * l + l; ++j) {
            ok = ok && keep(b, j);
            for (int64_t c = 0; c < d; ++c) mk[c] += k[j][c] / l, mv[c] += v[j][c] / l;
          }
          std::vector<double> a(static_cast<size_t>(d), 0.0), bb(static_cast<size_t>(d), 0.0);
          for (int64_t c = 0; c < d; ++c)
            for (int64_t e = 0; e < d; ++e) a[c] += mk[e] * Wck[e * d + c], bb[c] += mv[e] * Wcv[e * d + c];
          kc.push_back(a);
          vc.push_back(bb);
          block_ok.push_back(ok);
        }
        // p_cmp [N, M] and o_cmp.
        std::vector<double> p(static_cast<size_t>(N * std::max<int64_t>(M, 1)), 0.0);
        std::vector<std::vector<double>> ocmp;
        for (int64_t i = 0; i < N; ++i) {
          std::vector<int64_t> seen;
          for (int64_t t = 0; t < M; ++t)
            if (block_ok[t] && (!causal || t * l + l - 1 <= i)) seen.push_back(t);
          ocmp.push_back(attend_set(q[i], kc, vc, seen, scale));
          // the probabilities themselves, for the importance scores
          std::vector<double> one(1, 0.0);
          for (int64_t t : seen) {
            std::vector<std::vector<double>> unit(static_cast<size_t>(M), one);
            unit[t][0] = 1.0;
            p[i * M + t] = attend_set(q[i], kc, unit, seen, scale)[0];
          }
        }
        // Selected blocks per query group.
        std::vector<std::vector<int64_t>> sel_keys(static_cast<size_t>(N));
        for (int64_t r0 = 0; r0 < N; r0 += qb) {
          const int64_t r1 = std::min(N, r0 + qb), seen = causal ? (r1 - 1) / l + 1 : K;
          std::vector<int64_t> blocks;
          if (full_selection || n >= seen) {
            for (int64_t t = 0; t < seen; ++t) blocks.push_back(t);
          } else {
            auto has = [&](int64_t t) { return std::find(blocks.begin(), blocks.end(), t) != blocks.end(); };
            std::vector<int64_t> forced{0};
            for (int64_t t = r0 / l - 1; t <= (r1 - 1) / l; ++t) forced.push_back(t);
            for (int64_t t : forced)
              if (t >= 0 && t < seen && !has(t)) blocks.push_back(t);
            while (static_cast<int64_t>(blocks.size()) < n) {
              int64_t best = -1;
              double best_score = -1;
              for (int64_t t = 0; t < std::min(M, seen); ++t) {
                if (has(t)) continue;
                double sc = 0;
                for (int64_t i = r0; i < r1; ++i) sc += p[i * M + t];
                if (sc > best_score) best = t, best_score = sc;
              }
              if (best < 0) break;
              blocks.push_back(best);
            }
          }
          for (int64_t i = r0; i < r1; ++i)
            for (int64_t t : blocks)
              for (int64_t j = t * l; j < std::min(N, t * l + l); ++j)
                if ((!causal || j <= i) && keep(b, j)) sel_keys[i].push_back(j);
        }
        for (int64_t i = 0; i < N; ++i) {
          std::vector<int64_t> win;
          for (int64_t j = 0; j < N; ++j)
            if (keep(b, j) && (causal ? j <= i && i - j < w : j >= i - w / 2 && j < i - w / 2 + w)) win.push_back(j);
          const auto os = attend_set(q[i], k, v, sel_keys[i], scale), ow = attend_set(q[i], k, v, win, scale);
          const auto graw = proj(Wg, i, 0, 3 * H);
          auto gate = [&](int which) { return 1.0 / (1.0 + std::exp(-graw[which * H + h])); };
          for (int64_t c = 0; c < d; ++c)
            merged[i * D + h * d + c] = gate(0) * ocmp[i][c] + gate(1) * os[c] + gate(2) * ow[c];
        }
      }
      for (int64_t i = 0; i < N; ++i)
        for (int64_t c = 0; c < D; ++c)
          for (int64_t e = 0; e < D; ++e) y[(b * N + i) * D + c] += merged[i * D + e] * Wo[e * D + c];
    }
    return y;
  }
};

double max_diff(const Tensor& a, const std::vector<double>& b) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a[i] - b[static_cast<size_t>(i)]));
  return m;
}

// Makes the compression maps non-trivial (they start as the identity).
void perturb(const Mixer& m, uint64_t key) {
  for (const char* name : {"wck", "wcv"}) {
    Tensor w = mixer_param(m, name).value();
    const Tensor r = normal_tensor(w.shape(), key++, 91, 0.3f);
    for (int64_t i = 0; i < w.numel(); ++i) w[i] += r[i];
  }
}

struct NsaCase {
  int64_t N, l, n, w, qb;
  bool causal, padded;
};

void check_nsa(const NsaCase& c, bool full) {
  const int64_t B = 2, D = 16, H = 2;
  auto m =
      build_mixer("nsa", {{"block", c.l}, {"select", c.n}, {"window", c.w}, {"query_block", c.qb}}, D, H, c.N, 0, 5);
  perturb(*m, 11);
  const Tensor x = normal_tensor({B, c.N, D}, 3, 91);
  const Tensor mask = padding_mask(B, c.N, {c.N, c.N - 5});
  MixerContext ctx;
  ctx.causal = c.causal;
  ctx.key_mask = c.padded ? &mask : nullptr;
  Tensor y;
  {
    NoGrad ng;
    y = m->forward(Var(x), ctx).value();
  }
  const NsaRef ref{c.l, c.n, c.w, c.qb, c.causal, full};
  const auto yr = ref(*m, x, H, ctx.key_mask);
  EXPECT_LT(max_diff(y, yr), 2e-4) << "N " << c.N << " l " << c.l << " n " << c.n << " w " << c.w << " qb " << c.qb
                                   << (c.causal ? " causal" : " bidirectional") << (c.padded ? " padded" : "");
}

}  // namespace

// Every block selected: the selected branch is exact (causal) softmax attention, and the whole
// mixer is g_cmp * (softmax over the compressed blocks) + g_slc * softmax + g_win * window softmax.
TEST(Nsa, EveryBlockSelectedIsTheBranchesExactForms) {
  for (bool causal : {true, false})
    for (bool padded : {false, true}) {
      check_nsa({23, 4, 6, 5, 3, causal, padded}, true);
      check_nsa({16, 4, 4, 3, 1, causal, padded}, true);
    }
}

// Top-n selection from the compressed scores (first + local + best blocks) at lengths that are
// not multiples of the block, per token and per query group.
TEST(Nsa, TopNSelectionMatchesReference) {
  for (bool causal : {true, false})
    for (bool padded : {false, true})
      for (int64_t qb : {1, 4, 7}) {
        check_nsa({27, 3, 4, 4, qb, causal, padded}, false);
        check_nsa({32, 4, 3, 2, qb, causal, padded}, false);
      }
}

// The kernel's per-(batch, head) block lists: each (b, h) sees only its own list.
TEST(BlockSparse, PerBatchHeadListsIndexByBatchAndHead) {
  const int64_t B = 2, H = 3, N = 12, d = 4, blk = 4;
  auto pat = std::make_shared<SparsePattern>();
  pat->length = N;
  // (b, h) sees key block (b + h) % 3 only.
  pat->segments.push_back(build_segment(N, {{}, {}, uniform_bounds(N, blk), uniform_bounds(N, blk)}, B * H,
                                        [&](int64_t bh, int64_t, std::vector<int32_t>& kbs) {
                                          kbs.push_back(static_cast<int32_t>((bh / H + bh % H) % 3));
                                        }));
  const Tensor q = normal_tensor({B, H, N, d}, 1, 91), k = normal_tensor({B, H, N, d}, 2, 91),
               v = normal_tensor({B, H, N, d}, 3, 91);
  Tensor o;
  {
    NoGrad ng;
    o = block_sparse_attention(Var(q), Var(k), Var(v), pat, 0.5f, false).value();
  }
  auto vec = [&](const Tensor& t, int64_t bh, int64_t i) {
    return std::vector<double>(t.data() + (bh * N + i) * d, t.data() + (bh * N + i + 1) * d);
  };
  double err = 0;
  for (int64_t bh = 0; bh < B * H; ++bh) {
    std::vector<std::vector<double>> ks, vs;
    for (int64_t j = 0; j < N; ++j) ks.push_back(vec(k, bh, j)), vs.push_back(vec(v, bh, j));
    const int64_t kb = (bh / H + bh % H) % 3;
    std::vector<int64_t> keys;
    for (int64_t j = kb * blk; j < kb * blk + blk; ++j) keys.push_back(j);
    for (int64_t i = 0; i < N; ++i) {
      const auto r = attend_set(vec(q, bh, i), ks, vs, keys, 0.5);
      for (int64_t c = 0; c < d; ++c) err = std::max(err, std::abs(r[c] - o[(bh * N + i) * d + c]));
    }
  }
  EXPECT_LT(err, 1e-5);
}

namespace {

// Combiner-Fixed's distribution p(j | i) for one (batch, head), written out as an N x N matrix.
std::vector<double> combiner_probs(const Tensor& q, const Tensor& k, const Tensor& w, int64_t bh, int64_t h,
                                   int64_t N, int64_t d, int64_t s, bool causal, const std::vector<bool>& keep) {
  auto dot = [&](const Tensor& a, int64_t i, const Tensor& b, int64_t j) {
    double r = 0;
    for (int64_t c = 0; c < d; ++c) r += a[(bh * N + i) * d + c] * b[(bh * N + j) * d + c];
    return r;
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const int64_t R = (N + s - 1) / s;
  std::vector<std::vector<double>> in_region(static_cast<size_t>(R));  // q(j | Ω_r) over the region
  std::vector<std::vector<double>> kbar(static_cast<size_t>(R), std::vector<double>(static_cast<size_t>(d), 0.0));
  std::vector<bool> live(static_cast<size_t>(R), false);
  for (int64_t r = 0; r < R; ++r) {
    double den = 0;
    int64_t count = 0;
    for (int64_t j = r * s; j < std::min(N, r * s + s); ++j) {
      double e = 0;
      if (keep[j]) {
        double a = 0;
        for (int64_t c = 0; c < d; ++c) a += k[(bh * N + j) * d + c] * w[h * d + c];
        e = std::exp(a);
        ++count;
        for (int64_t c = 0; c < d; ++c) kbar[r][c] += k[(bh * N + j) * d + c];
      }
      in_region[r].push_back(e);
      den += e;
    }
    live[r] = count > 0;
    for (double& e : in_region[r]) e = count > 0 ? e / den : 0.0;
    for (double& c : kbar[r]) c = count > 0 ? c / count : 0.0;
  }
  std::vector<double> P(static_cast<size_t>(N * N), 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t own = i / s;
    std::vector<double> direct(static_cast<size_t>(N), 0.0), region(static_cast<size_t>(R), 0.0);
    double Z = 0;
    for (int64_t j = own * s; j < std::min(N, own * s + s); ++j)
      if (keep[j] && (!causal || j <= i)) Z += direct[j] = std::exp(scale * dot(q, i, k, j));
    for (int64_t r = 0; r < R; ++r)
      if (live[r] && (causal ? r < own : r != own)) {
        double a = 0;
        for (int64_t c = 0; c < d; ++c) a += q[(bh * N + i) * d + c] * kbar[r][c];
        Z += region[r] = std::exp(scale * a);
      }
    for (int64_t j = 0; j < N; ++j) {
      const int64_t r = j / s;
      P[i * N + j] = (direct[j] + region[r] * in_region[r][j - r * s]) / Z;
    }
  }
  return P;
}

}  // namespace

// With v = the one-hot rows of the identity, attend() returns the attention matrix itself: it must
// equal the factorised distribution written out densely, sum to 1 per row and give every allowed
// pair (every j, or every j <= i when causal, that is not padding) a positive probability — each
// pair covered once (a pair counted twice or missed would change the matrix).
TEST(Combiner, CoversEveryPairOnceAndMatchesTheDenseFactorisation) {
  for (int64_t N : {7, 16, 23})
    for (int64_t s : {1, 3, 4, 5})
      for (bool causal : {true, false})
        for (bool padded : {false, true}) {
          const int64_t B = 2, H = 2, d = N;
          auto m = build_mixer("combiner", {{"block", s}}, H * d, H, N, 0, 5);
          auto* att = dynamic_cast<AttentionMixer*>(m.get());
          ASSERT_NE(att, nullptr);
          Tensor w = mixer_param(*m, "w_region").value();
          const Tensor wr = normal_tensor(w.shape(), 9, 91, 0.5f);
          for (int64_t i = 0; i < w.numel(); ++i) w[i] = wr[i];
          const Tensor q = normal_tensor({B, H, N, d}, 21, 91), k = normal_tensor({B, H, N, d}, 22, 91);
          Tensor v = Tensor::zeros({B, H, N, d});
          for (int64_t bh = 0; bh < B * H; ++bh)
            for (int64_t j = 0; j < N; ++j) v[(bh * N + j) * d + j] = 1.f;
          const Tensor mask = padding_mask(B, N, {N, N - 4});
          MixerContext ctx;
          ctx.causal = causal;
          ctx.key_mask = padded ? &mask : nullptr;
          Tensor o;
          {
            NoGrad ng;
            o = att->attend(Var(q), Var(k), Var(v), ctx).value();
          }
          double err = 0;
          for (int64_t bh = 0; bh < B * H; ++bh) {
            std::vector<bool> keep(static_cast<size_t>(N), true);
            for (int64_t j = 0; j < N && padded; ++j) keep[j] = !is_padded_key(mask[(bh / H) * N + j]);
            const auto P = combiner_probs(q, k, w, bh, bh % H, N, d, s, causal, keep);
            for (int64_t i = 0; i < N; ++i) {
              double row = 0;
              for (int64_t j = 0; j < N; ++j) {
                const double got = o[(bh * N + i) * d + j];
                row += got;
                err = std::max(err, std::abs(got - P[i * N + j]));
                const bool allowed = keep[j] && (!causal || j <= i);
                EXPECT_EQ(got > 0, allowed) << "N " << N << " s " << s << " i " << i << " j " << j;
              }
              EXPECT_NEAR(row, 1.0, 1e-5);
            }
          }
          EXPECT_LT(err, 1e-5) << "N " << N << " s " << s << (causal ? " causal" : "") << (padded ? " padded" : "");
        }
}
