#include "attnbench/module.hpp"

#include <cmath>

namespace ab {

std::vector<std::pair<std::string, Var>> Module::parameters() const {
  auto out = params_;
  for (const auto& [name, child] : children_)
    for (auto& [pname, v] : child->parameters()) out.emplace_back(name + "." + pname, v);
  return out;
}

Var& Module::add_param(std::string name, Tensor init, Decay decay) {
  if (decay == Decay::none) no_decay_.push_back(name);
  params_.emplace_back(std::move(name), Var(std::move(init), true));
  return params_.back().second;
}

std::vector<std::string> Module::no_decay_names() const {
  auto out = no_decay_;
  for (const auto& [name, child] : children_)
    for (auto& n : child->no_decay_names()) out.push_back(name + "." + n);
  return out;
}

void Module::add_child(std::string name, Module* child) { children_.emplace_back(std::move(name), child); }

Tensor init_normal(Shape shape, float stddev, RngStream stream) {
  Tensor t = Tensor::empty(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = stream.normal() * stddev;
  return t;
}

Tensor init_uniform(Shape shape, float bound, RngStream stream) {
  Tensor t = Tensor::empty(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = (2.f * stream.uniform() - 1.f) * bound;
  return t;
}

Tensor init_xavier_uniform(int64_t fan_in, int64_t fan_out, RngStream stream) {
  return init_uniform({fan_in, fan_out}, std::sqrt(6.f / static_cast<float>(fan_in + fan_out)), stream);
}

}  // namespace ab
