// fft_toeplitz_attention (kernel_rpe_fft's numerator): forward against a naive double sum written
// here from the definition; forward and the gradients of all five inputs against the unfused
// composition it replaces (the outer products materialised, fft_conv over their channels, the
// read-out by fq as a matmul), one- and two-sided, with kernels longer and shorter than N; and
// finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "attnbench/check.hpp"
#include "attnbench/kernels/fft_conv.hpp"
#include "attnbench/ops.hpp"
#include "support/random_tensors.hpp"
#include "support/double_reference.hpp"

using namespace ab;

namespace {

struct Inputs {
  Var fq, fk, x, kf, kb;
};

Inputs make_inputs(int64_t B, int64_t H, int64_t N, int64_t m, int64_t e, int64_t L, bool two_sided) {
  Inputs in;
  in.fq = Var(test::uniform_tensor({B, H, N, m}, 13, 1, 0.f, 1.f), true);
  in.fk = Var(test::uniform_tensor({B, H, N, m}, 13, 2, 0.f, 1.f), true);
  in.x = Var(test::uniform_tensor({B, H, N, e}, 13, 3), true);
  in.kf = Var(test::uniform_tensor({H, L}, 13, 4, 0.f, 1.f), true);
  if (two_sided) in.kb = Var(test::uniform_tensor({H, L}, 13, 5, 0.f, 1.f), true);
  return in;
}

// r[n] = sum_j C[n - j] (fq_n . fk_j) x_j, C[l] = kf[l] (l >= 0) + kb[-l] (l <= 0), in double.
Tensor naive(const Inputs& in) {
  const Tensor &q = in.fq.value(), &k = in.fk.value(), &x = in.x.value(), &kf = in.kf.value();
  const int64_t B = q.dim(0), H = q.dim(1), N = q.dim(2), m = q.dim(3), e = x.dim(3), L = kf.dim(1);
  Tensor r = Tensor::zeros(x.shape());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < N; ++j) {
          const int64_t l = n - j;
          double c = 0;
          if (l >= 0 && l < L) c += kf[h * L + l];
          if (in.kb.defined() && l <= 0 && -l < L) c += in.kb.value()[h * L - l];
          if (c == 0) continue;
          const int64_t bn = (b * H + h) * N;
          double qk = 0;
          for (int64_t a = 0; a < m; ++a) qk += double(q[(bn + n) * m + a]) * k[(bn + j) * m + a];
          for (int64_t i = 0; i < e; ++i) r[(bn + n) * e + i] += static_cast<float>(c * qk * x[(bn + j) * e + i]);
        }
  return r;
}

// The unfused composition kernel_rpe_fft used before: U [B, N, H m e] -> fft_conv -> read out.
Var unfused(const Inputs& in) {
  const int64_t B = in.fq.dim(0), H = in.fq.dim(1), N = in.fq.dim(2), m = in.fq.dim(3), e = in.x.dim(3);
  const Var fk_t = reshape(permute(in.fk, {0, 2, 1, 3}), {B, N, H, m, 1});
  const Var x_t = reshape(permute(in.x, {0, 2, 1, 3}), {B, N, H, 1, e});
  const Var u = reshape(mul(fk_t, x_t), {B, N, H * m * e});
  const Var s = reshape(fft_conv(u, in.kf, in.kb), {B, N, H, m, e});
  const Var fq_t = reshape(permute(in.fq, {0, 2, 1, 3}), {B, N, H, 1, m});
  return permute(reshape(matmul(fq_t, s), {B, N, H, e}), {0, 2, 1, 3});
}

using test::max_rel_diff;

std::vector<Tensor> grads_of(Inputs& in, const Var& r, const Tensor& w) {
  std::vector<Var*> leaves{&in.fq, &in.fk, &in.x, &in.kf};
  if (in.kb.defined()) leaves.push_back(&in.kb);
  for (Var* v : leaves) v->zero_grad();
  Var(r).backward(w);
  std::vector<Tensor> g;
  for (Var* v : leaves) g.push_back(v->grad().clone());
  return g;
}

// m = 20 features: one full block of 16 and a partial one. L = N + 5 (taps never reached) and
// L = 7 (shorter than N).
TEST(FftToeplitzAttention, MatchesNaiveSumAndUnfusedCompositionWithGradients) {
  const int64_t B = 2, H = 3, N = 29, m = 20, e = 5;
  for (int64_t L : {N + 5, int64_t(7)})
    for (bool two_sided : {false, true}) {
      Inputs in = make_inputs(B, H, N, m, e, L, two_sided);
      const std::string what = "L " + std::to_string(L) + (two_sided ? " two-sided" : " causal");
      const Var r = fft_toeplitz_attention(in.fq, in.fk, in.x, in.kf, in.kb);
      EXPECT_LT(max_rel_diff(r.value(), naive(in)), 1e-5) << what;
      const Tensor w = test::uniform_tensor(r.value().shape(), 13, 9);
      const std::vector<Tensor> a = grads_of(in, r, w);
      const Var ref = unfused(in);
      EXPECT_LT(max_rel_diff(r.value(), ref.value()), 1e-5) << what;
      const std::vector<Tensor> b = grads_of(in, ref, w);
      const char* names[] = {"dfq", "dfk", "dx", "dk_fwd", "dk_bwd"};
      for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(max_rel_diff(a[i], b[i]), 1e-4) << names[i] << " " << what;
    }
}

TEST(FftToeplitzAttention, GradientsMatchFiniteDifferences) {
  Inputs in = make_inputs(1, 2, 6, 3, 2, 6, true);
  GradCheckOptions gopt;
  gopt.max_elements = 30;
  const GradCheckReport rep = grad_check([&] { return fft_toeplitz_attention(in.fq, in.fk, in.x, in.kf, in.kb); },
                                         {in.fq, in.fk, in.x, in.kf, in.kb}, gopt);
  EXPECT_TRUE(rep.passed) << rep.detail;
}

TEST(FftToeplitzAttention, RejectsMismatchedShapes) {
  Inputs in = make_inputs(1, 2, 6, 3, 2, 6, false);
  EXPECT_THROW(fft_toeplitz_attention(in.fq, in.x, in.x, in.kf), std::invalid_argument);
  EXPECT_THROW(fft_toeplitz_attention(in.fq, in.fk, in.x, Var(Tensor::zeros({3, 6}))), std::invalid_argument);
}

}  // namespace
