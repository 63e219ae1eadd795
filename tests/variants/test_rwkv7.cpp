// rwkv7 (RWKV-7 time mixing on ab::dplr_delta_rule): the conformance suite with other chunk / LoRA
// widths; gradients and decoding with every parameter moved off its
// initialisation (the reference zero-initialises the LoRA down-projections, which leaves the decay
// and learning-rate LoRAs without a gradient path at init).
#include <gtest/gtest.h>

#include "attnbench/check.hpp"
#include "support/mixer_build.hpp"
#include "support/random_tensors.hpp"
#include "support/variant_checks.hpp"

using namespace ab;

namespace {

TEST(Rwkv7, ConformanceSuitePasses) {
  // (the defaults run in the registry-wide suite, tests/mixer/test_variants.cpp)
  test::expect_checks_pass({
      {"rwkv7", Json{{"chunk", 5}, {"decay_lora", 8}, {"iclr_lora", 4}, {"gate_lora", 6}, {"init_layers", 4}}},
  });
}

// Every parameter perturbed, then: central-difference gradients of input and parameters, and
// token-by-token decoding = the forward.
TEST(Rwkv7, GradientsAndDecodeAwayFromInit) {
  const int64_t B = 2, N = 11, D = 16, H = 2;
  auto m = test::build_mixer("rwkv7", Json{{"chunk", 4}, {"decay_lora", 4}, {"iclr_lora", 4}, {"gate_lora", 4}}, D, H,
                             N, /*layer=*/1);
  uint64_t key = 100;
  for (auto& [name, p] : m->parameters()) {
    const Tensor noise = test::uniform_tensor(p.shape(), 11, key++, -0.3f, 0.3f);
    for (int64_t i = 0; i < p.value().numel(); ++i) p.value_mut()[i] += noise[i];
  }
  const Tensor x = test::uniform_tensor({B, N, D}, 11, 1);
  MixerContext ctx;
  ctx.causal = true;
  std::vector<Var> leaves{Var(x.clone(), true)};
  for (auto& [n, v] : m->parameters()) leaves.push_back(v);
  GradCheckOptions go;
  go.max_elements = 12;
  const GradCheckReport rep = grad_check([&] { return m->forward(leaves[0], ctx); }, leaves, go);
  EXPECT_TRUE(rep.passed) << rep.detail;
  EXPECT_GT(rep.checked, 150);

  NoGrad ng;
  const Tensor full = m->forward(Var(x), ctx).value();
  const Tensor dec = decode_sequence(*m, x, ctx);
  double worst = 0;
  for (int64_t i = 0; i < full.numel(); ++i) worst = std::max(worst, double(std::fabs(full[i] - dec[i])));
  EXPECT_LT(worst, 1e-5);
}

}  // namespace
