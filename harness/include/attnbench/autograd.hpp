#pragma once
// Reverse-mode automatic differentiation on a tape. An op computes its value eagerly and, when
// gradients are wanted, records a backward closure. The tape holds gradient bookkeeping only,
// never the values of intermediate results: a value stays alive while a Var refers to it or a
// closure captured it. So a closure must capture exactly what its backward reads (the tensors)
// and the GradSinks of its inputs (where gradients go), not the input Vars themselves.
// Backward runs in reverse topological order and frees each interior node's gradient and
// closure as soon as it has been used.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attnbench/tensor.hpp"

namespace ab {

struct Node;

// Where the gradient of one variable accumulates. Cheap to copy; holds no value.
class GradSink {
 public:
  GradSink() = default;
  explicit GradSink(std::shared_ptr<Node> n) : node_(std::move(n)) {}
  bool wanted() const;                      // false: the variable needs no gradient
  void accumulate(const Tensor& g) const;   // no-op when not wanted

 private:
  std::shared_ptr<Node> node_;
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor value, bool requires_grad = false);

  bool defined() const { return value_.defined(); }
  const Tensor& value() const { return value_; }
  // For optimisers and finite differences: write through data(); copies share the storage.
  Tensor& value_mut() { return value_; }
  const Tensor& grad() const;  // undefined until a backward reached this variable
  bool requires_grad() const;
  const Shape& shape() const { return value_.shape(); }
  int64_t dim(int i) const { return value_.dim(i); }
  int rank() const { return value_.rank(); }

  GradSink sink() const { return GradSink(node_); }
  void accumulate_grad(const Tensor& g) const { sink().accumulate(g); }

  // Seeds d(this)/d(this) = 1 (a scalar) or `seed` and runs the tape backward.
  void backward();
  void backward(const Tensor& seed);
  void zero_grad();

 private:
  Tensor value_;
  std::shared_ptr<Node> node_;  // null for constants
  friend Var make_op_result(Tensor, const std::vector<Var>&, std::function<void(const Tensor&)>);
};

// Records an op: `value` was computed from `inputs`; `backward` receives dL/d(value) and sends
// each input's gradient to its GradSink. Nothing is recorded under NoGrad or when no input
// requires a gradient.
Var make_op_result(Tensor value, const std::vector<Var>& inputs, std::function<void(const Tensor&)> backward);

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
