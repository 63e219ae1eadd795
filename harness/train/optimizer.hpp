#pragma once
// AdamW with the learning-rate schedules of train_param_specs(), and the training step built on
// them: the step `train` runs is the step the bench's train_step cell times.
#include <string>
#include <utility>
#include <vector>

#include "attnbench/autograd.hpp"
#include "attnbench/params.hpp"
#include "model/model.hpp"

namespace ab {

// The learning rate at a 1-based step: warm-up, then the schedule (cosine, linear, rsqrt, constant).
double lr_at(const Json& train_params, int64_t step);

// Decoupled weight decay on matrices and embeddings (rank >= 2) only, less the parameters named in
// `no_decay` (Module::no_decay_names()); train_params: resolved train_param_specs() (beta1, beta2,
// eps, weight_decay).
struct AdamW {
  std::vector<std::pair<std::string, Var>> params;
  std::vector<bool> decay;  // per parameter
  std::vector<Tensor> m, v;
  double beta1, beta2, eps, wd;
  int64_t t = 0;

  AdamW(std::vector<std::pair<std::string, Var>> p, const Json& train_params,
        const std::vector<std::string>& no_decay = {});
  // Clips the global gradient norm to `clip` (0 = no clipping), updates, zeroes the gradients.
  // Returns the norm before clipping; a non-finite norm updates nothing.
  double step(double lr, double clip);
};

struct StepResult {
  double loss, grad_norm, lr;
};
// Forward in training mode, cross-entropy, backward, AdamW at lr_at(step) with the clip norm.
StepResult train_step(Model& model, AdamW& opt, const Batch& batch, const Json& train_params, int64_t step);

}  // namespace ab
