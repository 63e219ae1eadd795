#pragma once
// The whole model under finite differences: every parameter of a Model built from a run
// configuration, through the loss on the first two training examples of its task.
#include <vector>

#include "attnbench/check.hpp"
#include "model/model.hpp"
#include "train/train.hpp"

namespace ab::test {

inline GradCheckReport model_grad_check(const RunConfig& c) {
  auto task = TaskRegistry::instance().get(c.task).make(c.task_params, 1);
  Model model(c.model_params, VariantRegistry::instance().get(c.variant), c.variant_params, *task, 1);
  const Batch batch = make_batch(*task, Split::train, {0, 1});
  std::vector<Var> leaves;
  for (auto& [n, v] : model.parameters()) leaves.push_back(v);
  GradCheckOptions opt;
  opt.max_elements = 6;
  return grad_check([&] { return cross_entropy(model.forward(batch, false, 0), batch.labels); }, leaves, opt);
}

}  // namespace ab::test
