#pragma once
// Reverse-mode automatic differentiation on a tape. An op computes its value eagerly and, when
// gradients are wanted, records a backward closure that captures only what its backward needs.
// Backward visits nodes in reverse creation order and frees each interior node's gradient and
// closure as soon as it has been used, so saved activations are released as early as possible.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attnbench/tensor.hpp"

namespace ab {

struct Node;

class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false);

  bool defined() const { return node_ != nullptr; }
  const Tensor& value() const;
  Tensor& value_mut();  // for optimisers and finite differences
  const Tensor& grad() const;
  bool requires_grad() const;
  const Shape& shape() const { return value().shape(); }
  int64_t dim(int i) const { return value().dim(i); }
  int rank() const { return value().rank(); }

  // Seeds d(this)/d(this) = 1 (a scalar) or `seed` and runs the tape backward.
  void backward();
  void backward(const Tensor& seed);
  void zero_grad();
  // Adds g into this variable's gradient (used by backward closures).
  void accumulate_grad(const Tensor& g) const;

  Node* node() const { return node_.get(); }

 private:
  std::shared_ptr<Node> node_;
  friend struct Node;
  friend Var make_op_result(Tensor, std::vector<Var>, std::function<void(const Tensor&)>);
};

// Records an op: `value` was computed from `inputs`; `backward` receives dL/d(value) and calls
// accumulate_grad on the inputs that require it. Nothing is recorded under NoGrad or when no
// input requires a gradient.
Var make_op_result(Tensor value, std::vector<Var> inputs, std::function<void(const Tensor&)> backward);

bool grad_enabled();

// Disables recording in its scope (evaluation, forward-only benchmarks).
class NoGrad {
 public:
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

}  // namespace ab
