// Induction head (H3 / Hyena synthetics; the task of Mamba §4.1.2): random tokens with a trigger
// "=>" followed by a token somewhere; the sequence ends with "=>" and the model must emit the token
// that followed the earlier trigger.
//
// The generator is safari's `generate_induction_head` (`src/dataloaders/synthetics.py`, tasks.md
// §12.2) re-implemented from its description, per example (N = vocab_size - 2 ordinary tokens):
//  1. L tokens uniform over the N ordinary tokens, then "=>";
//  2. with probability 0.5 one trigger, else num_triggers; trigger positions uniform in
//     [0, L - 1 - induction_len), sorted, a position dropped when it is not more than induction_len
//     after the last kept one;
//  3. to_copy = the induction_len tokens after the first kept trigger; every kept trigger becomes
//     "=>" followed by to_copy;
//  4. to_copy is appended: L + 1 + induction_len tokens; input = seq[:-1], target = seq[1:].
// Scoring (safari): the training split is a plain LM target on every position (train_targets=all;
// `answer` scores only the answer as in the test split, cf. mamba issue #62); the validation and test
// splits score only the last induction_len positions (-100 elsewhere). Examples are deduplicated
// within a split like safari's (dedupe=true): the split is built once by walking the example
// streams and keeping the first occurrence of every sequence (64-bit hashes), then each kept example
// is regenerated on demand from its stream index.
//
// Token ids: 0 = padding (unused), 1..N the ordinary tokens, N+1 = "=>", N+2 = "." (safari's
// no-op, unused here), so the model vocabulary is vocab_size + 1. safari numbers tokens by sorted
// strings, a bijection of ours. test_seq_len gives the validation and test splits another L
// (Mamba's length extrapolation); the model length is the longer of the two, shorter examples are
// padded. One Philox stream per example: (seed, data, kInductionStream, split).child(stream index).
// `text` spells the whole sequence, answer included, the safari way ("0".."N-1", "=>", ".").
#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"
#include "safari.hpp"

namespace {

using ab::Json;

constexpr uint64_t kInductionStream = 0x496E6448656164ull;  // "IndHead"
constexpr ab::preset_sizes::Sizes kSizes = {{5000, 500, 500}, {1638400, 1000, 1000}};

class InductionHeads : public ab::safari::Task {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    return ab::safari::spec(
        "induction_heads",
        "H3/Mamba induction head: after the final \"=>\" emit the token that followed the earlier trigger",
        "Fu et al. 2023, Hungry Hungry Hippos (safari synthetics); Gu & Dao 2023, Mamba §4.1.2",
        ab::preset_sizes::after(
            {
                ab::enum_param(
                    "preset", "small", {"small", "mamba"},
                    "defaults of the null parameters: small = the H3 setting (vocab 20, L 30, 5,000 / 500 / 500, "
                    "deduplicated), already CPU-sized; mamba = Mamba's (vocab 16, L 256, 204,800 steps x batch 8 "
                    "of fresh examples = 1,638,400, 1,000 / 1,000 held out, no dedupe)"),
                null_int_param("vocab_size",
                               "safari's vocab_size, counting \"=>\" and \".\"; null = 20 (small) / 16 (mamba)", 4,
                               1 << 20),
                null_int_param("seq_len", "L: random tokens before the final \"=>\"; null = 30 (small) / 256 (mamba)",
                               3, 1 << 24),
                null_int_param("test_seq_len",
                               "L of the validation and test splits (length extrapolation); null = seq_len", 3,
                               1 << 24),
                ab::int_param("induction_len", 1, "tokens copied after each trigger (safari default 1)", 1, 1 << 16),
                ab::int_param("num_triggers", 1,
                              "triggers drawn when not forced to 1 (probability 0.5; safari default 1)", 1, 1 << 16),
                ab::enum_param("train_targets", "all", {"all", "answer"},
                               "training split targets: all = next token at every position (safari), answer = only the "
                               "copied token(s) as in the test split"),
                ab::null_bool_param(
                    "dedupe",
                    "drop repeated sequences within a split (safari does); builds the index up front; null = "
                    "true (small) / false (mamba)"),
            },
            "examples", kSizes, "mamba", {}, 1e12));
  }

  InductionHeads(const Json& p, uint64_t seed) : Task("induction_heads", p, seed, "mamba") {
    vocab_ = preset_default("vocab_size", 20, 16).get<int64_t>();
    resolve_lengths(30, 256);
    dedupe_ = preset_default("dedupe", true, false).get<bool>();
    resolve_sizes(kSizes);
    ilen_ = p.at("induction_len").get<int64_t>();
    triggers_ = p.at("num_triggers").get<int64_t>();
    answer_only_train_ = p.at("train_targets") == "answer";
    N_ = vocab_ - 2;
    for (int64_t L : {L_train_, L_test_})
      if (L - 1 - ilen_ < 1)
        throw ab::UsageError(fmt::format(
            "task 'induction_heads': a sequence of {} tokens leaves no room for a trigger followed by induction_len = "
            "{} tokens; seq_len (and test_seq_len) must be >= induction_len + 2 = {}",
            L, ilen_, ilen_ + 2));
    dedupe_if_asked();
  }

  // Every copied token but the last is also the next input token.
  bool targets_in_input() const override { return !answer_only_train_ || ilen_ > 1; }
  int64_t seq_len() const override { return std::max(L_train_, L_test_) + ilen_; }
  Json stats() const override {
    return with_dedupe_stats({{"copy_prefix_id", N_ + 1},
                              {"ordinary_ids", {1, N_}},
                              {"scored_per_test_example", ilen_},
                              {"chance_accuracy", 1.0 / static_cast<double>(N_)}});
  }

 private:
  ab::Example generate(int split, uint64_t stream) const override {
    ab::RngStream rng = split_stream(kInductionStream, split).child(stream);
    const int64_t L = length_of_split(split);
    const int32_t prefix = static_cast<int32_t>(N_ + 1);
    std::vector<int32_t> seq(static_cast<size_t>(L));
    for (auto& t : seq) t = static_cast<int32_t>(1 + rng.below(static_cast<uint64_t>(N_)));
    seq.push_back(prefix);
    const int64_t n = rng.uniform_double() < 0.5 ? 1 : triggers_;
    std::vector<int64_t> pos(static_cast<size_t>(n));
    for (auto& q : pos) q = static_cast<int64_t>(rng.below(static_cast<uint64_t>(L - (1 + ilen_))));
    std::sort(pos.begin(), pos.end());
    std::vector<int64_t> kept;
    for (int64_t q : pos)
      if (kept.empty() || q - kept.back() > ilen_) kept.push_back(q);
    std::vector<int32_t> to_copy(seq.begin() + kept[0] + 1, seq.begin() + kept[0] + 1 + ilen_);
    for (int64_t q : kept) {
      seq[q] = prefix;
      for (int64_t i = 0; i < ilen_; ++i) seq[q + 1 + i] = to_copy[i];
    }
    seq.insert(seq.end(), to_copy.begin(), to_copy.end());
    return next_token_example(seq, split, ilen_);
  }

  int64_t N_ = 0, ilen_ = 1, triggers_ = 1;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(InductionHeads);
