// The block-sparse attention kernel and the local / sparse variant family built on it:
// - the kernel against a dense masked-softmax reference written here (double), for random
//   multi-segment patterns (per-head block lists, element masks, gathered orders, blocks larger than
//   a tile), ragged lengths, causality and key padding; forward and gradients;
// - rows with no visible key, thread-count independence, finite differences;
// - each variant's pattern recovered from its attend() (q = 0 gives uniform weights over the allowed
//   keys, one-hot values reveal which) against the explicit definitions;
// - the equalities with dense softmax (window covering everything, every token global, one block);
// - tracked memory of forward + backward at N = 2048 against an N x N buffer.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <set>

#include "attnbench/kernels/block_sparse_attention.hpp"
#include "attnbench/check.hpp"
#include "attnbench/variant.hpp"
#include "support/random_tensors.hpp"

using namespace ab;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
double hash01(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return static_cast<double>(mix(seed ^ mix(a ^ mix(b ^ mix(c)))) >> 11) * 0x1.0p-53;
}

Tensor random_tensor(const Shape& s, uint64_t seed, float scale = 1.f) { return test::normal_tensor(s, seed, 77, scale); }

// ---- dense reference (double) ----
using Allowed = std::function<bool(int64_t h, int64_t i, int64_t j)>;

struct DenseResult {
  std::vector<double> o, dq, dk, dv;
};

// q, k, v, dout: [B, H, N, d]; mask: [B * N] additive or empty.
DenseResult dense_reference(int64_t B, int64_t H, int64_t N, int64_t d, const Tensor& q, const Tensor& k,
                            const Tensor& v, const Allowed& allowed, const std::vector<float>& mask, bool causal,
                            double scale, const Tensor* dout) {
  DenseResult r;
  const size_t total = static_cast<size_t>(B * H * N * d);
  r.o.assign(total, 0.0);
  if (dout) r.dq.assign(total, 0.0), r.dk.assign(total, 0.0), r.dv.assign(total, 0.0);
  std::vector<double> p(static_cast<size_t>(N)), dp(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = (b * H + h) * N * d;
      for (int64_t i = 0; i < N; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        std::vector<int64_t> keys;
        for (int64_t j = 0; j < N; ++j) {
          if (!allowed(h, i, j) || (causal && j > i)) continue;
          const double bias = mask.empty() ? 0.0 : mask[static_cast<size_t>(b * N + j)];
          if (std::isinf(bias)) continue;
          double s = 0;
          for (int64_t t = 0; t < d; ++t) s += double(q[base + i * d + t]) * k[base + j * d + t];
          p[static_cast<size_t>(j)] = s * scale + bias;
          mx = std::max(mx, p[static_cast<size_t>(j)]);
          keys.push_back(j);
        }
        if (keys.empty()) continue;
        double z = 0;
        for (int64_t j : keys) z += (p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - mx));
        for (int64_t j : keys) p[static_cast<size_t>(j)] /= z;
        for (int64_t j : keys)
          for (int64_t t = 0; t < d; ++t) r.o[static_cast<size_t>(base + i * d + t)] += p[static_cast<size_t>(j)] * v[base + j * d + t];
        if (!dout) continue;
        double delta = 0;
        for (int64_t j : keys) {
          double g = 0;
          for (int64_t t = 0; t < d; ++t) g += double((*dout)[base + i * d + t]) * v[base + j * d + t];
          dp[static_cast<size_t>(j)] = g;
          delta += p[static_cast<size_t>(j)] * g;
        }
        for (int64_t j : keys) {
          const double pj = p[static_cast<size_t>(j)], ds = pj * (dp[static_cast<size_t>(j)] - delta);
          for (int64_t t = 0; t < d; ++t) {
            r.dv[static_cast<size_t>(base + j * d + t)] += pj * (*dout)[base + i * d + t];
            r.dq[static_cast<size_t>(base + i * d + t)] += scale * ds * k[base + j * d + t];
            r.dk[static_cast<size_t>(base + j * d + t)] += scale * ds * q[base + i * d + t];
          }
        }
      }
    }
  return r;
}

double max_err(const Tensor& got, const std::vector<double>& want) {
  double worst = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double e = std::fabs(got[i] - want[static_cast<size_t>(i)]) / (1.0 + std::fabs(want[static_cast<size_t>(i)]));
    if (!(e <= worst)) worst = std::isnan(e) ? std::numeric_limits<double>::infinity() : e;
  }
  return worst;
}

// ---- random multi-segment patterns with an independent definition ----
std::vector<int64_t> random_bounds(int64_t n, int64_t max_block, uint64_t seed) {
  std::vector<int64_t> b{0};
  RngStream r(seed, Purpose::check, 5);
  while (b.back() < n) b.push_back(std::min(n, b.back() + r.range(1, max_block)));
  if (n == 0) b = {0};
  return b;
}

std::vector<int64_t> block_of(const std::vector<int64_t>& bounds, const std::vector<int64_t>& pos, int64_t N) {
  // position -> block index in this order (or -1 when the position is not in the segment)
  std::vector<int64_t> out(static_cast<size_t>(N), -1);
  for (size_t blk = 0; blk + 1 < bounds.size(); ++blk)
    for (int64_t r = bounds[blk]; r < bounds[blk + 1]; ++r)
      out[static_cast<size_t>(pos.empty() ? r : pos[static_cast<size_t>(r)])] = static_cast<int64_t>(blk);
  return out;
}

struct RandomPattern {
  std::shared_ptr<const SparsePattern> pattern;
  Allowed allowed;
};

// Two segments: the identity order with random blocks, and gathered random subsets in random order.
// owner(h, i, j) in {0, 1, 2} decides which segment may allow a pair, so they are disjoint; a pair is
// allowed if its owner segment lists its block pair.
RandomPattern random_pattern(int64_t N, int64_t H, uint64_t seed, bool per_head, int64_t max_block) {
  const int64_t heads = per_head ? H : 1;
  auto owner = [seed](int64_t h, int64_t i, int64_t j) {
    const double u = hash01(seed, static_cast<uint64_t>(h), static_cast<uint64_t>(i), static_cast<uint64_t>(j));
    return u < 0.25 ? 0 : u < 0.75 ? 1 : 2;
  };
  auto listed = [seed](int seg, int64_t h, int64_t qb, int64_t kb) {
    return hash01(seed + 1000 * static_cast<uint64_t>(seg), static_cast<uint64_t>(h), static_cast<uint64_t>(qb),
                  static_cast<uint64_t>(kb)) < 0.6;
  };
  RngStream r(seed, Purpose::check, 9);
  auto subset_perm = [&](double keep) {
    std::vector<int64_t> all(static_cast<size_t>(N));
    std::iota(all.begin(), all.end(), 0);
    for (size_t i = all.size(); i > 1; --i) std::swap(all[i - 1], all[r.below(i)]);
    all.resize(static_cast<size_t>(std::max<int64_t>(1, static_cast<int64_t>(keep * N))));
    return all;
  };
  SegmentAxes a1{{}, {}, random_bounds(N, max_block, seed + 1), random_bounds(N, max_block, seed + 2)};
  const std::vector<int64_t> qp2 = subset_perm(0.7), kp2 = subset_perm(0.8);
  SegmentAxes a2{qp2, kp2, random_bounds(static_cast<int64_t>(qp2.size()), max_block, seed + 3),
                 random_bounds(static_cast<int64_t>(kp2.size()), max_block, seed + 4)};
  const auto qb1 = block_of(a1.q_bounds, {}, N), kb1 = block_of(a1.k_bounds, {}, N);
  const auto qb2 = block_of(a2.q_bounds, qp2, N), kb2 = block_of(a2.k_bounds, kp2, N);
  auto p = std::make_shared<SparsePattern>();
  p->length = N;
  for (int seg = 1; seg <= 2; ++seg) {
    const SegmentAxes& ax = seg == 1 ? a1 : a2;
    const int64_t nkb = static_cast<int64_t>(ax.k_bounds.size()) - 1;
    p->segments.push_back(build_segment(
        N, ax, heads,
        [&, seg](int64_t h, int64_t qb, std::vector<int32_t>& kbs) {
          for (int64_t kb = nkb - 1; kb >= 0; --kb)  // any order: the builder sorts
            if (listed(seg, h, qb, kb)) kbs.push_back(static_cast<int32_t>(kb));
        },
        [&, seg](int64_t h, int64_t i, int64_t j) { return owner(h, i, j) == seg; }));
  }
  RandomPattern out;
  out.pattern = p;
  out.allowed = [=](int64_t h, int64_t i, int64_t j) {
    const int64_t ph = per_head ? h : 0;
    const int o = owner(ph, i, j);
    if (o == 1) return listed(1, ph, qb1[static_cast<size_t>(i)], kb1[static_cast<size_t>(j)]);
    if (o == 2)
      return qb2[static_cast<size_t>(i)] >= 0 && kb2[static_cast<size_t>(j)] >= 0 &&
             listed(2, ph, qb2[static_cast<size_t>(i)], kb2[static_cast<size_t>(j)]);
    return false;
  };
  return out;
}

std::vector<float> padding_mask(int64_t B, int64_t N, uint64_t seed) {
  // Batch 0: a padded tail; batch 1 (if any): scattered padding. Additive: 0 keep, -inf drop.
  std::vector<float> m(static_cast<size_t>(B * N), 0.f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < N; ++j) {
      const bool pad = b == 0 ? j >= N - N / 3 : hash01(seed, 3, static_cast<uint64_t>(b), static_cast<uint64_t>(j)) < 0.3;
      if (pad) m[static_cast<size_t>(b * N + j)] = kNegInf;
    }
  return m;
}

struct KernelCase {
  int64_t B, H, N, d, max_block;
  bool per_head;
  uint64_t seed;
};

void check_kernel_case(const KernelCase& c) {
  const RandomPattern rp = random_pattern(c.N, c.H, c.seed, c.per_head, c.max_block);
  // The pattern's own coverage agrees with the independent definition, and segments are disjoint.
  for (int64_t h = 0; h < c.H; ++h) {
    const auto cov = rp.pattern->coverage(h);
    for (int64_t i = 0; i < c.N; ++i)
      for (int64_t j = 0; j < c.N; ++j)
        ASSERT_EQ(cov[static_cast<size_t>(i * c.N + j)], rp.allowed(h, i, j) ? 1 : 0) << "h " << h << " i " << i << " j " << j;
  }
  const Shape s{c.B, c.H, c.N, c.d};
  const Tensor q = random_tensor(s, c.seed + 11), k = random_tensor(s, c.seed + 12), v = random_tensor(s, c.seed + 13);
  const Tensor dout = random_tensor(s, c.seed + 14);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  const std::vector<float> pad = padding_mask(c.B, c.N, c.seed);
  Tensor mask = Tensor::from({c.B, 1, 1, c.N}, pad);
  for (bool causal : {false, true})
    for (bool masked : {false, true}) {
      SCOPED_TRACE(testing::Message() << "N " << c.N << " d " << c.d << " causal " << causal << " mask " << masked
                                      << " per_head " << c.per_head);
      Var qv(q.clone(), true), kv(k.clone(), true), vv(v.clone(), true);
      Var y = block_sparse_attention(qv, kv, vv, rp.pattern, scale, causal, masked ? &mask : nullptr);
      y.backward(dout);
      const DenseResult ref = dense_reference(c.B, c.H, c.N, c.d, q, k, v, rp.allowed, masked ? pad : std::vector<float>{},
                                              causal, scale, &dout);
      EXPECT_LT(max_err(y.value(), ref.o), 2e-5);
      EXPECT_LT(max_err(qv.grad(), ref.dq), 5e-5);
      EXPECT_LT(max_err(kv.grad(), ref.dk), 5e-5);
      EXPECT_LT(max_err(vv.grad(), ref.dv), 5e-5);
    }
}

}  // namespace

TEST(BlockSparseKernel, MatchesDenseReferenceOnRandomPatterns) {
  check_kernel_case({2, 3, 37, 5, 9, true, 1});     // ragged length, per-head lists, d not a multiple of 16
  check_kernel_case({2, 2, 29, 19, 4, false, 2});   // shared lists, small blocks, d > 16
  check_kernel_case({1, 2, 203, 16, 150, true, 3}); // blocks larger than a 64 x 64 tile
  check_kernel_case({1, 1, 1, 3, 1, false, 4});     // a single token
}

TEST(BlockSparseKernel, RowsWithoutKeysGiveZeroNotNaN) {
  const int64_t B = 2, H = 1, N = 10, d = 4;
  auto p = std::make_shared<SparsePattern>();
  p->length = N;
  // Query block 1 (rows 4..7) lists nothing; rows 8, 9 only see key 9, which batch 0 pads.
  p->segments.push_back(build_segment(
      N, {{}, {}, {0, 4, 8, 10}, {0, 4, 8, 10}}, 1,
      [](int64_t, int64_t qb, std::vector<int32_t>& kbs) {
        if (qb != 1) kbs.push_back(static_cast<int32_t>(qb));
      },
      [](int64_t, int64_t i, int64_t j) { return i < 8 || j == 9; }));
  std::vector<float> pad(static_cast<size_t>(B * N), 0.f);
  pad[9] = kNegInf;
  const Tensor mask = Tensor::from({B, 1, 1, N}, pad);
  Var q(random_tensor({B, H, N, d}, 1), true), k(random_tensor({B, H, N, d}, 2), true), v(random_tensor({B, H, N, d}, 3), true);
  for (bool causal : {false, true}) {
    Var y = block_sparse_attention(q, k, v, p, 0.5f, causal, &mask);
    y.backward(random_tensor(y.shape(), 4));
    for (int64_t i = 0; i < y.value().numel(); ++i) ASSERT_TRUE(std::isfinite(y.value()[i]));
    for (const Var* g : {&q, &k, &v})
      for (int64_t i = 0; i < g->grad().numel(); ++i) ASSERT_TRUE(std::isfinite(g->grad()[i]));
    for (int64_t t = 0; t < d; ++t) {
      EXPECT_EQ(y.value()[(0 * N + 5) * d + t], 0.f);  // listed nothing
      EXPECT_EQ(y.value()[(0 * N + 8) * d + t], 0.f);  // its only key is padded
      EXPECT_EQ(y.value()[(1 * N + 6) * d + t], 0.f);
    }
    EXPECT_NE(y.value()[(1 * N + 9) * d], 0.f);  // batch 1 keeps key 9
    q.zero_grad(), k.zero_grad(), v.zero_grad();
  }
  // The raw kernel reports lse = +inf for such rows.
  Tensor o = Tensor::empty({B, H, N, d}), lse = Tensor::empty({B, H, N});
  block_sparse_forward(*p, {B, H, N, d}, q.value().data(), k.value().data(), v.value().data(), mask.data(), B, 0.5f,
                       false, o.data(), lse.data());
  EXPECT_TRUE(std::isinf(lse[5]) && lse[5] > 0);
  EXPECT_TRUE(std::isinf(lse[8]) && lse[8] > 0);
  EXPECT_TRUE(std::isfinite(lse[N + 9]));
}

TEST(BlockSparseKernel, FiniteDifferenceGradients) {
  const int64_t B = 1, H = 2, N = 13, d = 3;
  const RandomPattern rp = random_pattern(N, H, 21, true, 4);
  const std::vector<float> pad = padding_mask(B, N, 5);
  const Tensor mask = Tensor::from({B, 1, 1, N}, pad);
  for (bool causal : {false, true}) {
    Var q(random_tensor({B, H, N, d}, 31), true), k(random_tensor({B, H, N, d}, 32), true), v(random_tensor({B, H, N, d}, 33), true);
    const GradCheckReport rep =
        grad_check([&] { return block_sparse_attention(q, k, v, rp.pattern, 0.6f, causal, &mask); }, {q, k, v});
    EXPECT_TRUE(rep.passed) << rep.detail << " (max abs " << rep.max_abs_error << ")";
  }
}

TEST(BlockSparseKernel, SameResultForAnyThreadCount) {
  const int64_t B = 2, H = 4, N = 300, d = 32;
  const RandomPattern rp = random_pattern(N, H, 41, true, 80);
  const Tensor q = random_tensor({B, H, N, d}, 1), k = random_tensor({B, H, N, d}, 2), v = random_tensor({B, H, N, d}, 3);
  const Tensor g = random_tensor({B, H, N, d}, 4);
  const int before = num_threads();
  std::vector<std::vector<float>> runs;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    Var qv(q.clone(), true), kv(k.clone(), true), vv(v.clone(), true);
    Var y = block_sparse_attention(qv, kv, vv, rp.pattern, 0.2f, true, nullptr);
    y.backward(g);
    std::vector<float> all = y.value().to_vector();
    for (const Var* t : {&qv, &kv, &vv}) {
      const auto x = t->grad().to_vector();
      all.insert(all.end(), x.begin(), x.end());
    }
    runs.push_back(all);
  }
  set_num_threads(before);
  EXPECT_TRUE(runs[0] == runs[1]);
}

TEST(BlockSparseKernel, RejectsInvalidPatterns) {
  // Overlapping bounds, positions twice, key blocks out of range, length mismatch.
  EXPECT_THROW(build_segment(8, {{}, {}, {0, 4, 4, 8}, {0, 8}}, 1, [](int64_t, int64_t, std::vector<int32_t>&) {}),
               std::invalid_argument);
  EXPECT_THROW(build_segment(8, {{1, 1}, {}, {0, 2}, {0, 8}}, 1, [](int64_t, int64_t, std::vector<int32_t>&) {}),
               std::invalid_argument);
  EXPECT_THROW(build_segment(8, {{}, {}, {0, 8}, {0, 8}}, 1,
                             [](int64_t, int64_t, std::vector<int32_t>& k) { k.push_back(1); }),
               std::invalid_argument);
  auto p = std::make_shared<SparsePattern>();
  p->length = 8;
  Var x(Tensor::zeros({1, 1, 9, 2}));
  EXPECT_THROW(block_sparse_attention(x, x, x, p, 1.f, false), std::invalid_argument);
}

// ---- variants ----
namespace {

MixerConfig config_for(const std::string& name, const Json& params, int64_t D, int64_t H, int64_t N, int layer = 0,
                       uint64_t seed = 1) {
  const VariantSpec& spec = VariantRegistry::instance().get(name);
  return MixerConfig{D, H, N, layer, seed, resolve_params(spec.params, params, name)};
}

// allowed[h][i * N + j] of a variant's attend() at length N: with q = 0 the weights are uniform over
// the allowed keys, and with one-hot values (d = N) row i of the output lists them.
std::vector<std::vector<uint8_t>> recover_pattern(const std::string& name, const Json& params, int64_t N, int64_t H,
                                                  bool causal, int layer = 0, uint64_t seed = 1) {
  auto mixer = VariantRegistry::instance().get(name).make(config_for(name, params, H * N, H, N, layer, seed));
  auto* attn = dynamic_cast<AttentionMixer*>(mixer.get());
  EXPECT_NE(attn, nullptr);
  Tensor q = Tensor::zeros({1, H, N, N}), v = Tensor::zeros({1, H, N, N});
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < N; ++j) v[(h * N + j) * N + j] = 1.f;
  MixerContext ctx;
  ctx.causal = causal;
  NoGrad ng;
  const Tensor y = attn->attend(Var(q), Var(random_tensor({1, H, N, N}, 3)), Var(v), ctx).value();
  std::vector<std::vector<uint8_t>> out(static_cast<size_t>(H), std::vector<uint8_t>(static_cast<size_t>(N * N), 0));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < N; ++i) {
      const float* row = y.data() + (h * N + i) * N;
      int64_t count = 0;
      for (int64_t j = 0; j < N; ++j) count += row[j] > 1e-6f;
      for (int64_t j = 0; j < N; ++j) {
        out[static_cast<size_t>(h)][static_cast<size_t>(i * N + j)] = row[j] > 1e-6f;
        if (row[j] > 1e-6f) {
          EXPECT_NEAR(row[j], 1.0 / count, 1e-5);
        }
      }
    }
  return out;
}

void expect_pattern(const std::string& name, const Json& params, int64_t N, bool causal,
                    const std::function<bool(int64_t i, int64_t j)>& def) {
  SCOPED_TRACE(testing::Message() << name << " " << params.dump() << " N " << N << " causal " << causal);
  const auto got = recover_pattern(name, params, N, 2, causal);
  int mismatches = 0;
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        const bool want = def(i, j) && (!causal || j <= i);
        if (got[static_cast<size_t>(h)][static_cast<size_t>(i * N + j)] != want && mismatches++ < 5)
          ADD_FAILURE() << "head " << h << " (" << i << ", " << j << "): got " << !want << ", want " << want;
      }
  EXPECT_EQ(mismatches, 0);
}

}  // namespace

TEST(SparseVariants, LocalBlockPattern) {
  for (bool causal : {false, true}) {
    expect_pattern("local_block", {{"block", 8}}, 32, causal, [](int64_t i, int64_t j) { return i / 8 == j / 8; });
    expect_pattern("local_block", {{"block", 5}}, 23, causal, [](int64_t i, int64_t j) { return i / 5 == j / 5; });
  }
}

TEST(SparseVariants, LocalWindowPattern) {
  for (bool causal : {false, true})
    for (int64_t w : {1, 4, 5, 9}) {
      const int64_t left = (w + 1) / 2 - 1, right = w / 2;  // ceil(w/2) to the left incl. i, floor(w/2) right
      expect_pattern("local_window", {{"window", w}, {"block", 4}}, 27, causal,
                     [=](int64_t i, int64_t j) { return j >= i - left && j <= i + right; });
    }
}

TEST(SparseVariants, SparseFixedPatternN32Block8) {
  for (bool causal : {false, true}) {
    // fixed, l = 8, c = 2: own group of 8, plus positions 6, 7 of every group.
    expect_pattern("sparse_fixed", {{"stride", 8}, {"summary", 2}}, 32, causal,
                   [](int64_t i, int64_t j) { return i / 8 == j / 8 || j % 8 >= 6; });
    // ragged last group (30 = 3 * 8 + 6), c = 3
    expect_pattern("sparse_fixed", {{"stride", 8}, {"summary", 3}}, 30, causal,
                   [](int64_t i, int64_t j) { return i / 8 == j / 8 || j % 8 >= 5; });
    // strided, l = 8: band |i - j| < 8, plus every 8th token.
    for (int64_t N : {32, 30})
      expect_pattern("sparse_fixed", {{"pattern", "strided"}, {"stride", 8}}, N, causal,
                     [](int64_t i, int64_t j) { return std::abs(i - j) < 8 || (i - j) % 8 == 0; });
  }
  // LRA's quirk: the triangle even in encoder mode.
  expect_pattern("sparse_fixed", {{"stride", 8}, {"summary", 2}, {"causal_pattern", true}}, 32, false,
                 [](int64_t i, int64_t j) { return (i / 8 == j / 8 || j % 8 >= 6) && j <= i; });
}

TEST(SparseVariants, LongformerPattern) {
  for (bool causal : {false, true})
    for (int64_t g : {0, 1, 3}) {
      const int64_t w = 6, left = 2, right = 3;
      expect_pattern("longformer", {{"window", w}, {"global_tokens", g}, {"block", 4}}, 26, causal,
                     [=](int64_t i, int64_t j) { return i < g || j < g || (j >= i - left && j <= i + right); });
    }
}

TEST(SparseVariants, BigBirdPatternStructure) {
  const int64_t N = 64, block = 4, nb = 16, r = 3, H = 2;
  for (bool causal : {false, true}) {
    const Json params{{"block", block}, {"random_blocks", r}};
    const auto got = recover_pattern("bigbird", params, N, H, causal);
    std::vector<std::set<int64_t>> random_sets;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t qb = 0; qb < nb; ++qb) {
        std::set<int64_t> kbs;
        for (int64_t kb = 0; kb < nb; ++kb) {
          // Whole blocks: every element of a block pair is allowed (up to causality) or none is.
          int64_t on = 0, possible = 0;
          for (int64_t i = qb * block; i < qb * block + block; ++i)
            for (int64_t j = kb * block; j < kb * block + block; ++j)
              if (!causal || j <= i) ++possible, on += got[static_cast<size_t>(h)][static_cast<size_t>(i * N + j)];
          ASSERT_TRUE(on == 0 || on == possible) << "h " << h << " block pair " << qb << ", " << kb;
          if (on > 0) kbs.insert(kb);
        }
        const bool global = qb == 0 || qb == nb - 1;
        std::set<int64_t> expected_fixed;
        for (int64_t kb = 0; kb < nb; ++kb)
          if (global || std::abs(kb - qb) <= 1 || kb == 0 || kb == nb - 1)
            if (!causal || kb <= qb) expected_fixed.insert(kb);
        std::set<int64_t> extra;
        for (int64_t kb : expected_fixed) EXPECT_TRUE(kbs.count(kb)) << "missing block " << kb << " for " << qb;
        for (int64_t kb : kbs)
          if (!expected_fixed.count(kb)) extra.insert(kb);
        if (global) {
          EXPECT_TRUE(extra.empty());
          continue;
        }
        // r random blocks among the candidates (only past blocks when causal).
        int64_t candidates = 0;
        for (int64_t kb = 1; kb < nb - 1; ++kb)
          if (std::abs(kb - qb) > 1 && (!causal || kb < qb)) ++candidates;
        EXPECT_EQ(static_cast<int64_t>(extra.size()), std::min(r, candidates)) << "query block " << qb;
        random_sets.push_back(extra);
      }
    // Heads draw independently: their random blocks differ somewhere.
    bool differ = false;
    for (int64_t qb = 0; qb < nb - 2; ++qb) differ = differ || random_sets[static_cast<size_t>(qb)] != random_sets[static_cast<size_t>(nb - 2 + qb)];
    EXPECT_TRUE(differ);
  }
  // Fixed per layer: the same seed and layer repeat; another layer draws other blocks.
  const Json params{{"block", 4}, {"random_blocks", 3}};
  EXPECT_EQ(recover_pattern("bigbird", params, N, H, false, 0), recover_pattern("bigbird", params, N, H, false, 0));
  EXPECT_NE(recover_pattern("bigbird", params, N, H, false, 0), recover_pattern("bigbird", params, N, H, false, 1));
}

namespace {

// y and dL/dx of two variants on the same input with the same seed (hence the same projections).
void expect_same_as_softmax(const std::string& name, const Json& params, int64_t N) {
  const int64_t B = 2, D = 32, H = 4;
  const Tensor x = random_tensor({B, N, D}, 91);
  std::vector<int32_t> tokens(static_cast<size_t>(B * N), 1);
  for (int64_t j = N - 3; j < N; ++j) tokens[static_cast<size_t>(N + j)] = 0;
  const Tensor mask = key_padding_mask(tokens, B, N);
  for (bool causal : {false, true}) {
    SCOPED_TRACE(testing::Message() << name << " " << params.dump() << " causal " << causal);
    std::vector<Tensor> ys, gs;
    for (const std::string& v : {std::string("softmax"), name}) {
      auto m = VariantRegistry::instance().get(v).make(config_for(v, v == name ? params : Json::object(), D, H, N));
      Var xv(x.clone(), true);
      MixerContext ctx;
      ctx.causal = causal;
      ctx.key_mask = &mask;
      Var y = m->forward(xv, ctx);
      y.backward(random_tensor(y.shape(), 92));
      ys.push_back(y.value());
      gs.push_back(xv.grad());
    }
    double ey = 0, eg = 0;
    for (int64_t i = 0; i < ys[0].numel(); ++i) ey = std::max(ey, double(std::fabs(ys[0][i] - ys[1][i])));
    for (int64_t i = 0; i < gs[0].numel(); ++i) eg = std::max(eg, double(std::fabs(gs[0][i] - gs[1][i])));
    EXPECT_LT(ey, 2e-5);
    EXPECT_LT(eg, 5e-5);
  }
}

}  // namespace

TEST(SparseVariants, EqualDenseSoftmaxWhenThePatternIsFull) {
  const int64_t N = 40;
  expect_same_as_softmax("local_window", {{"window", 2 * N}, {"block", 16}}, N);
  expect_same_as_softmax("local_window", {{"window", 2 * N - 1}, {"block", 7}}, N);
  expect_same_as_softmax("longformer", {{"window", 3}, {"global_tokens", N}, {"block", 16}}, N);
  expect_same_as_softmax("local_block", {{"block", N}}, N);
  expect_same_as_softmax("sparse_fixed", {{"stride", N}, {"summary", 0}}, N);
  expect_same_as_softmax("bigbird", {{"block", 8}, {"random_blocks", 5}}, N);  // 5 blocks: window + globals cover all
}

TEST(SparseVariants, StridedModePassesConformance) {
  const auto results = check_variant(VariantRegistry::instance().get("sparse_fixed"), {{"pattern", "strided"}, {"stride", 3}});
  for (const auto& r : results) EXPECT_TRUE(r.passed) << r.check << ": " << r.detail;
}

TEST(SparseVariants, MemoryAtN2048IsFarBelowAnNxNBuffer) {
  const int64_t B = 1, N = 2048, D = 64, H = 8;
  const double nxn = 4.0 * B * H * N * N;  // one fp32 score matrix per head: 128 MiB
  for (const std::string name : {"local_block", "local_window", "sparse_fixed", "longformer", "bigbird"}) {
    const VariantSpec& spec = VariantRegistry::instance().get(name);
    const Json params = resolve_params(spec.params, Json::object(), name);
    const MemoryMeasure m = measure_mixer_memory(spec, params, B, N, D, H, false);
    const double declared = spec.cost({B, N, D, H, &params, false}).activation_bytes;
    EXPECT_LT(m.peak_bytes, nxn / 8) << name << ": peak " << m.peak_bytes;
    EXPECT_NEAR(static_cast<double>(m.saved_bytes), declared, 0.05 * declared) << name;
  }
}
