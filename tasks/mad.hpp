#pragma once
// What the MAD synthetics (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
// Architectures", athms/mad-lab) share: their parameters and split sizes, token ids, the
// autoregressive shift of MAD's recall instances, and uniform draws of motifs.
//
// Token ids: every id is MAD's plus one, so that 0 stays the harness's padding id (never used: all
// examples of a task have one length); the model vocabulary is vocab_size + 1. Targets use MAD's
// ignore index -100 (= ab::kIgnoreLabel). MAD has no validation split (it validates on its test set);
// ours is a third stream generated like the test split. One Philox stream per example
// (seed, data, stream, split).child(index) instead of one numpy Generator walked through a whole
// dataset, so any example is generated on demand.
//
// MAD's sixth task, compression (tasks/mad_compression.cpp), runs on MAD's autoencoder backbone:
// model.pooling=last in harness/model (the encoder's last state, decoded at every position).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"

namespace ab::mad {

// The parameters every MAD task has, with MAD's baseline defaults (configs/tasks/*.yml; MADConfig:
// 1,280 test examples), then the task's own.
inline std::vector<ParamSpec> params(int64_t vocab, double vocab_min, int64_t seq_len, double seq_min,
                                     int64_t train_size, std::vector<ParamSpec> own) {
  std::vector<ParamSpec> p = {
      enum_param("preset", "mad", {"mad"}, "MAD's baseline setting (configs/tasks/*.yml); the only preset"),
      int_param("vocab_size", vocab, "MAD's vocab_size, special tokens included (the model sees vocab_size + 1 ids)",
                vocab_min, 1 << 20),
      int_param("seq_len", seq_len, "MAD's seq_len", seq_min, 1 << 20),
  };
  p.insert(p.end(), own.begin(), own.end());
  p.push_back(int_param("train_size", train_size, "training examples (MAD's num_train_examples)", 1, 1e10));
  p.push_back(int_param("valid_size", 1280, "validation examples, drawn like the test split (MAD has none)", 1, 1e10));
  p.push_back(int_param("test_size", 1280, "test examples (MAD's num_test_examples)", 1, 1e10));
  return p;
}

// A MAD task's spec: its name, summary and parameters under the reference every MAD task shares.
inline TaskSpec spec(std::string name, std::string summary, std::vector<ParamSpec> params) {
  return task_spec(std::move(name), std::move(summary),
                   "Poli et al. 2024, Mechanistic Design and Scaling of Hybrid Architectures (athms/mad-lab)",
                   std::move(params));
}

class Task : public SplitTask {
 public:
  TaskKind kind() const override { return TaskKind::per_position; }
  int64_t vocab_size() const override { return V_ + 1; }
  int64_t num_classes() const override { return V_ + 1; }

 protected:
  Task(const char* name, const Json& p, uint64_t seed, uint64_t stream) : SplitTask(name, p, seed), stream_(stream) {
    V_ = p.at("vocab_size").get<int64_t>();
    L_ = p.at("seq_len").get<int64_t>();
    sizes_ = {p.at("train_size").get<int64_t>(), p.at("valid_size").get<int64_t>(), p.at("test_size").get<int64_t>()};
  }

  // The example's random stream; k = the split's index.
  RngStream rng_of(Split s, int64_t index, int& k) const {
    k = checked_split(s, index);
    return split_stream(stream_, k).child(static_cast<uint64_t>(index));
  }

  [[noreturn]] void refuse(const std::string& why) const { throw UsageError(fmt::format("task '{}': {}", name_, why)); }

  int64_t V_ = 0, L_ = 0;
  uint64_t stream_;
};

// MAD's recall instances return (seq[:-1], seq[1:]) for training (next token everywhere) and
// (seq[:-1], targets[1:]) for testing; seq and targets in MAD ids, -100 = not scored.
inline Example shifted(const std::vector<int32_t>& seq, const std::vector<int32_t>& targets, bool training) {
  Example ex;
  ex.input.reserve(seq.size() - 1);
  ex.target.reserve(seq.size() - 1);
  for (size_t i = 0; i + 1 < seq.size(); ++i) {
    ex.input.push_back(seq[i] + 1);
    const int32_t t = training ? seq[i + 1] : targets[i + 1];
    ex.target.push_back(t == kIgnoreLabel ? kIgnoreLabel : t + 1);
  }
  return ex;
}

// A uniform ordered draw of `size` distinct tokens of [lo, lo + n) (partial Fisher-Yates): the
// distribution of MAD's rng.choice over the list of all permutations of that size.
inline std::vector<int32_t> motif(RngStream& rng, int32_t lo, int64_t n, int64_t size) {
  if (size * 4 <= n) {  // short motifs: redraw repeats (the same distribution, no O(n) pool)
    std::vector<int32_t> out;
    while (static_cast<int64_t>(out.size()) < size) {
      const auto t = static_cast<int32_t>(lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n))));
      if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
    }
    return out;
  }
  std::vector<int32_t> pool(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pool[i] = static_cast<int32_t>(lo + i);
  for (int64_t i = 0; i < size; ++i) std::swap(pool[i], pool[i + static_cast<int64_t>(rng.below(n - i))]);
  pool.resize(static_cast<size_t>(size));
  return pool;
}

// In-context recall, multi-query (MAD's generate_in_context_recall_instance with multi_query=True,
// the benchmark's setting), re-implemented from its description. With V' = vocab_size -
// noise_vocab_size: keys [0, V'/2), values [V'/2, V'), noise tokens [V', vocab_size). Per example:
//  1. one of the L/2 slots is forced to be a key-value pair (uniform over all L/2, as MAD draws it,
//     although only the first L/2 - 1 are context slots);
//  2. L/2 - 1 context slots: with probability frac_noise (never the forced slot) two uniform noise
//     tokens, else a uniform key and its value: the value it had earlier in the sequence, or a fresh
//     uniform value the first time;
//  3. a probe: a key uniform among the distinct keys presented, and its value (L tokens in all);
//  4. test targets: the value of every pair whose key appeared before, and the probe's value;
//     -100 elsewhere. Training targets: the next token everywhere. Input = seq[:-1]: L - 1 tokens.
// Where MAD's probe draw would fail (every context slot noise, possible only when the forced slot
// is the last one) it raises; we draw the example again from the continuing stream.
class Recall : public Task {
 public:
  Recall(const char* name, const Json& p, uint64_t seed, uint64_t stream, bool noisy) : Task(name, p, seed, stream) {
    noise_vocab_ = noisy ? p.at("noise_vocab_size").get<int64_t>() : 0;
    frac_noise_ = noisy ? p.at("frac_noise").get<double>() : 0.0;
    if (L_ % 2 != 0) refuse(fmt::format("seq_len = {} must be even (MAD's constraint); nearest valid value: {}", L_, L_ + 1));
    const int64_t ordinary = V_ - noise_vocab_;
    if (ordinary < 2)
      refuse(fmt::format("vocab_size = {} minus noise_vocab_size = {} leaves {} key and value tokens; at least 2 are "
                         "needed: raise vocab_size to {}", V_, noise_vocab_, ordinary, noise_vocab_ + 2));
    if (frac_noise_ > 0 && noise_vocab_ < 1)
      refuse("frac_noise > 0 needs noise_vocab_size >= 1 (MAD's assertion)");
    keys_ = ordinary / 2;
    values_ = ordinary - keys_;
  }

  int64_t seq_len() const override { return L_ - 1; }
  Json stats() const override {
    return {{"key_ids", {1, keys_}}, {"value_ids", {keys_ + 1, keys_ + values_}},
            {"noise_ids", {keys_ + values_ + 1, V_}}, {"mad_ids", "ours = MAD's + 1"}};
  }

  Example example(Split s, int64_t index) const override {
    int k = 0;
    RngStream rng = rng_of(s, index, k);
    std::vector<int32_t> seq, tgt;
    while (!generate(rng, seq, tgt)) {
    }
    return shifted(seq, tgt, k == 0);
  }

 private:
  bool generate(RngStream& rng, std::vector<int32_t>& seq, std::vector<int32_t>& tgt) const {
    seq.clear();
    tgt.clear();
    const int64_t slots = L_ / 2;
    const int64_t forced = static_cast<int64_t>(rng.below(static_cast<uint64_t>(slots)));
    const int32_t noise_lo = static_cast<int32_t>(keys_ + values_);
    std::vector<int32_t> value_of(static_cast<size_t>(keys_), -1);  // the key's value once drawn
    std::vector<int32_t> presented;                                 // distinct keys seen
    for (int64_t i = 0; i + 1 < slots; ++i) {
      const bool noise = i != forced && frac_noise_ > 0 && rng.uniform_double() < frac_noise_;
      if (noise) {
        for (int j = 0; j < 2; ++j) {
          seq.push_back(noise_lo + static_cast<int32_t>(rng.below(static_cast<uint64_t>(noise_vocab_))));
          tgt.push_back(kIgnoreLabel);
        }
        continue;
      }
      const int32_t key = static_cast<int32_t>(rng.below(static_cast<uint64_t>(keys_)));
      const bool seen = value_of[key] >= 0;
      if (!seen) {
        value_of[key] = static_cast<int32_t>(keys_ + rng.below(static_cast<uint64_t>(values_)));
        presented.push_back(key);
      }
      seq.push_back(key);
      seq.push_back(value_of[key]);
      tgt.push_back(kIgnoreLabel);
      tgt.push_back(seen ? value_of[key] : kIgnoreLabel);
    }
    if (presented.empty()) return false;
    const int32_t probe = presented[rng.below(presented.size())];
    seq.push_back(probe);
    seq.push_back(value_of[probe]);
    tgt.push_back(kIgnoreLabel);
    tgt.push_back(value_of[probe]);
    return true;
  }

  int64_t noise_vocab_ = 0, keys_ = 0, values_ = 0;
  double frac_noise_ = 0;
};

}  // namespace ab::mad
