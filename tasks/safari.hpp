#pragma once
// What the safari synthetics (associative_recall, induction_heads) share: their token ids
// (0 = padding, 1..N ordinary tokens, N+1 = "=>", N+2 = "."), safari's own spelling of them, their
// spec defaults, and the frame of their generators (training and test lengths, split-wise
// deduplication, next-token examples).
#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attnbench/task_helpers.hpp"
#include "preset_sizes.hpp"

namespace ab::safari {

// The whole sequence as safari spells it: ordinary tokens "0".."N-1", "=>" and ".".
inline std::string readable(const std::vector<int32_t>& seq, int64_t N) {
  std::string out;
  for (int32_t t : seq) {
    if (!out.empty()) out += ' ';
    out += t == N + 1 ? std::string("=>") : t == N + 2 ? std::string(".") : std::to_string(t - 1);
  }
  return out;
}

// A safari synthetic's spec. The training targets are the next tokens (input = seq[:-1], target =
// seq[1:]): causal models, as in safari, and no dropout.
inline TaskSpec spec(std::string name, std::string summary, std::string reference, std::vector<ParamSpec> params) {
  TaskSpec s = task_spec(std::move(name), std::move(summary), std::move(reference), std::move(params));
  s.defaults = {{"model", {{"dropout", 0.0}, {"causal", true}}}};
  return s;
}

// The generator frame. A task resolves vocab_, L_train_ / L_test_ (resolve_lengths), dedupe_ and
// the sizes in its constructor, then calls dedupe_if_asked(); it writes generate(), which draws
// the sequence of one stream index and returns next_token_example(...).
class Task : public preset_sizes::Task {
 public:
  TaskKind kind() const override { return TaskKind::per_position; }
  int64_t vocab_size() const override { return vocab_ + 1; }
  int64_t num_classes() const override { return vocab_ + 1; }

  Example example(Split s, int64_t index) const override {
    const int k = checked_split(s, index);
    const uint64_t stream = dedupe_ ? kept_[k][static_cast<size_t>(index)] : static_cast<uint64_t>(index);
    return generate(k, stream);
  }

 protected:
  using preset_sizes::Task::Task;

  // The example of split k drawn from stream index `stream`.
  virtual Example generate(int k, uint64_t stream) const = 0;

  // seq_len (null: `small` or `large` by preset) and test_seq_len (null: seq_len).
  void resolve_lengths(int64_t small, int64_t large) {
    L_train_ = preset_default("seq_len", small, large).get<int64_t>();
    if (params_.at("test_seq_len").is_null()) params_["test_seq_len"] = L_train_;
    L_test_ = params_.at("test_seq_len").get<int64_t>();
  }
  int64_t length_of_split(int k) const { return k == 0 ? L_train_ : L_test_; }

  // With dedupe: index the first distinct sequences of every split (after the parameters are set).
  void dedupe_if_asked() {
    if (dedupe_) dedupe_splits([this](int k, uint64_t stream) { return generate(k, stream).input; }, kept_, draws_);
  }
  // stats() with the streams walked per split when deduplicating.
  Json with_dedupe_stats(Json j) const {
    if (dedupe_) j["dedupe_draws"] = {draws_[0], draws_[1], draws_[2]};
    return j;
  }

  // input = seq[:-1], target = seq[1:], spelled the safari way; the held-out splits (and training
  // with train_targets=answer) score only the last `answer` targets.
  Example next_token_example(const std::vector<int32_t>& seq, int k, int64_t answer) const {
    Example ex;
    ex.text = readable(seq, vocab_ - 2);
    ex.input.assign(seq.begin(), seq.end() - 1);
    ex.target.assign(seq.begin() + 1, seq.end());
    if (k != 0 || answer_only_train_) std::fill(ex.target.begin(), ex.target.end() - answer, kIgnoreLabel);
    return ex;
  }

  int64_t vocab_ = 0, L_train_ = 0, L_test_ = 0;
  bool dedupe_ = true, answer_only_train_ = false;

 private:
  std::array<std::vector<uint64_t>, 3> kept_;
  std::array<int64_t, 3> draws_{};
};

}  // namespace ab::safari
