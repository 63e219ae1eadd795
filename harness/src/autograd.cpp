#include "attnbench/autograd.hpp"

#include <stdexcept>
#include <unordered_set>

#include "kernels.hpp"

namespace ab {

struct Node {
  Tensor value;
  Tensor grad;
  bool grad_aliased = false;  // grad shares storage with a tensor handed to other nodes too
  bool requires_grad = false;
  std::vector<Var> inputs;
  std::function<void(const Tensor&)> backward;
};

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
NoGrad::NoGrad() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGrad::~NoGrad() { g_grad_enabled = previous_; }

Var::Var(Tensor value, bool requires_grad) : node_(std::make_shared<Node>()) {
  node_->value = std::move(value);
  node_->requires_grad = requires_grad;
}

const Tensor& Var::value() const { return node_->value; }
Tensor& Var::value_mut() { return node_->value; }
const Tensor& Var::grad() const { return node_->grad; }
bool Var::requires_grad() const { return node_ && node_->requires_grad; }
void Var::zero_grad() { node_->grad = Tensor(); }

void Var::accumulate_grad(const Tensor& g) const {
  if (!node_->requires_grad) return;
  if (g.numel() != node_->value.numel())
    throw std::logic_error("gradient shape " + shape_str(g.shape()) + " does not match value " +
                           shape_str(node_->value.shape()));
  if (!node_->grad.defined()) {
    // Keep the tensor without copying; the same tensor may reach other inputs (add passes its
    // gradient to both operands), so a later accumulation must not write into it.
    node_->grad = g.reshape(node_->value.shape());
    node_->grad_aliased = true;
  } else if (node_->grad_aliased) {
    Tensor sum = node_->grad.clone();
    kernels::add_inplace(sum.data(), g.data(), g.numel());
    node_->grad = sum;
    node_->grad_aliased = false;
  } else {
    kernels::add_inplace(node_->grad.data(), g.data(), g.numel());
  }
}

Var make_op_result(Tensor value, std::vector<Var> inputs, std::function<void(const Tensor&)> backward) {
  Var out(std::move(value), false);
  if (!g_grad_enabled) return out;
  bool any = false;
  for (const auto& v : inputs) any = any || v.requires_grad();
  if (!any) return out;
  out.node_->requires_grad = true;
  out.node_->inputs = std::move(inputs);
  out.node_->backward = std::move(backward);
  return out;
}

void Var::backward() {
  if (value().numel() != 1) throw std::logic_error("backward() without a seed needs a scalar, got " + shape_str(shape()));
  backward(Tensor::full(value().shape(), 1.0f));
}

void Var::backward(const Tensor& seed) {
  // Topological order by iterative depth-first search from this node. `order` owns the nodes:
  // clearing a node's inputs below must not free nodes that are still to be visited.
  std::vector<std::shared_ptr<Node>> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{node_, 0}};
  seen.insert(node_.get());
  while (!stack.empty()) {
    std::shared_ptr<Node> n = stack.back().first;
    const size_t i = stack.back().second;
    if (i < n->inputs.size()) {
      ++stack.back().second;  // before push_back, which may reallocate the stack
      const std::shared_ptr<Node>& child = n->inputs[i].node_;
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
