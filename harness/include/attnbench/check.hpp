#pragma once
// Correctness checks shared by `attnbench check`, the test suite and plugin authors:
// central finite-difference gradient checks, and the registry-wide conformance suite (DESIGN §9).
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attnbench/variant.hpp"

namespace ab {

struct GradCheckOptions {
  float step = 1e-2f;        // central-difference step
  float atol = 1e-3f;        // |analytic - numeric| <= atol + rtol * |numeric|
  float rtol = 1e-2f;
  int max_elements = 24;     // checked elements per input (sampled deterministically)
  uint64_t seed = 7;
};

struct GradCheckReport {
  bool passed = true;
  double max_abs_error = 0;  // worst |analytic - numeric|
  double max_rel_error = 0;  // worst |analytic - numeric| / max(|numeric|, 1e-3)
  int checked = 0;
  std::string detail;        // the first failure, if any
};

// f computes any tensor from the leaves (variables with requires_grad, e.g. inputs and a module's
// parameters). The check differentiates L = sum(w * f()) for a fixed random w, summing in double,
// and perturbs each leaf's values in place (restoring them) for the finite differences.
GradCheckReport grad_check(const std::function<Var()>& f, const std::vector<Var>& leaves,
                           const GradCheckOptions& opt = {});

struct CheckResult {
  std::string check;
  bool passed = false;
  std::string detail;
};

// Bytes a training-mode forward of the mixer keeps alive for backward, excluding x and y
// (measured with the tracking allocator), and the peak of a forward+backward above x and the
// upstream gradient (Cost::peak_bytes declares it).
struct MemoryMeasure {
  int64_t saved_bytes = 0;
  int64_t peak_bytes = 0;
};
// Feeds x [B, N, D] through mixer.decode_step one position at a time from a fresh begin_decode
// (no tape) and returns the outputs [B, N, D]; the state is left in *state when given.
Tensor decode_sequence(Mixer& mixer, const Tensor& x, const MixerContext& ctx,
                       std::unique_ptr<DecodeState>* state = nullptr);

MemoryMeasure measure_mixer_memory(const VariantSpec& spec, const Json& resolved_params, int64_t batch,
                                   int64_t length, int64_t d_model, int64_t heads, bool causal, uint64_t seed = 1);

// Runs every applicable conformance check on one variant at tiny sizes.
// params: the variant's user parameters (resolved here; empty object = defaults).
std::vector<CheckResult> check_variant(const VariantSpec& spec, const Json& params = Json::object(), uint64_t seed = 1);

}  // namespace ab
