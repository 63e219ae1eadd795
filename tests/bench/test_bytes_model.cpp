// The memory traffic a bench cell charges to a mixer (Cost::bytes, or its default: x read, y
// written, the parameters read, the saved tensors written) against a count written here from each
// algorithm and the shapes alone, never from the variant's cost function: what the forward must
// read and write (input, output, weights) and what its backward needs kept (saved tensors; state).
// A fwd_bwd cell charges three forwards (bench.cpp). Exact up to rounding (relative 1e-9).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "bench/bench.hpp"

using namespace ab;

namespace {

Json defaults(const std::string& name, Json overrides = Json::object()) {
  const VariantSpec& spec = VariantRegistry::instance().get(name);
  return resolve_params(spec.params, overrides, spec.name);
}

double cell_bytes(const std::string& name, const Json& p, const BenchShape& s, Direction dir) {
  return make_bench_cell(VariantRegistry::instance().get(name), p, s, dir, 1)->bytes();
}

constexpr double kF = 4;  // bytes per float

// Multi-head attention's projections: Wq, Wk, Wv, Wo [D, D], no biases.
double attention_io(const BenchShape& s) {
  const double B = s.batch, N = s.length, D = s.d_model;
  return kF * (B * N * D /* x */ + B * N * D /* y */ + 4 * D * D);
}

// Dense softmax attention: backward needs q (scaled), k, v, the probabilities P [B, H, N, N] and
// the merged heads (Wo's input).
double softmax_bytes(const BenchShape& s) {
  const double B = s.batch, N = s.length, D = s.d_model, H = s.heads;
  return attention_io(s) + kF * (4 * B * N * D + B * H * N * N);
}

// Linear attention (elu + 1): backward needs q, k, v and the merged heads; the bidirectional form
// also keeps the per-head summary S = sum phi(k) v^T [d, d] and z = sum phi(k) [d] (the causal scan
// recomputes its prefix states instead).
double linear_elu_bytes(const BenchShape& s) {
  const double B = s.batch, N = s.length, D = s.d_model, H = s.heads, d = D / H;
  return attention_io(s) + kF * (4 * B * N * D + (s.causal ? 0 : B * H * (d * d + d)));
}

// Mamba (n = d_state, K = d_conv, E = expand, R = ceil(D / 16), chunk L). Weights: in_proj (x and
// z) and out_proj, and per branch (two exist, both used bidirectionally) the conv (weight, bias),
// x_proj (dt, B, C), dt_proj, dt_bias, A_log and D. Saved per scan branch: the conv's input and
// output, u = SiLU(conv), the low-rank dt, delta, Bm, Cm, one state [D_in, n] per L steps and A =
// -exp(A_log) (exp's output and the negation's); shared: z, SiLU(z), y, the gated y.
double mamba_bytes(const BenchShape& s, const Json& p) {
  const double B = s.batch, N = s.length, D = s.d_model;
  const double n = double(p.at("d_state").get<int64_t>()), K = double(p.at("d_conv").get<int64_t>());
  const double Di = D * double(p.at("expand").get<int64_t>()), R = std::ceil(D / 16);
  const double L = double(p.at("chunk").get<int64_t>());
  const double branches = s.causal ? 1 : 2;
  const double weights = 3 * D * Di + 2 * (Di * K + Di + Di * (R + 2 * n) + R * Di + Di + Di * n + Di);
  const double per_branch = B * N * (Di + Di + Di + R + Di + 2 * n) + std::ceil(N / L) * B * Di * n + 2 * Di * n;
  return kF * (B * N * D + B * N * D + weights + branches * per_branch + 4 * B * N * Di);
}

void expect_close(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, 1e-9 * want) << what << ": the cell charges " << got << " bytes, the count says " << want;
}

}  // namespace

TEST(BytesModel, SoftmaxChargesInputsOutputsWeightsAndTheSavedProbabilities) {
  const Json p = defaults("softmax");
  for (bool causal : {false, true}) {
    BenchShape s;
    s.batch = 2, s.length = 96, s.d_model = 32, s.heads = 4, s.causal = causal;
    expect_close(cell_bytes("softmax", p, s, Direction::fwd), softmax_bytes(s), "softmax fwd");
    expect_close(cell_bytes("softmax", p, s, Direction::fwd_bwd), 3 * softmax_bytes(s), "softmax fwd_bwd");
  }
}

TEST(BytesModel, LinearEluChargesNoQuadraticTerm) {
  const Json p = defaults("linear_elu");
  for (bool causal : {false, true}) {
    BenchShape s;
    s.batch = 2, s.length = 96, s.d_model = 32, s.heads = 4, s.causal = causal;
    expect_close(cell_bytes("linear_elu", p, s, Direction::fwd), linear_elu_bytes(s), "linear_elu fwd");
    expect_close(cell_bytes("linear_elu", p, s, Direction::fwd_bwd), 3 * linear_elu_bytes(s), "linear_elu fwd_bwd");
  }
}

// Bidirectional only: the causal form leaves the reverse branch's weights unread, which the bench's
// default (every parameter read) still charges.
TEST(BytesModel, MambaChargesItsBranchesAndScanCheckpoints) {
  for (int64_t chunk : {16, 64}) {
    const Json p = defaults("mamba", Json{{"chunk", chunk}});
    BenchShape s;
    s.batch = 1, s.length = 100, s.d_model = 32, s.heads = 4, s.causal = false;
    expect_close(cell_bytes("mamba", p, s, Direction::fwd), mamba_bytes(s, p), "mamba fwd");
    expect_close(cell_bytes("mamba", p, s, Direction::fwd_bwd), 3 * mamba_bytes(s, p), "mamba fwd_bwd");
  }
}
