#pragma once
// Parameter ownership: a Module registers its trainable tensors by name, and nests submodules.
#include <string>
#include <utility>
#include <vector>

#include "attnbench/autograd.hpp"
#include "attnbench/rng.hpp"

namespace ab {

class Module {
 public:
  virtual ~Module() = default;
  // Every trainable parameter of this module and its children, with dotted names.
  std::vector<std::pair<std::string, Var>> parameters() const;

  // Registers a trainable tensor (returns a handle that shares it) or a child module. AdamW decays
  // matrices and embeddings (rank >= 2); no_decay exempts one whatever its rank, as the reference
  // code exempts an SSM's dynamics (Mamba's A_log and D, S4's log-dt and A).
  enum class Decay { by_rank, none };
  Var& add_param(std::string name, Tensor init, Decay decay = Decay::by_rank);
  void add_child(std::string name, Module* child);
  // Dotted names (as parameters() gives them) of the parameters registered with Decay::none.
  std::vector<std::string> no_decay_names() const;

 private:
  std::vector<std::pair<std::string, Var>> params_;
  std::vector<std::string> no_decay_;
  std::vector<std::pair<std::string, Module*>> children_;
};

// ---- initialisers (all draw from the counter-based generator) ----
Tensor init_normal(Shape shape, float stddev, RngStream stream);
Tensor init_uniform(Shape shape, float bound, RngStream stream);  // U(-bound, bound)
Tensor init_xavier_uniform(int64_t fan_in, int64_t fan_out, RngStream stream);  // [fan_in, fan_out]

}  // namespace ab
