// sinkhorn — Sparse Sinkhorn attention: a learned soft sorting of key blocks, block-local attention.
// Tay, Bahri, Yang, Metzler, Juan 2020, "Sparse Sinkhorn Attention" (LRA sinkhorn_attention.py).
// Per head, with blocks of b positions (N_b = ceil(N / b); the last block may be shorter):
//   block summaries s_l = sum of the keys of block l                          [N_b, d]
//   sorting logits  R = s W_P + b_P, truncated to N_b columns                 [N_b, N_b]
//   soft permutation Pi = softmax_row(R)                    (sort = softmax, the LRA default)
//                    Pi = exp(Sinkhorn_n(R / temperature))  (sort = sinkhorn: n alternating row and
//                         column log-normalisations, in log space)
//   sorted block     K~_p = sum_l Pi_pl K_l,  V~_p = sum_l Pi_pl V_l         [N_b, b, d]
//   output of block p: combine = concat: one softmax over [K_p ; K~_p] (the paper, lucidrains);
//                      combine = sum:    softmax(Q_p K_p^T) V_p + softmax(Q_p K~_p^T) V~_p (LRA).
// The sorting net (W_P [d, max_num_blocks], b_P) is shared by the heads, as in LRA.
// Time O(B H (N b d + N_b N d) + B N D^2): the block mixtures cost N_b^2 b d = N^2 d / b per head, so
// the variant is quadratic with a 1/b constant; memory saved for backward O(B N D + B H N_b^2):
// q, k, v, the output, the log-sum-exp and Pi; the sorted blocks are recomputed in backward.
// Never an N x N buffer.
// Capabilities: bidirectional only (the paper's causal Sinkhorn balancing is a TODO in LRA too);
// key-padding mask honoured: padded keys and values are zeroed before the summaries and the
// mixtures, blocks made only of padding take no part in the sorting, and padded keys are masked in
// the local softmax. Length-dependent: max_num_blocks defaults to ceil(max_length / block_size).
// Reference-code pitfalls (§3.8), documented rather than reproduced: LRA's block reshape makes a
// "block" the positions t = s * N_b + p (strided, not contiguous), and its einsum
// 'bskhd,bnhl->bsnhd' sums over both block indices, so every sorted block is the sum of all blocks;
// LRA's sinkhorn operator clips log Pi to [-1, 1]. Here blocks are contiguous, the mixture is the
// paper's, and Sinkhorn is unclipped. `combine = sum` gives LRA's two separately normalised terms.
// No Gumbel noise (deterministic sorting).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/parallel.hpp"
#include "attnbench/variant.hpp"
#include "kernels/detail/vec.hpp"

namespace {

using ab::Tensor;
using ab::Var;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using ab::vec::axpy;
using ab::vec::dot;

template <class F>
void for_units(int64_t units, F&& f) {
  ab::parallel_for(units, 1, [&](int64_t r_begin, int64_t r_end) {
    for (int64_t u = r_begin; u < r_end; ++u) f(u);
  });
}

// ---- block sums: k [B, H, N, d] -> s [B, H, N_b, d] (the last block may be partial) ----
Var block_sum(const Var& k, int64_t b) {
  const int64_t B = k.dim(0), H = k.dim(1), N = k.dim(2), d = k.dim(3), nb = (N + b - 1) / b;
  Tensor s = Tensor::zeros({B, H, nb, d});
  const float* kp = k.value().data();
  float* sp = s.data();
  for_units(B * H, [&](int64_t u) {
    for (int64_t t = 0; t < N; ++t) {
      float* dst = sp + (u * nb + t / b) * d;
      const float* src = kp + (u * N + t) * d;
      for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
    }
  });
  return ab::make_op_result(std::move(s), {k}, [gk = k.sink(), B, H, N, d, nb, b](const Tensor& g) {
    Tensor dk = Tensor::empty({B, H, N, d});
    const float* gp = g.data();
    float* dp = dk.data();
    for_units(B * H, [&](int64_t u) {
      for (int64_t t = 0; t < N; ++t)
        std::copy(gp + (u * nb + t / b) * d, gp + (u * nb + t / b + 1) * d, dp + (u * N + t) * d);
    });
    gk.accumulate(dk);
  });
}

// ---- Sinkhorn normalisation in log space ----
// x [U, n, n] (logits / temperature); col_mask [B, n] (1 = source block excluded) or empty, with
// U = B * heads. Y_0 = x (masked -inf), then `iters` times: Y -= LSE_row(Y); Y -= LSE_col(Y).
// Output Pi = exp(Y_final). A row or column with no finite entry is left as it is (-inf).
// Writes every iterate to `trace` [U, 2 iters, n, n] when given (backward recomputation).
void sinkhorn_iterate(const float* x, const std::vector<uint8_t>& col_mask, int64_t heads, int64_t n, int iters,
                      int64_t u, float* y, float* trace) {
  const uint8_t* cm = col_mask.empty() ? nullptr : col_mask.data() + (u / heads) * n;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) y[i * n + j] = cm && cm[j] ? kNegInf : x[i * n + j];
  auto normalise = [&](bool rows) {
    for (int64_t a = 0; a < n; ++a) {
      // rows: entries (a, j); columns: entries (j, a)
      const int64_t base = rows ? a * n : a, step = rows ? 1 : n;
      float m = kNegInf;
      for (int64_t j = 0; j < n; ++j) m = std::max(m, y[base + j * step]);
      if (m == kNegInf) continue;
      double z = 0;
      for (int64_t j = 0; j < n; ++j) z += std::exp(double(y[base + j * step]) - m);
      const float lse = m + static_cast<float>(std::log(z));
      for (int64_t j = 0; j < n; ++j) y[base + j * step] -= lse;
    }
  };
  for (int it = 0; it < iters; ++it) {
    normalise(true);
    if (trace) std::copy(y, y + n * n, trace + (2 * it) * n * n);
    normalise(false);
    if (trace) std::copy(y, y + n * n, trace + (2 * it + 1) * n * n);
  }
}

// x [B, H, n, n] -> Pi [B, H, n, n]
Var sinkhorn_normalize(const Var& x, int iters, std::shared_ptr<const std::vector<uint8_t>> col_mask) {
  const int64_t B = x.dim(0), H = x.dim(1), n = x.dim(2);
  Tensor pi = Tensor::empty(x.shape());
  for_units(B * H, [&](int64_t u) {
    float* y = pi.data() + u * n * n;
    sinkhorn_iterate(x.value().data() + u * n * n, *col_mask, H, n, iters, u, y, nullptr);
    for (int64_t i = 0; i < n * n; ++i) y[i] = std::exp(y[i]);
  });
  return ab::make_op_result(pi, {x}, [gx = x.sink(), xv = x.value(), iters, col_mask, B, H, n](const Tensor& g) {
    // Backward through Y' = Y - LSE(Y) along an axis: dY = dY' - exp(Y') * (sum of dY' along the axis).
    Tensor dx = Tensor::empty(xv.shape());
    Tensor trace = Tensor::empty({B * H, std::max(2 * iters, 1), n, n});
    for_units(B * H, [&](int64_t u) {
      float* tr = trace.data() + u * std::max(2 * iters, 1) * n * n;
      float* dy = dx.data() + u * n * n;
      std::vector<float> y(n * n);
      sinkhorn_iterate(xv.data() + u * n * n, *col_mask, H, n, iters, u, y.data(), tr);
      const float* gu = g.data() + u * n * n;
      for (int64_t i = 0; i < n * n; ++i) {
        const float p = std::exp(y[i]);
        dy[i] = gu[i] * p;  // Pi = exp(Y_final)
      }
      for (int s = 2 * iters - 1; s >= 0; --s) {
        const bool rows = s % 2 == 0;
        const float* ys = tr + s * n * n;
        for (int64_t a = 0; a < n; ++a) {
          const int64_t base = rows ? a * n : a, step = rows ? 1 : n;
          double sum = 0;
          for (int64_t j = 0; j < n; ++j) sum += dy[base + j * step];
          for (int64_t j = 0; j < n; ++j) dy[base + j * step] -= std::exp(ys[base + j * step]) * static_cast<float>(sum);
        }
      }
      // Masked entries are constants (-inf): no gradient.
      if (!col_mask->empty()) {
        const uint8_t* cm = col_mask->data() + (u / H) * n;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j)
            if (cm[j]) dy[i * n + j] = 0.f;
      }
    });
    gx.accumulate(dx);
  });
}

// ---- the block attention (fused op) ----
struct BlockConfig {
  int64_t block = 1;
  float scale = 1.f;
  bool sum_combine = false;  // LRA: two separately normalised softmaxes
};

// x [B, H, N, d] viewed as blocks [B, H, N_b, b d], zero-padded to N_b b rows when N % b != 0.
Tensor blocks_view(const Tensor& x, int64_t b, int64_t nb) {
  const int64_t B = x.dim(0), H = x.dim(1), N = x.dim(2), d = x.dim(3);
  if (N == nb * b) return x.reshape({B, H, nb, b * d});
  Tensor padded = Tensor::zeros({B, H, nb, b * d});
  for_units(B * H, [&](int64_t u) {
    std::copy(x.data() + u * N * d, x.data() + (u + 1) * N * d, padded.data() + u * nb * b * d);
  });
  return padded;
}

// The sorted blocks Ks [B, H, N_b, b d] = Pi [B, H, N_b, N_b] @ K blocks [B, H, N_b, b d]: one
// batched GEMM (oneDNN, outside any TBB region).
Tensor mix_blocks(const Tensor& pi, const Tensor& blocks) {
  ab::NoGrad ng;
  return ab::matmul(Var(pi), Var(blocks)).value();
}

// One key tile: the local block's keys then the b sorted slots. kT [d, w], kb [w, d], vb [w, d],
// vT [d, w]; masked[j]: a padded local key or a sorted slot with no real key behind it.
struct Tile {
  int64_t w = 0, nloc = 0;
  std::vector<float> kT, kb, vb, vT, dkb, dvb, s, dp, acc;
  std::vector<uint8_t> masked;
  void build(const float* k, const float* v, const float* ks, const float* vs, int64_t p, int64_t N, int64_t b,
             int64_t d, const uint8_t* keep, const uint8_t* slot_ok, bool want_vT) {
    nloc = std::min(N, (p + 1) * b) - p * b;
    w = nloc + b;
    kT.resize(d * w), kb.resize(w * d), vb.resize(w * d), s.resize(w), dp.resize(w), masked.resize(w);
    if (want_vT) vT.resize(d * w);
    for (int64_t j = 0; j < w; ++j) {
      const bool local = j < nloc;
      const float* kr = local ? k + (p * b + j) * d : ks + (p * b + (j - nloc)) * d;
      const float* vr = local ? v + (p * b + j) * d : vs + (p * b + (j - nloc)) * d;
      masked[j] = local ? !keep[p * b + j] : !slot_ok[j - nloc];
      for (int64_t c = 0; c < d; ++c) {
        kb[j * d + c] = kr[c];
        kT[c * w + j] = kr[c];
        vb[j * d + c] = vr[c];
        if (want_vT) vT[c * w + j] = vr[c];
      }
    }
  }
  void scores(const float* qt, int64_t d, float scale) {
    std::fill(s.begin(), s.begin() + w, 0.f);
    for (int64_t c = 0; c < d; ++c) {
      const float qc = qt[c] * scale;
      axpy(s.data(), kT.data() + c * w, qc, w);
    }
    for (int64_t j = 0; j < w; ++j)
      if (masked[j]) s[j] = kNegInf;
  }
};

// Softmax of s[j0, j1) into o (accumulating p v), returning the log-sum-exp (-inf: all masked).
float softmax_into(Tile& t, int64_t j0, int64_t j1, int64_t d, float* o) {
  float m = kNegInf;
  for (int64_t j = j0; j < j1; ++j) m = std::max(m, t.s[j]);
  if (m == kNegInf) return kNegInf;
  std::vector<float>& acc = t.acc;
  acc.assign(d, 0.f);
  float l = 0;
  for (int64_t j = j0; j < j1; ++j) {
    const float pj = std::exp(t.s[j] - m);
    if (pj == 0.f) continue;
    l += pj;
    axpy(acc.data(), t.vb.data() + j * d, pj, d);
  }
  for (int64_t c = 0; c < d; ++c) o[c] += acc[c] / l;
  return m + std::log(l);
}

struct Masks {
  std::vector<uint8_t> keep;     // [B, N]: 1 real key
  std::vector<uint8_t> slot_ok;  // [B, b]: 1 if some unmasked source block has a real key at this offset
};

// q, k, v [B, H, N, d], pi [B, H, N_b, N_b] -> o [B, H, N, d]
Var block_attend(const BlockConfig& cf, const Var& q, const Var& k, const Var& v, const Var& pi,
                 std::shared_ptr<const Masks> masks) {
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3), b = cf.block, nb = (N + b - 1) / b;
  Tensor o = Tensor::zeros({B, H, N, d});
  const int64_t groups = cf.sum_combine ? 2 : 1;
  Tensor lse = Tensor::empty({B, H, groups, N});
  Tensor o_loc = cf.sum_combine ? Tensor::zeros({B, H, N, d}) : Tensor();
  {
    const Tensor ks = mix_blocks(pi.value(), blocks_view(k.value(), b, nb));
    const Tensor vs = mix_blocks(pi.value(), blocks_view(v.value(), b, nb));
    for_units(B * H, [&](int64_t u) {
      const int64_t bi = u / H;
      const float* qu = q.value().data() + u * N * d;
      const float* ku = k.value().data() + u * N * d;
      const float* vu = v.value().data() + u * N * d;
      const float* ksu = ks.data() + u * nb * b * d;
      const float* vsu = vs.data() + u * nb * b * d;
      float* ou = o.data() + u * N * d;
      float* lu = lse.data() + u * groups * N;
      Tile tile;
      for (int64_t p = 0; p < nb; ++p) {
        tile.build(ku, vu, ksu, vsu, p, N, b, d, masks->keep.data() + bi * N, masks->slot_ok.data() + bi * b, false);
        for (int64_t t = p * b; t < p * b + tile.nloc; ++t) {
          tile.scores(qu + t * d, d, cf.scale);
          if (!cf.sum_combine) {
            lu[t] = softmax_into(tile, 0, tile.w, d, ou + t * d);
          } else {
            float* olt = o_loc.data() + (u * N + t) * d;
            lu[t] = softmax_into(tile, 0, tile.nloc, d, olt);
            lu[N + t] = softmax_into(tile, tile.nloc, tile.w, d, ou + t * d);
            for (int64_t c = 0; c < d; ++c) ou[t * d + c] += olt[c];
          }
        }
      }
    });
  }
  const std::vector<Var> inputs{q, k, v, pi};
  return ab::make_op_result(
      o, inputs,
      [cf, masks, gq = q.sink(), gk = k.sink(), gv = v.sink(), gpi = pi.sink(), qv = q.value(), kv = k.value(),
       vv = v.value(), piv = pi.value(), o, o_loc, lse, groups](const Tensor& g) {
        const int64_t B = qv.dim(0), H = qv.dim(1), N = qv.dim(2), d = qv.dim(3), b = cf.block, nb = (N + b - 1) / b;
        Tensor dq = Tensor::zeros(qv.shape()), dk = Tensor::zeros(kv.shape()), dv = Tensor::zeros(vv.shape());
        Tensor kblocks = blocks_view(kv, b, nb), vblocks = blocks_view(vv, b, nb);
        Tensor ks = mix_blocks(piv, kblocks), vs = mix_blocks(piv, vblocks);
        Tensor dks = Tensor::zeros({B, H, nb, b * d}), dvs = Tensor::zeros({B, H, nb, b * d});
        for_units(B * H, [&](int64_t u) {
          const int64_t bi = u / H;
          const float* qu = qv.data() + u * N * d;
          const float* ku = kv.data() + u * N * d;
          const float* vu = vv.data() + u * N * d;
          const float* gu = g.data() + u * N * d;
          const float* ou = o.data() + u * N * d;
          const float* olu = cf.sum_combine ? o_loc.data() + u * N * d : nullptr;
          const float* lu = lse.data() + u * groups * N;
          const float* ksu = ks.data() + u * nb * b * d;
          const float* vsu = vs.data() + u * nb * b * d;
          float* dksu = dks.data() + u * nb * b * d;
          float* dvsu = dvs.data() + u * nb * b * d;
          float* dqu = dq.data() + u * N * d;
          float* dku = dk.data() + u * N * d;
          float* dvu = dv.data() + u * N * d;
          Tile tile;
          for (int64_t p = 0; p < nb; ++p) {
            tile.build(ku, vu, ksu, vsu, p, N, b, d, masks->keep.data() + bi * N, masks->slot_ok.data() + bi * b, true);
            const int64_t w = tile.w;
            tile.dkb.assign(w * d, 0.f);
            tile.dvb.assign(w * d, 0.f);
            for (int64_t t = p * b; t < p * b + tile.nloc; ++t) {
              const float* qt = qu + t * d;
              const float* gt = gu + t * d;
              // delta = dO . O per softmax group (sum: O_loc and O - O_loc)
              float delta[2] = {0.f, 0.f};
              if (cf.sum_combine) {
                delta[0] = dot(gt, olu + t * d, d);
                delta[1] = dot(gt, ou + t * d, d) - delta[0];
              } else {
                delta[0] = dot(gt, ou + t * d, d);
              }
              tile.scores(qt, d, cf.scale);
              std::fill(tile.dp.begin(), tile.dp.begin() + w, 0.f);
              for (int64_t c = 0; c < d; ++c) axpy(tile.dp.data(), tile.vT.data() + c * w, gt[c], w);
              float* dqt = dqu + t * d;
              for (int64_t j = 0; j < w; ++j) {
                const int grp = cf.sum_combine && j >= tile.nloc ? 1 : 0;
                const float L = lu[grp * N + t];
                if (L == kNegInf) continue;
                const float pj = std::exp(tile.s[j] - L);
                if (pj == 0.f) continue;
                const float ds = pj * (tile.dp[j] - delta[grp]) * cf.scale;
                axpy(dqt, tile.kb.data() + j * d, ds, d);
                axpy(tile.dkb.data() + j * d, qt, ds, d);
                axpy(tile.dvb.data() + j * d, gt, pj, d);
              }
            }
            for (int64_t j = 0; j < w; ++j) {
              float* dkd = j < tile.nloc ? dku + (p * b + j) * d : dksu + (p * b + j - tile.nloc) * d;
              float* dvd = j < tile.nloc ? dvu + (p * b + j) * d : dvsu + (p * b + j - tile.nloc) * d;
              axpy(dkd, tile.dkb.data() + j * d, 1.f, d);
              axpy(dvd, tile.dvb.data() + j * d, 1.f, d);
            }
          }
        });
        ks = Tensor();  // release the recomputed sorted blocks before the GEMMs
        vs = Tensor();
        // Through the mixtures Ks = Pi @ K blocks (and Vs), as batched GEMMs:
        // dPi = dKs @ K_blocks^T + dVs @ V_blocks^T,  dK_blocks += Pi^T @ dKs (and dV).
        {
          ab::NoGrad ng;
          if (gpi.wanted()) {
            gpi.accumulate(ab::matmul(Var(dks), Var(kblocks), false, true).value());
            gpi.accumulate(ab::matmul(Var(dvs), Var(vblocks), false, true).value());
          }
          kblocks = Tensor();
          vblocks = Tensor();
          const Tensor dkb = ab::matmul(Var(piv), Var(dks), true, false).value();  // [B, H, N_b, b d]
          dks = Tensor();
          const Tensor dvb = ab::matmul(Var(piv), Var(dvs), true, false).value();
          dvs = Tensor();
          for_units(B * H, [&](int64_t u) {
            axpy(dk.data() + u * N * d, dkb.data() + u * nb * b * d, 1.f, N * d);
            axpy(dv.data() + u * N * d, dvb.data() + u * nb * b * d, 1.f, N * d);
          });
        }
        gq.accumulate(dq);
        gk.accumulate(dk);
        gv.accumulate(dv);
      });
}

class Sinkhorn final : public ab::AttentionMixer {
 public:
  explicit Sinkhorn(const ab::MixerConfig& cfg)
      : AttentionMixer(cfg),
        block_(cfg.params.at("block_size").get<int64_t>()),
        sinkhorn_(cfg.params.at("sort").get<std::string>() == "sinkhorn"),
        sum_combine_(cfg.params.at("combine").get<std::string>() == "sum"),
        iters_(static_cast<int>(cfg.params.at("sinkhorn_iters").get<int64_t>())),
        temperature_(static_cast<float>(cfg.params.at("temperature").get<double>())) {
    max_blocks_ = max_blocks_for(cfg.params, cfg.max_length);
    wp_ = add_param("sort_w", ab::init_xavier_uniform(head_dim_, max_blocks_,
                                                      ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, 10)));
    bp_ = add_param("sort_b", Tensor::zeros({max_blocks_}));
  }

  static int64_t max_blocks_for(const ab::Json& p, int64_t max_length) {
    const int64_t m = p.at("max_num_blocks").get<int64_t>(), b = p.at("block_size").get<int64_t>();
    return m > 0 ? m : std::max<int64_t>(1, (max_length + b - 1) / b);
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "sinkhorn", "learned-sparse",
        "Sparse Sinkhorn attention: blocks attend to themselves and a learned soft-sorted block",
        "Tay, Bahri, Yang, Metzler, Juan 2020, Sparse Sinkhorn Attention",
        {
            ab::int_param("block_size", 32, "positions per block (LRA 50; 64 on image tasks)", 1, 1 << 20),
            ab::int_param("max_num_blocks", 0, "columns of the sorting net; 0 = ceil(max_length / block_size) (LRA 25)",
                          0, 1 << 20),
            ab::enum_param("sort", "softmax", {"softmax", "sinkhorn"},
                           "softmax: row softmax of the sorting logits (LRA default); sinkhorn: iterated row/column "
                           "normalisation in log space"),
            ab::int_param("sinkhorn_iters", 7, "Sinkhorn iterations (sort = sinkhorn; paper 5-10, lucidrains 7)", 1,
                          100),
            ab::num_param("temperature", 0.75, "logits are divided by it before Sinkhorn (sort = sinkhorn)", 1e-3, 1e3),
            ab::enum_param("combine", "concat", {"concat", "sum"},
                           "concat: one softmax over the local and the sorted block (paper); sum: two separately "
                           "normalised softmaxes added (LRA)"),
        },
        {.causal = false, .bidirectional = true, .padding_mask = true, .length_dependent = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const ab::Json& p = *a.params;
      const double b = std::min<double>(N, p.at("block_size").get<double>());
      const double nb = std::ceil(N / b), d = D / H;
      const double mb = static_cast<double>(max_blocks_for(p, a.length));
      const bool sink = p.at("sort").get<std::string>() == "sinkhorn", sum = p.at("combine").get<std::string>() == "sum";
      ab::Cost c;
      // Projections; block sums + sorting net; Sinkhorn iterations; mixtures of K and V
      // (N_b^2 b d each); local + sorted attention (2 b keys per query, QK^T and PV).
      c.flops = 2 * B * N * D * D * 4 + B * N * D + 2 * B * H * nb * d * mb +
                (sink ? B * H * nb * nb * 8.0 * p.at("sinkhorn_iters").get<double>() : 3 * B * H * nb * nb) +
                2 * 2 * B * H * nb * nb * b * d + 4 * B * N * D * 2 * b;
      // Saved: q, k, v and the merged heads (4 B N D), the output (B N D), the log-sum-exp (B H N per
      // softmax group), the block summaries (B H N_b d) and Pi (B H N_b^2), and the Sinkhorn input;
      // combine = sum also keeps the local term of the output (B N D).
      c.activation_bytes = 4 * ((sum ? 6 : 5) * B * N * D + (sum ? 2 : 1) * B * H * N + B * H * nb * d +
                                (sink ? 2 : 1) * B * H * nb * nb);
      // Peak in the attention backward: the saved tensors, y, the upstream gradient per head, dq,
      // dk, dv, the local and sorted halves' gradients (8 B N D more) and dWo.
      c.peak_bytes = c.activation_bytes + 4 * (8 * B * N * D + D * D);
      // sort = sinkhorn: each iteration's normalised [N_b, N_b] matrices and their gradients.
      if (sink) c.peak_bytes += 4 * 2 * p.at("sinkhorn_iters").get<double>() * B * H * nb * nb;
      return c;
    };
    s.check_params = {{"block_size", 4}};
    return s;
  }

  // q, k, v: [B, H, N, d] -> [B, H, N, d]
  Var attend(const Var& q, const Var& k_in, const Var& v_in, const ab::MixerContext& ctx) override {
    if (ctx.causal) throw std::invalid_argument("sinkhorn has no causal form");
    const int64_t B = q.dim(0), N = q.dim(2), b = std::min(block_, N), nb = (N + b - 1) / b;
    if (nb > max_blocks_)
      throw ab::UsageError(fmt::format("sinkhorn: {} blocks of {} exceed max_num_blocks = {} (set by the maximum length)",
                                       nb, b, max_blocks_));
    auto masks = std::make_shared<Masks>();
    masks->keep.assign(static_cast<size_t>(B * N), 1);
    Var k = k_in, v = v_in;
    auto col_mask = std::make_shared<std::vector<uint8_t>>();  // [B, N_b]: source block is all padding
    if (ctx.key_mask) {
      const Tensor keepf = ab::keep_flags(ctx.key_mask, {B, 1, N, 1});
      for (int64_t i = 0; i < B * N; ++i) masks->keep[i] = keepf[i] != 0.f;
      // Padded keys and values are zeroed: their content reaches neither summaries nor mixtures.
      k = ab::mul(k, Var(keepf));
      v = ab::mul(v, Var(keepf));
      col_mask->assign(static_cast<size_t>(B * nb), 1);
      for (int64_t bi = 0; bi < B; ++bi)
        for (int64_t t = 0; t < N; ++t)
          if (masks->keep[bi * N + t]) (*col_mask)[bi * nb + t / b] = 0;
      // A sequence made only of padding keeps every block in the sorting (its keys are all zero).
      for (int64_t bi = 0; bi < B; ++bi)
        if (std::all_of(col_mask->begin() + bi * nb, col_mask->begin() + (bi + 1) * nb, [](uint8_t m) { return m != 0; }))
          std::fill(col_mask->begin() + bi * nb, col_mask->begin() + (bi + 1) * nb, 0);
    }
    masks->slot_ok.assign(static_cast<size_t>(B * b), 0);
    for (int64_t bi = 0; bi < B; ++bi)
      for (int64_t t = 0; t < N; ++t)
        if (masks->keep[bi * N + t] && (col_mask->empty() || !(*col_mask)[bi * nb + t / b])) masks->slot_ok[bi * b + t % b] = 1;

    // Sorting logits R [B, H, N_b, N_b] from the block summaries [B, H, N_b, d].
    Var r = ab::linear(block_sum(k, b), wp_, bp_);
    if (max_blocks_ != nb) r = ab::slice(r, 3, 0, nb);
    Var pi;
    if (sinkhorn_) {
      pi = sinkhorn_normalize(ab::scale(r, 1.f / temperature_), iters_, col_mask);
    } else {
      Tensor mask;
      if (!col_mask->empty()) {
        mask = Tensor::zeros({B, 1, 1, nb});
        for (int64_t i = 0; i < B * nb; ++i)
          if ((*col_mask)[i]) mask[i] = -std::numeric_limits<float>::infinity();
      }
      pi = ab::softmax(r, mask.defined() ? &mask : nullptr);
    }
    BlockConfig cf;
    cf.block = b;
    cf.scale = 1.f / std::sqrt(static_cast<float>(head_dim_));
    cf.sum_combine = sum_combine_;
    return block_attend(cf, q, k, v, pi, masks);
  }

 private:
  int64_t block_;
  bool sinkhorn_, sum_combine_;
  int iters_;
  float temperature_;
  int64_t max_blocks_ = 1;
  Var wp_, bp_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(Sinkhorn);
