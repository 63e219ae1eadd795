#pragma once
// Registered variants built by name for a test, their parameters looked up by name, and key padding
// masks: the set-up the variant tests share.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "attnbench/ops.hpp"
#include "attnbench/variant.hpp"

namespace ab::test {

// The variant `name` with the `given` parameters over its defaults (unknown names and bad values
// throw, as on the command line), for model width D, H heads and sequences up to max_length.
inline std::unique_ptr<Mixer> build_mixer(const std::string& name, const Json& given, int64_t D, int64_t H,
                                          int64_t max_length, int layer = 0, uint64_t seed = 3) {
  const VariantSpec& spec = VariantRegistry::instance().get(name);
  MixerConfig cfg{D, H, max_length, layer, seed, resolve_params(spec.params, given, name)};
  return spec.make(cfg);
}

// The mixer's parameter `name` (a test failure and an undefined Var when it has none).
inline Var mixer_param(const Mixer& m, const std::string& name) {
  for (const auto& [n, v] : m.parameters())
    if (n == name) return v;
  ADD_FAILURE() << "no parameter " << name;
  return Var();
}

// [B, 1, 1, N] additive key mask: sequence b is real for its first real[b] positions, padding after.
inline Tensor padding_mask(int64_t B, int64_t N, const std::vector<int64_t>& real) {
  std::vector<int32_t> tokens(static_cast<size_t>(B * N), 1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = real[b]; n < N; ++n) tokens[b * N + n] = 0;
  return key_padding_mask(tokens, B, N, 0);
}

}  // namespace ab::test
