// Selective copying (Gu & Dao 2023, Mamba §4.1.1 / App. E.1): M data tokens scattered among noise,
// then M markers; at the markers the model must emit the data tokens in their order.
//
// Mamba did not release its generator (mamba issue #343); its settings map onto S4's copying
// generator (`s4/src/dataloaders/datasets/copying.py`, `torch_copying_data(variable=True)`,
// tasks.md §11.1), re-implemented from its description, per example:
//  1. M data tokens uniform in {1, ..., A-2} (S4 ids; A counts the noise and marker symbols);
//  2. M distinct positions uniform among the first L + M positions (a random M-subset), sorted;
//     the data tokens go there in order, the noise token 0 everywhere else;
//  3. M marker tokens A-1 follow: input length L + 2M;
//  4. target: the M data tokens, emitted at the M marker positions (S4's l_output = M);
//     -100 at every other position.
// variable=false gives vanilla copying (the data at positions 0..M-1).
//
// Deliberate differences: every id is S4's plus one, so that 0 stays the harness's padding id
// (noise 1, data 2..A-1, marker A; vocabulary A + 1); one Philox stream per example
// (seed, data, kCopyStream, split).child(index), so examples are generated on demand.
#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"

namespace {

using ab::Json;

constexpr uint64_t kCopyStream = 0x53656C436F7079ull;  // "SelCopy"

class SelectiveCopying : public ab::SplitTask {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    ab::TaskSpec s = ab::task_spec(
        "selective_copying",
        "Mamba selective copying: emit the data tokens scattered among noise, in order, at the markers",
        "Gu & Dao 2023, Mamba (§4.1.1, App. E.1); generator after S4's copying dataset",
        {
            ab::enum_param("preset", "small", {"small", "paper"},
                           "defaults of the null parameters: small = 256 noise positions, 100,000 / 1,000 / 1,000 "
                           "examples; paper = Mamba's 4,096 noise positions and 400K steps x batch 64 of fresh "
                           "examples (25,600,000), 1,000 / 1,000 held out"),
            null_int_param("num_noise",
                           "L: noise positions (the data tokens hide among L + M); null = 256 (small) / 4096 (paper)",
                           0, 1 << 24),
            ab::int_param("num_data", 16, "M: data tokens to copy (Mamba: 16)", 1, 1 << 16),
            ab::int_param("alphabet", 16,
                          "A: S4's dictionary size including the noise and marker symbols, so the data tokens take "
                          "A - 2 values (Mamba: 16)",
                          3, 1 << 20),
            ab::bool_param("variable", true, "scatter the data tokens (selective copying); false = vanilla copying"),
            null_int_param("train_size", "training examples; null = 100,000 (small) / 25,600,000 (paper)", 1, 1e12),
            ab::int_param("valid_size", 1000, "validation examples (S4: n_eval 1,000)", 1, 1e10),
            ab::int_param("test_size", 1000, "test examples", 1, 1e10),
        });
    // The field trains these probes without dropout (Zoology, safari), not with LRA's 0.1.
    s.defaults = {{"model", {{"dropout", 0.0}}}};
    return s;
  }

  SelectiveCopying(const Json& p, uint64_t seed) : SplitTask("selective_copying", p, seed, "paper") {
    L_ = preset_default("num_noise", 256, 4096).get<int64_t>();
    sizes_ = {preset_default("train_size", 100000, 25600000).get<int64_t>(), p.at("valid_size").get<int64_t>(),
              p.at("test_size").get<int64_t>()};
    M_ = p.at("num_data").get<int64_t>();
    A_ = p.at("alphabet").get<int64_t>();
    variable_ = p.at("variable").get<bool>();
  }

  ab::TaskKind kind() const override { return ab::TaskKind::per_position; }
  int64_t vocab_size() const override { return A_ + 1; }
  int64_t num_classes() const override { return A_ + 1; }
  int64_t seq_len() const override { return L_ + 2 * M_; }
  Json stats() const override {
    // Floors: a uniform guess among the A - 2 data ids, and a model that knows the M data tokens but
    // not their order (1/M, ignoring repeats).
    return {{"noise_id", 1}, {"data_ids", {2, A_ - 1}}, {"marker_id", A_}, {"scored_per_example", M_},
            {"chance_accuracy", 1.0 / static_cast<double>(A_ - 2)},
            {"context_floor_accuracy", 1.0 / static_cast<double>(M_)}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    const int k = checked_split(s, index);
    ab::RngStream rng = split_stream(kCopyStream, k).child(static_cast<uint64_t>(index));
    const int32_t noise = 1, marker = static_cast<int32_t>(A_);
    std::vector<int32_t> data(static_cast<size_t>(M_));
    for (auto& d : data) d = static_cast<int32_t>(2 + rng.below(static_cast<uint64_t>(A_ - 2)));  // S4 1..A-2, +1
    std::vector<int64_t> pos(static_cast<size_t>(M_));
    if (variable_) {
      // A uniform M-subset of [0, L + M) (S4: randperm(L + M)[:M], sorted): Floyd's algorithm.
      std::vector<char> used(static_cast<size_t>(L_ + M_), 0);
      const int64_t n = L_ + M_;
      int64_t filled = 0;
      for (int64_t j = n - M_; j < n; ++j) {
        const int64_t t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j + 1)));
        const int64_t pick = used[t] ? j : t;
        used[pick] = 1;
        pos[filled++] = pick;
      }
      std::sort(pos.begin(), pos.end());
    } else {
      for (int64_t i = 0; i < M_; ++i) pos[i] = i;
    }
    ab::Example ex;
    ex.input.assign(static_cast<size_t>(L_ + 2 * M_), noise);
    ex.target.assign(ex.input.size(), ab::kIgnoreLabel);
    for (int64_t i = 0; i < M_; ++i) {
      ex.input[pos[i]] = data[i];
      ex.input[L_ + M_ + i] = marker;
      ex.target[L_ + M_ + i] = data[i];
    }
    return ex;
  }

 private:
  int64_t L_ = 0, M_ = 0, A_ = 0;
  bool variable_ = true;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(SelectiveCopying);
