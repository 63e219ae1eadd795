// ListOps (Long Range Arena, after Nangia & Bowman 2018): nested MIN/MAX/MED/SM expressions over
// the digits 0..9; the label is the value of the expression.
//
// The sampler is LRA's `lra_benchmarks/data/listops.py` re-implemented from its description
// (tasks.md §3.1): gen(depth) from depth 1; below max_depth draw r ~ U[0,1), at max_depth force a
// leaf; r > 0.25 makes a leaf (digit uniform in 0..9), otherwise an operator node with n uniform in
// {2..max_args} children generated at depth + 1 and then the operator drawn uniformly (the same draw
// order as LRA). A tree is kept iff min_length < length < max_length and its token sequence has not
// been seen; trees are accepted in generation order and split train | valid | test.
//
// Deliberate differences from LRA, all recorded here:
//  - One Philox stream (seed, data, kListOpsStream) drives every draw, so the data differ from
//    Python's Mersenne Twister; a draw is also abandoned as soon as it is certain to reach
//    max_length, so the stream is not a draw-for-draw replay of a full sampler either.
//  - The splits are in generation order (LRA takes its Python set's iteration order, which is
//    effectively random; the distribution is the same).
//  - Tokens are emitted directly as ids: 0 pad, 1..10 digits, 11..14 [MIN [MAX [MED [SM, 15 ]
//    (LRA's preprocessing renames ] to X and drops the tuple parentheses; the stream is the same).
#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"

namespace {

using ab::Json;

constexpr uint64_t kListOpsStream = 0x4C6973744F7073ull;  // "ListOps": keeps this stream apart from other tasks
constexpr uint8_t kDigit0 = 1, kOp0 = 11, kClose = 15;
constexpr int kVocab = 16;
constexpr const char* kOpNames[4] = {"[MIN", "[MAX", "[MED", "[SM"};
// A draw that never lands a new tree this many times in a row means the settings cannot be met.
constexpr int64_t kMaxDrawsWithoutNew = 1'000'000;
// Overall budget: below ~1 accepted tree per 2,000 draws generation would run for hours, so stop.
constexpr int64_t kDrawsPerTreeBudget = 2'000;

// Unbiased draw in [0, n) from one 32-bit word (Lemire). RngStream::below spends 64 bits per draw;
// the sampler makes ~2 draws per token, so halving the Philox work matters at LRA sizes.
inline uint32_t below32(ab::RngStream& rng, uint32_t n) {
  for (;;) {
    const uint64_t m = static_cast<uint64_t>(rng.next_u32()) * n;
    const uint32_t low = static_cast<uint32_t>(m);
    if (low >= n || low >= (0u - n) % n) return static_cast<uint32_t>(m >> 32);
  }
}

// 64-bit hash of a token sequence; only a pre-filter, equal hashes are confirmed byte by byte.
uint64_t hash_tokens(const uint8_t* p, size_t n) {
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = std::rotl((h ^ w) * 0xC2B2AE3D27D4EB4Full, 29);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p + i, n - i);
  return mix(h ^ tail ^ (static_cast<uint64_t>(n - i) << 56));
}

class ListOps : public ab::SplitTask {
 public:
  static ab::TaskSpec spec() {
    return ab::task_spec(
        "listops", "LRA ListOps: evaluate nested MIN/MAX/MED/SM lists of digits (10 classes)",
        "Tay et al. 2021, Long Range Arena (ListOps after Nangia & Bowman 2018)",
        {
            ab::int_param("max_length", 2000, "padded model length; trees are strictly shorter (LRA: 2000)", 8, 65536),
            ab::ParamSpec{"min_length",
                          ab::ParamType::integer,
                          Json(),
                          "trees are strictly longer than this; null = max_length / 4 (LRA: 500 for 2000); "
                          "must be < max_length - 1",
                          0,
                          65536,
                          {}},
            ab::int_param("max_depth", 10, "maximum nesting depth, the root at depth 1 (LRA: 10)", 1, 64),
            ab::int_param("max_args", 10, "maximum number of arguments of an operator, at least 2 (LRA: 10)", 2, 64),
            ab::int_param("train_size", 96000, "training trees (LRA: 96,000)", 1, 10'000'000),
            ab::int_param("valid_size", 2000, "validation trees (LRA: 2,000)", 1, 10'000'000),
            ab::int_param("test_size", 2000, "test trees (LRA: 2,000)", 1, 10'000'000),
        });
  }

  ListOps(const Json& p, uint64_t seed) : SplitTask("listops", p, seed) {
    max_length_ = p.at("max_length").get<int64_t>();
    const Json& min_len = p.at("min_length");
    min_length_ = min_len.is_null() ? max_length_ / 4 : min_len.get<int64_t>();
    params_["min_length"] = min_length_;
    max_depth_ = static_cast<int>(p.at("max_depth").get<int64_t>());
    max_args_ = static_cast<int>(p.at("max_args").get<int64_t>());
    sizes_ = {p.at("train_size").get<int64_t>(), p.at("valid_size").get<int64_t>(), p.at("test_size").get<int64_t>()};
    // The resolver checks ranges one parameter at a time; these constraints join several.
    if (min_length_ >= max_length_ - 1)
      throw ab::UsageError(fmt::format(
          "task 'listops': min_length = {} must be < max_length - 1 = {} (max_length = {}), so that some length "
          "fits strictly between them",
          min_length_, max_length_ - 1, max_length_));
    check_reachable();
    generate(seed);
  }

  ab::TaskKind kind() const override { return ab::TaskKind::classify; }
  int64_t vocab_size() const override { return kVocab; }
  int64_t num_classes() const override { return 10; }
  int64_t seq_len() const override { return max_length_; }

  ab::Example example(ab::Split s, int64_t index) const override {
    const int64_t tree = flat_index(checked_split(s, index), index);
    const uint8_t* b = tokens_.data() + offsets_[tree];
    const size_t n = offsets_[tree + 1] - offsets_[tree];
    ab::Example ex;
    ex.input.assign(b, b + n);
    ex.target = {labels_[tree]};
    ex.text.reserve(n * 3);
    for (size_t i = 0; i < n; ++i) {
      if (i) ex.text += ' ';
      const uint8_t t = b[i];
      if (t >= kDigit0 && t < kDigit0 + 10) ex.text += static_cast<char>('0' + (t - kDigit0));
      else if (t >= kOp0 && t < kOp0 + 4) ex.text += kOpNames[t - kOp0];
      else ex.text += ']';
    }
    return ex;
  }

  Json stats() const override {
    const int64_t kept = sizes_[0] + sizes_[1] + sizes_[2];
    return {{"draws", draws_}, {"trees", kept}, {"acceptance", static_cast<double>(kept) / static_cast<double>(draws_)}};
  }
  int64_t draws() const { return draws_; }
  int64_t min_length() const { return min_length_; }

 private:
  // Fail fast when max_depth and max_args cannot build a tree longer than min_length at all.
  void check_reachable() const {
    int64_t longest = 1;  // longest tree whose root is at depth d, built from d = max_depth upwards
    for (int d = max_depth_ - 1; d >= 1 && longest <= min_length_; --d) longest = 2 + max_args_ * longest;
    if (longest <= min_length_)
      throw ab::UsageError(fmt::format(
          "task 'listops': with max_depth = {} and max_args = {} no tree is longer than {} tokens, but min_length = "
          "{}; raise max_depth or max_args, or lower min_length",
          max_depth_, max_args_, longest, min_length_));
  }

  // One draw of the recursive sampler into buf_. Returns the node's value, or -1 once the tree
  // is certain to reach max_length (every open operator still owes a closing token).
  int node(int depth) {
    if (depth >= max_depth_ || rng_.uniform() > 0.25f) {
      const int v = static_cast<int>(below32(rng_, 10));
      buf_[pos_++] = static_cast<uint8_t>(kDigit0 + v);
      return pos_ + open_ >= max_length_ ? -1 : v;
    }
    const int n = 2 + static_cast<int>(below32(rng_, static_cast<uint32_t>(max_args_ - 1)));
    const int64_t slot = pos_++;  // the operator is drawn after its children, as in LRA
    ++open_;
    if (pos_ + open_ >= max_length_) return -1;
    std::array<int, 10> count{};  // digit counts: enough for min, max, median and sum
    for (int i = 0; i < n; ++i) {
      const int v = node(depth + 1);
      if (v < 0) return -1;
      ++count[v];
    }
    const int op = static_cast<int>(below32(rng_, 4));
    buf_[slot] = static_cast<uint8_t>(kOp0 + op);
    buf_[pos_++] = kClose;
    --open_;
    switch (op) {
      case 0: return static_cast<int>(std::find_if(count.begin(), count.end(), [](int c) { return c > 0; }) -
                                      count.begin());
      case 1: return 9 - static_cast<int>(std::find_if(count.rbegin(), count.rend(), [](int c) { return c > 0; }) -
                                          count.rbegin());
      case 2: {
        // numpy median, then int(): the middle value, or the truncated mean of the two middle ones.
        auto kth = [&](int k) {  // k-th smallest, 0-based
          int seen = 0;
          for (int d = 0; d < 10; ++d)
            if ((seen += count[d]) > k) return d;
          return 9;
        };
        return n % 2 ? kth(n / 2) : (kth(n / 2 - 1) + kth(n / 2)) / 2;
      }
      default: {
        int sum = 0;
        for (int d = 0; d < 10; ++d) sum += d * count[d];
        return sum % 10;
      }
    }
  }

  // Inserts buf_[0, pos_) if unseen; open addressing over tree indices, hash first, then bytes.
  bool insert_unique(uint64_t h) {
    const size_t mask = table_.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      const uint32_t e = table_[i];
      if (e == 0) {
        table_[i] = static_cast<uint32_t>(hashes_.size() + 1);
        return true;
      }
      const size_t t = e - 1;
      if (hashes_[t] == h && static_cast<int64_t>(offsets_[t + 1] - offsets_[t]) == pos_ &&
          std::memcmp(tokens_.data() + offsets_[t], buf_.data(), pos_) == 0)
        return false;
    }
  }

  void generate(uint64_t seed) {
    const int64_t needed = sizes_[0] + sizes_[1] + sizes_[2];
    table_.assign(std::bit_ceil(static_cast<size_t>(2 * needed)), 0);
    hashes_.reserve(needed);
    labels_.reserve(needed);
    offsets_.reserve(needed + 1);
    offsets_.push_back(0);
    buf_.assign(max_length_ + 1, 0);
    rng_ = ab::RngStream(seed, ab::Purpose::data, kListOpsStream);
    const int64_t budget = kMaxDrawsWithoutNew + kDrawsPerTreeBudget * needed;
    int64_t since_new = 0, in_window_since_new = 0;
    while (static_cast<int64_t>(labels_.size()) < needed) {
      pos_ = 0;
      open_ = 0;
      const int v = node(1);
      ++draws_;
      ++since_new;
      if (v >= 0 && pos_ > min_length_) {  // pos_ < max_length_ holds, or the draw would have stopped
        ++in_window_since_new;
        const uint64_t h = hash_tokens(buf_.data(), pos_);
        if (insert_unique(h)) {
          hashes_.push_back(h);
          labels_.push_back(static_cast<uint8_t>(v));
          tokens_.insert(tokens_.end(), buf_.begin(), buf_.begin() + pos_);
          offsets_.push_back(tokens_.size());
          since_new = in_window_since_new = 0;
          continue;
        }
      }
      if (since_new >= kMaxDrawsWithoutNew || draws_ >= budget)
        fail(needed, since_new >= kMaxDrawsWithoutNew, in_window_since_new);
    }
    table_ = {};  // only needed while generating
    hashes_ = {};
    buf_ = {};
  }

  [[noreturn]] void fail(int64_t needed, bool stalled, int64_t in_window_since_new) const {
    const std::string knobs = fmt::format("min_length = {}, max_length = {}, max_depth = {}, max_args = {}",
                                          min_length_, max_length_, max_depth_, max_args_);
    const int64_t found = static_cast<int64_t>(labels_.size());
    if (!stalled)
      throw ab::UsageError(fmt::format(
          "task 'listops': acceptance is too low: {} of {} trees after {} draws ({}); widen the length window "
          "(min_length is probably too close to max_length)",
          found, needed, draws_, knobs));
    if (in_window_since_new == 0)
      throw ab::UsageError(fmt::format(
          "task 'listops': {} of {} trees found, then {} draws in a row without a length strictly between "
          "min_length and max_length ({}); widen the window (lower min_length, raise max_length) or change "
          "max_depth/max_args",
          found, needed, kMaxDrawsWithoutNew, knobs));
    throw ab::UsageError(fmt::format(
        "task 'listops': only {} distinct trees found for train + valid + test = {}: the last {} trees in the length "
        "window were all repeats ({}); lower the split sizes or widen the window",
        found, needed, in_window_since_new, knobs));
  }

  int64_t max_length_ = 0, min_length_ = 0;
  int max_depth_ = 0, max_args_ = 0;
  // All trees back to back (train, valid, test); tree t is tokens_[offsets_[t], offsets_[t+1]).
  std::vector<uint8_t> tokens_;
  std::vector<uint64_t> offsets_;
  std::vector<uint8_t> labels_;
  int64_t draws_ = 0;
  // Generation state, released afterwards.
  ab::RngStream rng_{0, ab::Purpose::data};
  std::vector<uint8_t> buf_;
  int64_t pos_ = 0, open_ = 0;
  std::vector<uint32_t> table_;
  std::vector<uint64_t> hashes_;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(ListOps);
