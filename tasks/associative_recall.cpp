// Associative recall (H3 / Hyena synthetics): key-value pairs drawn from a per-example map, then
// "=>" and a key; the model must emit that key's value.
//
// The generator is safari's `generate_assoc_recall` (`src/dataloaders/synthetics.py`, tasks.md
// §12.1) re-implemented from its description, per example (N = vocab_size - 2 ordinary tokens):
//  1. keys = the first N/2 ordinary tokens, values = the rest (safari splits its sorted token
//     strings, a bijection of our ids);
//  2. a random map from every key tuple (num_keys keys; safari default 1) to a uniform value (values
//     may repeat); we draw a tuple's value when the tuple first occurs, the same distribution
//     without building maps of |keys|^num_keys entries;
//  3. L / (num_keys + 1) times: a key tuple uniform (with replacement), then the tuple and its value;
//  4. "=>", a query tuple and its value: the query is uniform over all tuples; with allow_dot=false
//     (safari default) an absent draw is replaced by a uniform draw among the tuples present;
//     with allow_dot=true an absent tuple is answered by "." (safari's no-op);
//  5. input = seq[:-1], target = seq[1:].
// Scoring (safari): training is a plain LM target on every position (train_targets=all; `answer`
// scores only the final position); validation and test score only the final position (the value).
// Examples are deduplicated within a split like safari's (dedupe=true): the split is built once by
// walking the example streams and keeping the first occurrence of every sequence (64-bit hashes),
// then each kept example is regenerated on demand from its stream index.
//
// Token ids: 0 = padding (unused), 1..N ordinary tokens (keys 1..N/2, values N/2+1..N), N+1 = "=>",
// N+2 = "."; the model vocabulary is vocab_size + 1. test_seq_len gives the validation and test
// splits another L; the model length is the longer, shorter examples are padded. One Philox stream
// per example: (seed, data, kRecallStream, split).child(stream index).
// `text` spells the whole sequence, answer included, the safari way ("0".."N-1", "=>", ".").
#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"
#include "safari.hpp"

namespace {

using ab::Json;

constexpr uint64_t kRecallStream = 0x4173736F63524Cull;  // "AssocRL"
constexpr ab::preset_sizes::Sizes kSizes = {{5000, 500, 500}, {2000, 500, 500}};

class AssociativeRecall : public ab::safari::Task {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    return ab::safari::spec(
        "associative_recall",
        "H3/Hyena associative recall: key-value pairs, then \"=>\" and a key; emit its value (last position)",
        "Fu et al. 2023, Hungry Hungry Hippos; Poli et al. 2023, Hyena Hierarchy (safari synthetics)",
        ab::preset_sizes::after(
            {
                ab::enum_param(
                    "preset", "small", {"small", "hyena"},
                    "defaults of the null parameters: small = safari's dataset default as used by H3 (vocab 20, "
                    "L 40, 5,000 / 500 / 500), already CPU-sized; hyena = the long-sequence experiment (vocab 30, "
                    "L 131,072, 2,000 training samples per the paper's Table A.1, 500 / 500 held out)"),
                null_int_param("vocab_size",
                               "safari's vocab_size, counting \"=>\" and \".\"; null = 20 (small) / 30 (hyena)", 6,
                               1 << 20),
                null_int_param("seq_len",
                               "L: tokens of key-value pairs before \"=>\"; null = 40 (small) / 131072 (hyena)", 2,
                               1 << 26),
                null_int_param("test_seq_len", "L of the validation and test splits; null = seq_len", 2, 1 << 26),
                ab::int_param("num_keys", 1, "keys per tuple (safari default 1)", 1, 16),
                ab::bool_param("allow_dot", false, "an absent query key is answered by \".\" (safari default false)"),
                ab::enum_param("train_targets", "all", {"all", "answer"},
                               "training split targets: all = next token at every position (safari), answer = only the "
                               "value after the query, as in the test split"),
                ab::bool_param("dedupe", true,
                               "drop repeated sequences within a split (safari does); builds the index up front"),
            },
            "examples", kSizes, "hyena", {}, 1e12));
  }

  AssociativeRecall(const Json& p, uint64_t seed) : Task("associative_recall", p, seed, "hyena") {
    vocab_ = preset_default("vocab_size", 20, 30).get<int64_t>();
    resolve_lengths(40, 131072);
    resolve_sizes(kSizes);
    num_keys_ = p.at("num_keys").get<int64_t>();
    allow_dot_ = p.at("allow_dot").get<bool>();
    answer_only_train_ = p.at("train_targets") == "answer";
    dedupe_ = p.at("dedupe").get<bool>();
    N_ = vocab_ - 2;
    n_keys_ = N_ / 2;
    n_values_ = N_ - n_keys_;
    if (n_keys_ < 1)
      throw ab::UsageError(fmt::format("task 'associative_recall': vocab_size = {} leaves no keys; it must be >= 4",
                                       vocab_));
    const double tuples = std::pow(static_cast<double>(n_keys_), static_cast<double>(num_keys_));
    if (tuples > 4e18)
      throw ab::UsageError(fmt::format("task 'associative_recall': {}^{} key tuples overflow; lower num_keys", n_keys_,
                                       num_keys_));
    n_tuples_ = static_cast<uint64_t>(tuples);
    for (int64_t L : {L_train_, L_test_})
      if (L / (num_keys_ + 1) < 1)
        throw ab::UsageError(fmt::format(
            "task 'associative_recall': seq_len (and test_seq_len) = {} holds no key-value pair; it must be >= "
            "num_keys + 1 = {}",
            L, num_keys_ + 1));
    dedupe_if_asked();
  }

  // train_targets=answer scores only the last position, whose target is not in the input.
  bool targets_in_input() const override { return !answer_only_train_; }
  int64_t seq_len() const override { return length_of(std::max(L_train_, L_test_)) - 1; }
  Json stats() const override {
    return with_dedupe_stats({{"copy_prefix_id", N_ + 1},
                              {"noop_id", N_ + 2},
                              {"key_ids", {1, n_keys_}},
                              {"value_ids", {n_keys_ + 1, N_}},
                              {"chance_accuracy", 1.0 / static_cast<double>(n_values_)}});
  }

 private:
  // Tokens of the full sequence (pairs, "=>", query, answer); the input is one shorter.
  int64_t length_of(int64_t L) const { return L / (num_keys_ + 1) * (num_keys_ + 1) + 2 + num_keys_; }

  ab::Example generate(int split, uint64_t stream) const override {
    ab::RngStream rng = split_stream(kRecallStream, split).child(stream);
    const int64_t L = length_of_split(split);
    const int64_t pairs = L / (num_keys_ + 1);
    std::unordered_map<uint64_t, int32_t> value_of;  // tuple -> value, drawn at first use
    std::vector<uint64_t> present;                   // tuples in order of first appearance
    auto append_tuple = [&](std::vector<int32_t>& seq, uint64_t t) {
      std::array<int32_t, 16> keys{};
      for (int64_t j = num_keys_ - 1; j >= 0; --j) {  // base-n_keys digits, most significant first
        keys[j] = static_cast<int32_t>(1 + t % static_cast<uint64_t>(n_keys_));
        t /= static_cast<uint64_t>(n_keys_);
      }
      seq.insert(seq.end(), keys.begin(), keys.begin() + num_keys_);
    };
    std::vector<int32_t> seq;
    seq.reserve(static_cast<size_t>(length_of(L) + 1));
    for (int64_t i = 0; i < pairs; ++i) {
      const uint64_t t = rng.below(n_tuples_);
      auto it = value_of.find(t);
      if (it == value_of.end()) {
        it = value_of.emplace(t, static_cast<int32_t>(1 + n_keys_ + rng.below(static_cast<uint64_t>(n_values_)))).first;
        present.push_back(t);
      }
      append_tuple(seq, t);
      seq.push_back(it->second);
    }
    uint64_t q = rng.below(n_tuples_);
    if (!allow_dot_ && value_of.find(q) == value_of.end()) q = present[rng.below(present.size())];
    seq.push_back(static_cast<int32_t>(N_ + 1));  // "=>"
    append_tuple(seq, q);
    const auto it = value_of.find(q);
    seq.push_back(it != value_of.end() ? it->second : static_cast<int32_t>(N_ + 2));  // value or "."
    return next_token_example(seq, split, 1);
  }

  int64_t N_ = 0, n_keys_ = 0, n_values_ = 0, num_keys_ = 1;
  uint64_t n_tuples_ = 0;
  bool allow_dot_ = false;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(AssociativeRecall);
