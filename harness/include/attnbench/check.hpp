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
  // Where `step` disagrees, the derivative is estimated again at these steps: agreement at any
  // of them passes. Otherwise one-sided differences at the smallest step that differ mark a kink
  // inside the step (ReLU, top-k, sorting, clipping): with the analytic value between them, the
  // element is reported, not failed, unless more than max_kink_fraction of the checked elements
  // are such points (then nothing could be verified).
  std::vector<float> retry_steps = {3e-3f, 1e-3f};
  double max_kink_fraction = 0.25;
};

struct GradCheckReport {
  bool passed = true;
  double max_abs_error = 0;  // worst |analytic - numeric| over the elements that count
  double max_rel_error = 0;  // worst |analytic - numeric| / max(|numeric|, 1e-3)
  int checked = 0;
  int kinks = 0;             // elements near a non-smooth point, not counted
  std::string detail;        // the first failure, if any: element, both values at each step, cause
  std::string kink_detail;   // the first element near a kink, if any
};

// f computes any tensor from the leaves (variables with requires_grad, e.g. inputs and a module's
// parameters). The check differentiates L = sum(w * f()) for a fixed random w, summing in double,
// and perturbs each leaf's values in place (restoring them) for the finite differences. An element
// fails when no step's central difference agrees with the analytic value and the function is
// smooth there (or the analytic value lies outside its one-sided differences).
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
// params: the variant's user parameters (resolved here; empty object = defaults, or the spec's
// check_params); seed: the inputs' and parameters' draw.
std::vector<CheckResult> check_variant(const VariantSpec& spec, const Json& params = Json::object(), uint64_t seed = 1);

}  // namespace ab
