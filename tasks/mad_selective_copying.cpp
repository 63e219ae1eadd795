// MAD selective copying (athms/mad-lab `selective-copying`): n tokens scattered among blanks, then
// a copy token; the model must emit the n tokens in order at the last n positions. This is MAD's
// variant, not Mamba's (tasks/selective_copying.cpp): its own blank and copy tokens, blanks between
// the tokens only, and the answer positions hold blanks.
// Baseline (configs/tasks/selective-copying.yml): vocab 16, seq_len 256, 16 tokens to copy, 12,800
// training examples; MAD's changes: vocab {32, 64, 128}, seq_len {512, 1024}, train {6400, 3200,
// 1600, 800}, tokens to copy {32, 64, 96}.
//
// MAD's generate_selective_copying_instance re-implemented from its description, in MAD ids
// (copy = V - 1, blank = V - 2, tokens [0, V - 2)), per example:
//  1. n tokens uniform over [0, V - 2), with replacement;
//  2. L - 2n - 1 blanks, each inserted before token i with i uniform in [0, n) (numpy.insert at
//     randint(0, n) indices): no blank ever follows the last token;
//  3. the copy token, then n blanks (L tokens in all);
//  4. targets (training and test alike): the n tokens at the last n positions, -100 elsewhere.
// Deliberate difference: MAD draws the blank positions from numpy's global random state
// (np.random.randint), not from the instance's seeded generator, so its data are not reproducible
// from its seed; ours come from the example's own stream like everything else.
#include "mad.hpp"

namespace {

using ab::Json;

constexpr uint64_t kStream = 0x4D41445343ull;  // "MADSC"

class MadSelectiveCopying : public ab::mad::Task {
 public:
  static ab::TaskSpec spec() {
    return ab::mad::spec(
        "mad_selective_copying",
        "MAD selective copying: emit the tokens scattered among blanks, in order, after the copy token",
        ab::mad::params(16, 3, 256, 4, 12800,
                        {ab::int_param("num_tokens_to_copy", 16, "n: tokens to copy (MAD: 16)", 1, 1 << 19)}));
  }

  MadSelectiveCopying(const Json& p, uint64_t seed) : Task("mad_selective_copying", p, seed, kStream) {
    n_ = p.at("num_tokens_to_copy").get<int64_t>();
    if (L_ <= 2 * n_ + 1)
      refuse(fmt::format("seq_len = {} must be > 2 * num_tokens_to_copy + 1 = {} (MAD's assertion); nearest valid "
                         "value: {}, or num_tokens_to_copy at most {}", L_, 2 * n_ + 1, 2 * n_ + 2, (L_ - 2) / 2));
  }

  int64_t seq_len() const override { return L_; }
  Json stats() const override {
    return {{"token_ids", {1, V_ - 2}}, {"blank_id", V_ - 1}, {"copy_id", V_}, {"mad_ids", "ours = MAD's + 1"},
            {"scored_per_example", n_}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    int k = 0;
    ab::RngStream rng = rng_of(s, index, k);
    const int32_t blank = static_cast<int32_t>(V_ - 2) + 1, copy = static_cast<int32_t>(V_ - 1) + 1;
    std::vector<int32_t> tokens(static_cast<size_t>(n_));
    for (auto& t : tokens) t = 1 + static_cast<int32_t>(rng.below(static_cast<uint64_t>(V_ - 2)));
    std::vector<int64_t> blanks_before(static_cast<size_t>(n_), 0);
    for (int64_t b = 0; b < L_ - 2 * n_ - 1; ++b) ++blanks_before[rng.below(static_cast<uint64_t>(n_))];
    ab::Example ex;
    ex.input.reserve(static_cast<size_t>(L_));
    for (int64_t i = 0; i < n_; ++i) {
      ex.input.insert(ex.input.end(), static_cast<size_t>(blanks_before[i]), blank);
      ex.input.push_back(tokens[i]);
    }
    ex.input.push_back(copy);
    ex.input.insert(ex.input.end(), static_cast<size_t>(n_), blank);
    ex.target.assign(static_cast<size_t>(L_ - n_), ab::kIgnoreLabel);
    ex.target.insert(ex.target.end(), tokens.begin(), tokens.end());
    return ex;
  }

 private:
  int64_t n_ = 16;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(MadSelectiveCopying);
