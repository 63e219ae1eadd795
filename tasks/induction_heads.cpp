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
#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task.hpp"

namespace {

using ab::Json;

constexpr uint64_t kInductionStream = 0x496E6448656164ull;  // "IndHead"

int split_index(ab::Split s) {
  switch (s) {
    case ab::Split::train: return 0;
    case ab::Split::valid: return 1;
    case ab::Split::test: return 2;
  }
  throw std::out_of_range("task 'induction_heads': unknown split");
}

uint64_t hash_sequence(const std::vector<int32_t>& v) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ v.size();
  for (int32_t t : v) {
    h ^= static_cast<uint64_t>(static_cast<uint32_t>(t)) + 0x632BE59BD9B4E019ull;
    h = std::rotl(h * 0xBF58476D1CE4E5B9ull, 31) * 0x94D049BB133111EBull;
  }
  return h ^ (h >> 29);
}

class InductionHeads : public ab::Task {
 public:
  static ab::TaskSpec spec() {
    ab::TaskSpec s;
    s.name = "induction_heads";
    s.summary = "H3/Mamba induction head: after the final \"=>\" emit the token that followed the earlier trigger";
    s.reference = "Fu et al. 2023, Hungry Hungry Hippos (safari synthetics); Gu & Dao 2023, Mamba §4.1.2";
    auto null_int = [](std::string name, std::string doc, double lo, double hi) {
      return ab::ParamSpec{std::move(name), ab::ParamType::integer, Json(), std::move(doc), lo, hi, {}};
    };
    s.params = {
        ab::enum_param("preset", "small", {"small", "mamba"},
                       "defaults of the null parameters: small = the H3 setting (vocab 20, L 30, 5,000 / 500 / 500, "
                       "deduplicated), already CPU-sized; mamba = Mamba's (vocab 16, L 256, 204,800 steps x batch 8 "
                       "of fresh examples = 1,638,400, 1,000 / 1,000 held out, no dedupe)"),
        null_int("vocab_size", "safari's vocab_size, counting \"=>\" and \".\"; null = 20 (small) / 16 (mamba)", 4,
                 1 << 20),
        null_int("seq_len", "L: random tokens before the final \"=>\"; null = 30 (small) / 256 (mamba)", 3, 1 << 24),
        null_int("test_seq_len", "L of the validation and test splits (length extrapolation); null = seq_len", 3,
                 1 << 24),
        ab::int_param("induction_len", 1, "tokens copied after each trigger (safari default 1)", 1, 1 << 16),
        ab::int_param("num_triggers", 1, "triggers drawn when not forced to 1 (probability 0.5; safari default 1)", 1,
                      1 << 16),
        ab::enum_param("train_targets", "all", {"all", "answer"},
                       "training split targets: all = next token at every position (safari), answer = only the "
                       "copied token(s) as in the test split"),
        ab::ParamSpec{"dedupe", ab::ParamType::boolean, Json(),
                      "drop repeated sequences within a split (safari does); builds the index up front; null = true "
                      "(small) / false (mamba)",
                      -1e300, 1e300, {}},
        null_int("train_size", "training examples; null = 5,000 (small) / 1,638,400 (mamba)", 1, 1e12),
        null_int("valid_size", "validation examples; null = 500 (small) / 1,000 (mamba)", 1, 1e10),
        null_int("test_size", "test examples; null = 500 (small) / 1,000 (mamba)", 1, 1e10),
    };
    return s;
  }

  InductionHeads(const Json& p, uint64_t seed) : params_(p), seed_(seed) {
    const bool mamba = p.at("preset") == "mamba";
    auto pick = [&](const char* key, Json small, Json big) {
      if (params_.at(key).is_null()) params_[key] = mamba ? big : small;
      return params_.at(key);
    };
    vocab_ = pick("vocab_size", 20, 16).get<int64_t>();
    L_train_ = pick("seq_len", 30, 256).get<int64_t>();
    if (params_.at("test_seq_len").is_null()) params_["test_seq_len"] = L_train_;
    L_test_ = params_.at("test_seq_len").get<int64_t>();
    dedupe_ = pick("dedupe", true, false).get<bool>();
    sizes_ = {pick("train_size", 5000, 1638400).get<int64_t>(), pick("valid_size", 500, 1000).get<int64_t>(),
              pick("test_size", 500, 1000).get<int64_t>()};
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
    if (dedupe_) build_index();
  }

  ab::TaskKind kind() const override { return ab::TaskKind::per_position; }
  int64_t vocab_size() const override { return vocab_ + 1; }
  int64_t num_classes() const override { return vocab_ + 1; }
  int64_t seq_len() const override { return std::max(L_train_, L_test_) + ilen_; }
  int64_t split_size(ab::Split s) const override { return sizes_[split_index(s)]; }
  Json effective_params() const override { return params_; }
  Json stats() const override {
    Json j = {{"copy_prefix_id", N_ + 1}, {"ordinary_ids", {1, N_}}, {"scored_per_test_example", ilen_}};
    if (dedupe_) j["dedupe_draws"] = {draws_[0], draws_[1], draws_[2]};
    return j;
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    const int k = split_index(s);
    if (index < 0 || index >= sizes_[k])
      throw std::out_of_range(fmt::format("task 'induction_heads': {} index {} is out of range [0, {})",
                                          ab::split_name(s), index, sizes_[k]));
    const uint64_t stream = dedupe_ ? kept_[k][static_cast<size_t>(index)] : static_cast<uint64_t>(index);
    return generate(k, stream);
  }

 private:
  // safari's own spelling of the whole sequence: ordinary tokens "0".."N-1", "=>" and ".".
  std::string readable(const std::vector<int32_t>& seq) const {
    std::string out;
    for (int32_t t : seq) {
      if (!out.empty()) out += ' ';
      out += t == N_ + 1 ? std::string("=>") : t == N_ + 2 ? std::string(".") : std::to_string(t - 1);
    }
    return out;
  }

  ab::Example generate(int split, uint64_t stream) const {
    ab::RngStream rng = ab::RngStream(seed_, ab::Purpose::data, kInductionStream, static_cast<uint64_t>(split))
                            .child(stream);
    const int64_t L = split == 0 ? L_train_ : L_test_;
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
    ab::Example ex;
    ex.text = readable(seq);
    ex.input.assign(seq.begin(), seq.end() - 1);
    ex.target.assign(seq.begin() + 1, seq.end());
    if (split != 0 || answer_only_train_)
      std::fill(ex.target.begin(), ex.target.end() - ilen_, ab::kIgnoreLabel);
    return ex;
  }

  void build_index() {
    for (int k = 0; k < 3; ++k) {
      std::unordered_set<uint64_t> seen;
      seen.reserve(static_cast<size_t>(sizes_[k]) * 2);
      uint64_t stream = 0;
      const uint64_t budget = static_cast<uint64_t>(sizes_[k]) * 20 + 100000;
      while (static_cast<int64_t>(kept_[k].size()) < sizes_[k]) {
        if (stream >= budget)
          throw ab::UsageError(fmt::format(
              "task 'induction_heads': only {} distinct {} sequences after {} draws, {} requested; lower the split "
              "size, raise vocab_size or seq_len, or set dedupe=false",
              kept_[k].size(), k == 0 ? "train" : k == 1 ? "valid" : "test", stream, sizes_[k]));
        if (seen.insert(hash_sequence(generate(k, stream).input)).second) kept_[k].push_back(stream);
        ++stream;
      }
      draws_[k] = static_cast<int64_t>(stream);
    }
  }

  Json params_;
  uint64_t seed_;
  int64_t vocab_ = 0, N_ = 0, L_train_ = 0, L_test_ = 0, ilen_ = 1, triggers_ = 1;
  bool dedupe_ = true, answer_only_train_ = false;
  std::array<int64_t, 3> sizes_{};
  std::array<std::vector<uint64_t>, 3> kept_;
  std::array<int64_t, 3> draws_{};
};

}  // namespace

ATTNBENCH_REGISTER_TASK(InductionHeads);
