// GSA's key memory (gated_slot_memory): the scan against a naive double-precision sum written here
// from the definition, its gradients against an independent construction (the same recurrence as
// m heads of ab::gated_linear_attention with value width 1, each slot a head: what gsa ran before)
// and against finite differences, causal and anti-causal, with mild and with extreme decays; the
// decode state against the scan.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/gated_linear_attention.hpp"
#include "attnbench/kernels/gated_slot_memory.hpp"
#include "attnbench/ops.hpp"
#include "support/random_tensors.hpp"
#include "support/double_reference.hpp"

using namespace ab;

namespace {

struct Inputs {
  Var q, k, s, g;  // [B, H, N, K] x2, [B, H, N, M] x2
};

// log alpha in [lo, -0.01)
Inputs make_inputs(int64_t B, int64_t H, int64_t N, int64_t K, int64_t M, float lo = -0.7f) {
  Inputs in;
  in.q = Var(test::uniform_tensor({B, H, N, K}, 12, 1), true);
  in.k = Var(test::uniform_tensor({B, H, N, K}, 12, 2), true);
  in.s = Var(test::uniform_tensor({B, H, N, M}, 12, 3, 0.f, 1.f), true);
  in.g = Var(test::uniform_tensor({B, H, N, M}, 12, 4, lo, -0.01f), true);
  return in;
}

// o_t[j] = sum_{u <= t} (q_t . k_u) s_u[j] exp(G_t[j] - G_u[j]) (u >= t when reversed), in double.
Tensor naive(const Inputs& in, bool reverse) {
  const Tensor &q = in.q.value(), &k = in.k.value(), &s = in.s.value(), &g = in.g.value();
  const int64_t BH = q.dim(0) * q.dim(1), N = q.dim(2), K = q.dim(3), M = s.dim(3);
  Tensor o = Tensor::zeros(s.shape());
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t j = 0; j < M; ++j) {
        double acc = 0;
        for (int64_t u = 0; u < N; ++u) {
          if (reverse ? u < t : u > t) continue;
          double qk = 0, G = 0;  // G = log decay from u (exclusive) to t (inclusive)
          for (int64_t i = 0; i < K; ++i) qk += double(q[(bh * N + t) * K + i]) * k[(bh * N + u) * K + i];
          for (int64_t r = std::min(t, u) + 1; r <= std::max(t, u); ++r) G += g[(bh * N + (reverse ? r - 1 : r)) * M + j];
          acc += qk * s[(bh * N + u) * M + j] * std::exp(G);
        }
        o[(bh * N + t) * M + j] = static_cast<float>(acc);
      }
  return o;
}

// The same recurrence with the slots as heads of gated_linear_attention (q, k shared by the m
// heads, value s[:, j] of width 1, scalar decay g[:, j]), recurrent form.
Var slots_as_heads(const Inputs& in, bool reverse) {
  const int64_t B = in.q.dim(0), H = in.q.dim(1), N = in.q.dim(2), K = in.q.dim(3), M = in.s.dim(3);
  auto slot_major = [&](const Var& t) { return permute(t, {0, 1, 3, 2}); };  // [B, H, N, M] -> [B, H, M, N]
  GatedLinearAttentionOptions opt;
  opt.form = GlaForm::recurrent;
  opt.reverse = reverse;
  const Var o = gated_linear_attention(reshape(in.q, {B * H, 1, N, K}), reshape(in.k, {B * H, 1, N, K}),
                                       reshape(slot_major(in.s), {B * H, M, N, 1}),
                                       reshape(slot_major(in.g), {B * H, M, N}), opt);
  return slot_major(reshape(o, {B, H, M, N}));
}

using test::max_rel_diff;

std::vector<Tensor> grads_of(Inputs& in, const Var& o, const Tensor& w) {
  for (Var* x : {&in.q, &in.k, &in.s, &in.g}) x->zero_grad();
  Var(o).backward(w);
  return {in.q.grad().clone(), in.k.grad().clone(), in.s.grad().clone(), in.g.grad().clone()};
}

// Forward against the naive sum, gradients against the slots-as-heads construction (N = 37,
// 2 x 3 heads, dk 5, 6 slots); mild decays and decays down to -30 per step (exp(-30) ~ 1e-13:
// the memory forgets within a step).
TEST(GatedSlotMemory, MatchesNaiveSumAndSlotsAsHeadsWithGradients) {
  for (float lo : {-0.7f, -30.f})
    for (bool reverse : {false, true}) {
      Inputs in = make_inputs(2, 3, 37, 5, 6, lo);
      const Tensor w = test::uniform_tensor({2, 3, 37, 6}, 12, 9);  // loss = sum(w * o)
      const Var o = gated_slot_memory(in.q, in.k, in.s, in.g, reverse);
      const std::string what = std::string(reverse ? "reverse" : "causal") + " lo " + std::to_string(lo);
      EXPECT_LT(max_rel_diff(o.value(), naive(in, reverse)), 2e-6) << what;
      const std::vector<Tensor> a = grads_of(in, o, w);
      const Var ref = slots_as_heads(in, reverse);
      EXPECT_LT(max_rel_diff(o.value(), ref.value()), 2e-6) << what;
      const std::vector<Tensor> b = grads_of(in, ref, w);
      const char* names[] = {"dq", "dk", "ds", "dlog_alpha"};
      for (size_t i = 0; i < 4; ++i) EXPECT_LT(max_rel_diff(a[i], b[i]), 2e-5) << names[i] << " " << what;
    }
}

TEST(GatedSlotMemory, GradientsMatchFiniteDifferences) {
  for (bool reverse : {false, true}) {
    Inputs in = make_inputs(1, 2, 9, 3, 4);
    GradCheckOptions gopt;
    gopt.max_elements = 40;
    const GradCheckReport rep =
        grad_check([&] { return gated_slot_memory(in.q, in.k, in.s, in.g, reverse); }, {in.q, in.k, in.s, in.g}, gopt);
    EXPECT_TRUE(rep.passed) << (reverse ? "reverse: " : "causal: ") << rep.detail;
  }
}

TEST(GatedSlotMemory, MixIsCausalPlusAntiCausal) {
  Inputs in = make_inputs(1, 2, 13, 4, 3);
  NoGrad ng;
  const Tensor both = gated_slot_memory_mix(in.q, in.k, in.s, in.g, false).value();
  const Tensor sum =
      add(gated_slot_memory(in.q, in.k, in.s, in.g, false), gated_slot_memory(in.q, in.k, in.s, in.g, true)).value();
  EXPECT_LT(max_rel_diff(both, sum), 1e-7);
  EXPECT_LT(max_rel_diff(gated_slot_memory_mix(in.q, in.k, in.s, in.g, true).value(),
                         gated_slot_memory(in.q, in.k, in.s, in.g, false).value()),
            1e-7);
}

TEST(GatedSlotMemory, DecodeStepsEqualTheScan) {
  const int64_t B = 2, H = 2, N = 11, K = 4, M = 5;
  Inputs in = make_inputs(B, H, N, K, M);
  NoGrad ng;
  const Tensor full = gated_slot_memory(in.q, in.k, in.s, in.g).value();
  GatedSlotMemoryState st(B, H, M, K);
  EXPECT_EQ(st.bytes(), 4 * B * H * M * K);
  for (int64_t t = 0; t < N; ++t) {
    const Tensor o = st.step(test::position(in.q.value(), t), test::position(in.k.value(), t),
                             test::position(in.s.value(), t), test::position(in.g.value(), t));
    EXPECT_LT(max_rel_diff(o, test::position(full, t)), 1e-5) << "t " << t;
  }
}

TEST(GatedSlotMemory, RejectsMismatchedShapes) {
  Inputs in = make_inputs(1, 2, 5, 3, 4);
  EXPECT_THROW(gated_slot_memory(in.q, in.s, in.s, in.g), std::invalid_argument);
  EXPECT_THROW(gated_slot_memory(in.q, in.k, in.s, in.q), std::invalid_argument);
}

}  // namespace
