#include "attnbench/autograd.hpp"

#include <stdexcept>
#include <unordered_set>

#include "core/backend/onednn.hpp"

namespace ab {

struct Node {
  Shape shape;
  Tensor grad;
  bool grad_aliased = false;  // grad shares storage with a tensor handed to other nodes too
  bool requires_grad = false;
  std::vector<std::shared_ptr<Node>> inputs;  // those that require a gradient
  std::function<void(const Tensor&)> backward;
};

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
NoGrad::NoGrad() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGrad::~NoGrad() { g_grad_enabled = previous_; }

bool GradSink::wanted() const { return node_ && node_->requires_grad; }

void GradSink::accumulate(const Tensor& g) const {
  if (!wanted()) return;
  Node& n = *node_;
  if (g.numel() != numel(n.shape))
    throw std::logic_error("gradient shape " + shape_str(g.shape()) + " does not match value " + shape_str(n.shape));
  if (!n.grad.defined()) {
    // Keep the tensor without copying; the same tensor may reach other inputs (add passes its
    // gradient to both operands), so a later accumulation must not write into it.
    n.grad = g.reshape(n.shape);
    n.grad_aliased = true;
  } else if (n.grad_aliased) {
    Tensor sum = n.grad.clone();
    kernels::add_inplace(sum.data(), g.data(), g.numel());
    n.grad = sum;
    n.grad_aliased = false;
  } else {
    kernels::add_inplace(n.grad.data(), g.data(), g.numel());
  }
}

Var::Var(Tensor value, bool requires_grad) : value_(std::move(value)) {
  if (requires_grad) {
    node_ = std::make_shared<Node>();
    node_->shape = value_.shape();
    node_->requires_grad = true;
  }
}

const Tensor& Var::grad() const {
  static const Tensor none;
  return node_ ? node_->grad : none;
}
bool Var::requires_grad() const { return node_ && node_->requires_grad; }
void Var::zero_grad() {
  if (node_) node_->grad = Tensor();
}

Var make_op_result(Tensor value, const std::vector<Var>& inputs, std::function<void(const Tensor&)> backward) {
  Var out(std::move(value), false);
  if (!g_grad_enabled) return out;
  std::vector<std::shared_ptr<Node>> needed;
  for (const auto& v : inputs)
    if (v.requires_grad()) needed.push_back(v.node_);
  if (needed.empty()) return out;
  out.node_ = std::make_shared<Node>();
  out.node_->shape = out.value_.shape();
  out.node_->requires_grad = true;
  out.node_->inputs = std::move(needed);
  out.node_->backward = std::move(backward);
  return out;
}

void Var::backward() {
  if (value_.numel() != 1) throw std::logic_error("backward() without a seed needs a scalar, got " + shape_str(shape()));
  backward(Tensor::full(value_.shape(), 1.0f));
}

void Var::backward(const Tensor& seed) {
  if (!requires_grad()) throw std::logic_error("backward() on a value that does not depend on any parameter");
  // Topological order by iterative depth-first search. `order` owns the nodes: clearing a node's
  // inputs below must not free nodes that are still to be visited.
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> seen{node_.get()};
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{node_, 0}};
  while (!stack.empty()) {
    std::shared_ptr<Node> n = stack.back().first;
    const size_t i = stack.back().second;
    if (i < n->inputs.size()) {
      ++stack.back().second;  // before push_back, which may reallocate the stack
      const std::shared_ptr<Node>& child = n->inputs[i];
      if (child->backward && seen.insert(child.get()).second) stack.push_back({child, 0});
    } else {
      order.push_back(n);
      stack.pop_back();
    }
  }
  accumulate_grad(seed);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = it->get();
    if (!n->backward) continue;
    if (n->grad.defined()) n->backward(n->grad);
    // Interior nodes are done: free their gradient and everything the closure saved.
    n->grad = Tensor();
    n->backward = nullptr;
    n->inputs.clear();
  }
}

}  // namespace ab
