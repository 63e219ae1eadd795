// reformer_lsh — Reformer's LSH attention: shared-QK, multi-round angular hashing, sort, chunked attention.
// Kitaev, Kaiser, Levskaya 2020, "Reformer: The Efficient Transformer" (LRA reformer_attention.py).
// Per head and hash round r: keys are the shared queries normalised (k_t = q_t / |q_t|); a random
// rotation R_r [d, n_buckets/2] ~ N(0, 1) gives bucket h_r(t) = argmax([q_t R_r ; -q_t R_r]); positions
// are sorted by (bucket, position) and cut into chunks of chunk_len; each chunk's queries attend to
// the keys of their own chunk, `chunks_before` earlier and `chunks_after` later chunks (cyclically,
// each chunk at most once). A query does not attend to its own position (score -5e4, as in the
// paper) unless nothing else is visible. The rounds are combined by log-sum-exp weighting, which is
// one softmax over the union (with repetitions) of the keys seen in every round.
// Time O(B H N r (d n_buckets/2 + w d)) with w = (1 + before + after) chunk_len keys per query, plus an
// O(N) counting sort per round; memory saved for backward O(B N D + B H N r) (q, v, the output, the
// per-query log-sum-exp and the sort permutations); transient tiles O(w d) per thread, never N x N.
// Capabilities: bidirectional; key-padding mask honoured (padded positions take a bucket after all
// real ones, so they never change how real positions are chunked, and are masked as keys);
// stochastic (rotations drawn per forward from RngStream(seed, mixer, step, layer, head)).
// No causal form (the LRA code leaves it unimplemented too).
// Caveats and compatibility switches (reference §3.8): the LRA code multiplies the logits by sqrt(d)
// instead of dividing (`lra_compat_scale`) and does not normalise the shared keys
// (`normalize_keys = false`); LRA defaults are chunk_len 10, n_buckets 10, n_hashes 1,
// chunks_before 1. Pairs repeated across rounds are counted once per round (no duplicate
// correction, as lucidrains' default). Bucket ids and permutations are constants for backward.
// Owns its projections (W_qk, W_v, W_o; there is no W_k).
#include <algorithm>
#include <cmath>
#include <cstring>
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

constexpr float kSelfScore = -5e4f;  // the paper's self-attention logit
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct LshConfig {
  int64_t heads = 1, head_dim = 1;
  int64_t n_hashes = 1, chunk_len = 32, n_buckets = 2, before = 1, after = 0;
  bool normalize_keys = true;
  float scale = 1.f;  // logit multiplier: 1/sqrt(d), or sqrt(d) in LRA compatibility
};

using ab::vec::axpy;
using ab::vec::dot;

// Padded key positions [B, N] from an additive mask [B, 1, 1, N] (null: none).
std::vector<uint8_t> padded_keys(const Tensor* key_mask, int64_t B, int64_t N) {
  std::vector<uint8_t> pad(static_cast<size_t>(B * N), 0);
  if (key_mask)
    for (int64_t i = 0; i < B * N; ++i) pad[i] = ab::is_padded_key((*key_mask)[i]) ? 1 : 0;
  return pad;
}

// The chunks a chunk attends to, each at most once: (c - before .. c + after) mod nc.
std::vector<int64_t> window_chunks(int64_t c, int64_t nc, int64_t before, int64_t after) {
  std::vector<int64_t> w;
  for (int64_t off = -before; off <= after; ++off) {
    const int64_t k = ((c + off) % nc + nc) % nc;
    if (std::find(w.begin(), w.end(), k) == w.end()) w.push_back(k);
  }
  return w;
}

// 1 / |q_t| (regularised) per position of one head: q [N, d] -> r [N]
void inverse_norms(const float* q, int64_t N, int64_t d, bool normalize, float* r) {
  for (int64_t t = 0; t < N; ++t) {
    if (!normalize) {
      r[t] = 1.f;
      continue;
    }
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += double(q[t * d + c]) * q[t * d + c];
    r[t] = static_cast<float>(1.0 / std::sqrt(s + 1e-12));
  }
}

// Buckets of one head and round, then the stable sort by (bucket, position): q [N, d],
// rot [d, nb/2] -> perm [N] (sorted slot -> position). Padded positions go to bucket nb.
void hash_and_sort(const float* q, const uint8_t* pad, const float* rot, int64_t N, int64_t d, int64_t nb,
                   int32_t* perm, std::vector<int32_t>& bucket, std::vector<int64_t>& count, std::vector<float>& proj) {
  const int64_t half = nb / 2;
  for (int64_t t = 0; t < N; ++t) {
    if (pad[t]) {
      bucket[t] = static_cast<int32_t>(nb);
      continue;
    }
    std::fill(proj.begin(), proj.begin() + half, 0.f);
    for (int64_t c = 0; c < d; ++c) axpy(proj.data(), rot + c * half, q[t * d + c], half);
    // argmax over [proj ; -proj], the first maximum wins
    float best = proj[0];
    int32_t arg = 0;
    for (int64_t j = 1; j < half; ++j)
      if (proj[j] > best) best = proj[j], arg = static_cast<int32_t>(j);
    for (int64_t j = 0; j < half; ++j)
      if (-proj[j] > best) best = -proj[j], arg = static_cast<int32_t>(half + j);
    bucket[t] = arg;
  }
  std::fill(count.begin(), count.end(), 0);
  for (int64_t t = 0; t < N; ++t) ++count[bucket[t] + 1];
  for (int64_t b = 1; b <= nb + 1; ++b) count[b] += count[b - 1];
  for (int64_t t = 0; t < N; ++t) perm[count[bucket[t]]++] = static_cast<int32_t>(t);
}

// Gathered keys and values of one window: positions pos[w]; kT [d, w] (normalised keys, transposed),
// kb [w, d], vb [w, d], vT [d, w].
struct Tile {
  std::vector<int32_t> pos;
  std::vector<float> kT, kb, vb, vT, dkb, dvb, s;
  void gather(const int32_t* perm, const std::vector<int64_t>& chunks, int64_t N, int64_t clen, const float* q,
              const float* v, const float* rnorm, int64_t d, bool want_vT) {
    pos.clear();
    for (int64_t k : chunks)
      for (int64_t sl = k * clen; sl < std::min(N, (k + 1) * clen); ++sl) pos.push_back(perm[sl]);
    const int64_t w = static_cast<int64_t>(pos.size());
    kT.resize(d * w), kb.resize(w * d), vb.resize(w * d), s.resize(w);
    if (want_vT) vT.resize(d * w);
    for (int64_t j = 0; j < w; ++j) {
      const int64_t t = pos[j];
      for (int64_t c = 0; c < d; ++c) {
        const float kv = q[t * d + c] * rnorm[t];
        kb[j * d + c] = kv;
        kT[c * w + j] = kv;
        vb[j * d + c] = v[t * d + c];
        if (want_vT) vT[c * w + j] = v[t * d + c];
      }
    }
  }
  // Scores of query t (q row qt) against the tile: s[j], with padding and self masks.
  // Returns the maximum score (-inf if every key is masked).
  float scores(const float* qt, int64_t t, const uint8_t* pad, int64_t d, float scale) {
    const int64_t w = static_cast<int64_t>(pos.size());
    std::fill(s.begin(), s.begin() + w, 0.f);
    for (int64_t c = 0; c < d; ++c) {
      axpy(s.data(), kT.data() + c * w, qt[c] * scale, w);
    }
    float mx = kNegInf;
    for (int64_t j = 0; j < w; ++j) {
      if (pad[pos[j]]) s[j] = kNegInf;
      else if (pos[j] == t) s[j] = kSelfScore;
      mx = std::max(mx, s[j]);
    }
    return mx;
  }
};

// Forward of every (batch, head) unit.
// q, v: [B, H, N, d]; rot: [H, r, d, nb/2]; pad: [B, N] -> o: [B, H, N, d], lse: [B, H, N],
// perm: [B, H, r, N] (int32 stored in a float tensor's bytes).
void lsh_forward(const LshConfig& cf, const Tensor& q, const Tensor& v, const Tensor& rot, const std::vector<uint8_t>& pad,
                 Tensor& o, Tensor& lse, Tensor& perm_t) {
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3);
  const int64_t R = cf.n_hashes, nb = cf.n_buckets, half = nb / 2, clen = cf.chunk_len;
  const int64_t nc = (N + clen - 1) / clen;
  ab::parallel_for(B * H, 1, [&](int64_t range_begin, int64_t range_end) {
    std::vector<int32_t> bucket(N);
    std::vector<int64_t> count(nb + 2);
    std::vector<float> proj(half), rnorm(N), mrun(N), lrun(N);
    Tile tile;
    for (int64_t u = range_begin; u < range_end; ++u) {
      const int64_t b = u / H, h = u % H;
      const float* qu = q.data() + u * N * d;
      const float* vu = v.data() + u * N * d;
      const uint8_t* padu = pad.data() + b * N;
      float* ou = o.data() + u * N * d;
      float* lu = lse.data() + u * N;
      int32_t* pu = reinterpret_cast<int32_t*>(perm_t.data()) + u * R * N;
      inverse_norms(qu, N, d, cf.normalize_keys, rnorm.data());
      std::fill(ou, ou + N * d, 0.f);
      std::fill(mrun.begin(), mrun.end(), kNegInf);
      std::fill(lrun.begin(), lrun.end(), 0.f);
      for (int64_t r = 0; r < R; ++r) {
        int32_t* perm = pu + r * N;
        hash_and_sort(qu, padu, rot.data() + (h * R + r) * d * half, N, d, nb, perm, bucket, count, proj);
        for (int64_t ch = 0; ch < nc; ++ch) {
          tile.gather(perm, window_chunks(ch, nc, cf.before, cf.after), N, clen, qu, vu, rnorm.data(), d, false);
          const int64_t w = static_cast<int64_t>(tile.pos.size());
          for (int64_t sl = ch * clen; sl < std::min(N, (ch + 1) * clen); ++sl) {
            const int64_t t = perm[sl];
            const float mloc = tile.scores(qu + t * d, t, padu, d, cf.scale);
            if (mloc == kNegInf) continue;
            // Online merge with the rounds seen so far: (m, l, o) <- (m, l, o) (+) this round.
            const float mnew = std::max(mrun[t], mloc);
            const float alpha = std::exp(mrun[t] - mnew);  // 0 on the first visit
            float* ot = ou + t * d;
            for (int64_t c = 0; c < d; ++c) ot[c] *= alpha;
            float l = lrun[t] * alpha;
            for (int64_t j = 0; j < w; ++j) {
              const float pj = std::exp(tile.s[j] - mnew);
              if (pj == 0.f) continue;
              l += pj;
              axpy(ot, tile.vb.data() + j * d, pj, d);
            }
            mrun[t] = mnew;
            lrun[t] = l;
          }
        }
      }
      for (int64_t t = 0; t < N; ++t) {
        if (lrun[t] > 0.f) {
          const float inv = 1.f / lrun[t];
          for (int64_t c = 0; c < d; ++c) ou[t * d + c] *= inv;
          lu[t] = mrun[t] + std::log(lrun[t]);
        } else {
          lu[t] = kNegInf;  // every key masked: output 0
        }
      }
    }
  });
}

// Backward: recomputes the scores per tile from q and the saved log-sum-exp.
// g, o: [B, H, N, d] -> dq, dv: [B, H, N, d]
void lsh_backward(const LshConfig& cf, const Tensor& g, const Tensor& q, const Tensor& v, const Tensor& o,
                  const Tensor& lse, const Tensor& perm_t, const std::vector<uint8_t>& pad, Tensor& dq, Tensor& dv) {
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3);
  const int64_t R = cf.n_hashes, clen = cf.chunk_len, nc = (N + clen - 1) / clen;
  ab::parallel_for(B * H, 1, [&](int64_t range_begin, int64_t range_end) {
    std::vector<float> rnorm(N), delta(N), dp;
    Tile tile;
    for (int64_t u = range_begin; u < range_end; ++u) {
      const int64_t b = u / H;
      const float* qu = q.data() + u * N * d;
      const float* vu = v.data() + u * N * d;
      const float* gu = g.data() + u * N * d;
      const float* ou = o.data() + u * N * d;
      const float* lu = lse.data() + u * N;
      const uint8_t* padu = pad.data() + b * N;
      const int32_t* pu = reinterpret_cast<const int32_t*>(perm_t.data()) + u * R * N;
      float* dqu = dq.data() + u * N * d;
      float* dvu = dv.data() + u * N * d;
      std::fill(dqu, dqu + N * d, 0.f);
      std::fill(dvu, dvu + N * d, 0.f);
      inverse_norms(qu, N, d, cf.normalize_keys, rnorm.data());
      for (int64_t t = 0; t < N; ++t) {
        delta[t] = dot(gu + t * d, ou + t * d, d);  // dO_t . O_t
      }
      for (int64_t r = 0; r < R; ++r) {
        const int32_t* perm = pu + r * N;
        for (int64_t ch = 0; ch < nc; ++ch) {
          tile.gather(perm, window_chunks(ch, nc, cf.before, cf.after), N, clen, qu, vu, rnorm.data(), d, true);
          const int64_t w = static_cast<int64_t>(tile.pos.size());
          tile.dkb.assign(w * d, 0.f);
          tile.dvb.assign(w * d, 0.f);
          dp.resize(w);
          for (int64_t sl = ch * clen; sl < std::min(N, (ch + 1) * clen); ++sl) {
            const int64_t t = perm[sl];
            if (lu[t] == kNegInf) continue;
            const float* qt = qu + t * d;
            const float* gt = gu + t * d;
            tile.scores(qt, t, padu, d, cf.scale);
            // dP_j = dO_t . v_j
            std::fill(dp.begin(), dp.end(), 0.f);
            for (int64_t c = 0; c < d; ++c) axpy(dp.data(), tile.vT.data() + c * w, gt[c], w);
            float* dqt = dqu + t * d;
            for (int64_t j = 0; j < w; ++j) {
              const float pj = std::exp(tile.s[j] - lu[t]);
              if (pj == 0.f) continue;
              axpy(tile.dvb.data() + j * d, gt, pj, d);
              // Masked and self logits are constants: no gradient to q or k through them.
              if (tile.pos[j] == t) continue;
              const float ds = pj * (dp[j] - delta[t]) * cf.scale;
              axpy(dqt, tile.kb.data() + j * d, ds, d);
              axpy(tile.dkb.data() + j * d, qt, ds, d);
            }
          }
          // Scatter the tile's key and value gradients; keys are q_t r_t, so
          // dq_t += r_t dk - r_t^3 (q_t . dk) q_t (or dq_t += dk without normalisation).
          for (int64_t j = 0; j < w; ++j) {
            const int64_t t = tile.pos[j];
            const float* dkr = tile.dkb.data() + j * d;
            const float* dvr = tile.dvb.data() + j * d;
            float* dqt = dqu + t * d;
            float* dvt = dvu + t * d;
            axpy(dvt, dvr, 1.f, d);
            if (cf.normalize_keys) {
              const float* qt = qu + t * d;
              const float rt = rnorm[t], k3 = rt * rt * rt * dot(qt, dkr, d);
              axpy(dqt, dkr, rt, d);
              axpy(dqt, qt, -k3, d);
            } else {
              axpy(dqt, dkr, 1.f, d);
            }
          }
        }
      }
    }
  });
}

// The fused op: q, v [B, H, N, d] -> o [B, H, N, d].
Var lsh_attend(const LshConfig& cf, const Var& q, const Var& v, const ab::MixerContext& ctx) {
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), d = q.dim(3);
  const int64_t R = cf.n_hashes, half = cf.n_buckets / 2;
  // Rotations [H, r, d, nb/2], one stream per head.
  Tensor rot = Tensor::empty({H, R, d, half});
  for (int64_t h = 0; h < H; ++h) {
    ab::RngStream rs(ctx.seed, ab::Purpose::mixer, static_cast<uint64_t>(ctx.step), static_cast<uint64_t>(ctx.layer),
                     static_cast<uint64_t>(h));
    float* rp = rot.data() + h * R * d * half;
    for (int64_t i = 0; i < R * d * half; ++i) rp[i] = rs.normal();
  }
  auto pad = std::make_shared<std::vector<uint8_t>>(padded_keys(ctx.key_mask, B, N));
  Tensor o = Tensor::empty({B, H, N, d});
  Tensor lse = Tensor::empty({B, H, N});
  Tensor perm = Tensor::empty({B, H, R, N});  // int32 positions in float-sized slots
  lsh_forward(cf, q.value(), v.value(), rot, *pad, o, lse, perm);
  return ab::make_op_result(o, {q, v}, [cf, gq = q.sink(), gv = v.sink(), qv = q.value(), vv = v.value(), o, lse, perm, pad](const Tensor& g) {
    Tensor dq = Tensor::empty(qv.shape()), dv = Tensor::empty(vv.shape());
    lsh_backward(cf, g, qv, vv, o, lse, perm, *pad, dq, dv);
    gq.accumulate(dq);
    gv.accumulate(dv);
  });
}

class ReformerLSH final : public ab::Mixer {
 public:
  explicit ReformerLSH(const ab::MixerConfig& cfg)
      : d_model_(cfg.d_model), heads_(cfg.heads), head_dim_(cfg.heads > 0 ? cfg.d_model / cfg.heads : 0), params_(cfg.params) {
    if (heads_ <= 0 || d_model_ % heads_ != 0)
      throw ab::UsageError(fmt::format("model.d_model = {} must be a multiple of model.heads = {}", d_model_, heads_));
    const int64_t nb = params_.at("n_buckets").get<int64_t>();
    if (nb != 0 && nb % 2 != 0)
      throw ab::UsageError(fmt::format("variant 'reformer_lsh': n_buckets = {} must be even (or 0 = automatic)", nb));
    auto stream = [&](uint64_t which) { return ab::RngStream(cfg.seed, ab::Purpose::init, 1000 + cfg.layer, which); };
    wqk_ = add_param("wqk", ab::init_xavier_uniform(d_model_, d_model_, stream(0)));
    wv_ = add_param("wv", ab::init_xavier_uniform(d_model_, d_model_, stream(2)));
    wo_ = add_param("wo", ab::init_xavier_uniform(d_model_, d_model_, stream(3)));
  }

  // n_buckets for a length: the given one, or N / chunk_len rounded up to an even number >= 2.
  static int64_t buckets_for(const ab::Json& p, int64_t N) {
    const int64_t nb = p.at("n_buckets").get<int64_t>(), c = p.at("chunk_len").get<int64_t>();
    if (nb > 0) return nb;
    return std::max<int64_t>(2, 2 * ((N + 2 * c - 1) / (2 * c)));
  }

  static ab::VariantSpec spec() {
    ab::VariantSpec s = ab::variant_spec(
        "reformer_lsh", "learned-sparse",
        "Reformer LSH attention: shared QK, angular hashing rounds, sorted chunks (self excluded)",
        "Kitaev, Kaiser, Levskaya 2020, Reformer: The Efficient Transformer",
        {
            ab::int_param("n_hashes", 1, "hash rounds, combined by log-sum-exp weighting (LRA 1, lucidrains 8)", 1, 16),
            ab::int_param("chunk_len", 32, "sorted positions per chunk (LRA 10)", 1, 1 << 20),
            ab::int_param("n_buckets", 0,
                          "buckets per round, even; 0 = N / chunk_len rounded up to an even number >= 2 (LRA 10)", 0,
                          1 << 16),
            ab::int_param("chunks_before", 1, "earlier chunks each chunk attends to (cyclic)", 0, 16),
            ab::int_param("chunks_after", 0, "later chunks each chunk attends to (cyclic)", 0, 16),
            ab::bool_param("normalize_keys", true,
                           "keys are the shared queries divided by their norm (paper); LRA: false"),
            ab::bool_param("lra_compat_scale", false,
                           "multiply the logits by sqrt(d) as the LRA code does (bug) instead of dividing"),
        },
        {.causal = false, .bidirectional = true, .padding_mask = true, .stochastic = true});
    s.cost = [](const ab::CostArgs& a) {
      const double B = a.batch, N = a.length, D = a.d_model, H = a.heads;
      const ab::Json& p = *a.params;
      const double r = p.at("n_hashes").get<double>(), c = p.at("chunk_len").get<double>();
      const double nb = static_cast<double>(buckets_for(p, a.length));
      const double win = std::min(N, (1 + p.at("chunks_before").get<double>() + p.at("chunks_after").get<double>()) * c);
      ab::Cost cost;
      // Projections (qk, v, o) + hashing (N d nb/2 per head and round) + QK^T and PV over w keys.
      cost.flops = 2 * B * N * D * D * 3 + r * 2 * B * N * D * (nb / 2) + r * 4 * B * N * D * win;
      // Saved: q and v heads, the output, the merged heads of the output projection (4 B N D floats),
      // the log-sum-exp (B H N) and the permutations (B H r N int32).
      cost.activation_bytes = 4 * (4 * B * N * D + B * H * N * (1 + r));
      // Peak in the chunked attention's backward: the saved tensors, y, the upstream gradient and
      // dqk, dv (3 B N D more) and dWo. (With 2 threads, oneDNN's packing of x^T in a
      // weight-gradient GEMM adds about one B N D at small sizes.)
      cost.peak_bytes = cost.activation_bytes + 4 * (3 * B * N * D + D * D);
      return cost;
    };
    s.check_params = {{"chunk_len", 4}, {"n_buckets", 2}};
    return s;
  }

  // x: [B, N, D] -> [B, N, D]
  Var forward(const Var& x, const ab::MixerContext& ctx) override {
    if (ctx.causal) throw std::invalid_argument("reformer_lsh has no causal form");
    const int64_t B = x.dim(0), N = x.dim(1);
    LshConfig cf;
    cf.heads = heads_;
    cf.head_dim = head_dim_;
    cf.n_hashes = params_.at("n_hashes").get<int64_t>();
    cf.chunk_len = params_.at("chunk_len").get<int64_t>();
    cf.n_buckets = buckets_for(params_, N);
    cf.before = params_.at("chunks_before").get<int64_t>();
    cf.after = params_.at("chunks_after").get<int64_t>();
    cf.normalize_keys = params_.at("normalize_keys").get<bool>();
    const float sd = std::sqrt(static_cast<float>(head_dim_));
    cf.scale = params_.at("lra_compat_scale").get<bool>() ? sd : 1.f / sd;
    auto heads = [&](const Var& w) {
      return ab::permute(ab::reshape(ab::linear(x, w), {B, N, heads_, head_dim_}), {0, 2, 1, 3});
    };
    Var o = lsh_attend(cf, heads(wqk_), heads(wv_), ctx);  // [B, H, N, d]
    return ab::linear(ab::reshape(ab::permute(o, {0, 2, 1, 3}), {B, N, d_model_}), wo_);
  }

 private:
  int64_t d_model_, heads_, head_dim_;
  ab::Json params_;
  Var wqk_, wv_, wo_;
};

}  // namespace

ATTNBENCH_REGISTER_VARIANT(ReformerLSH);
