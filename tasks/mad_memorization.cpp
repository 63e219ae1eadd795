// MAD memorization (athms/mad-lab `memorization`): one fixed key -> value map, the same in every
// split, learned in the weights; each sequence lists keys, each followed by an insert token at
// which the model must emit the key's value. Baseline (configs/tasks/memorization.yml): vocab 256,
// seq_len 32, 256 training examples; MAD's changes: vocab {512, 1024, 2048, 4096, 8192}.
//
// MAD's generate_kv_map + generate_memorization_instance re-implemented from their description, in
// MAD ids (insert = V - 1; with V' = V - 1 keys [0, V'/2), values [V'/2, V')):
//  1. the map: key i is paired with the i-th value of a random permutation of the values (MAD zips
//     a shuffled key list with a shuffled value list: |keys| = V'/2 pairs, a random injection);
//  2. per example L/2 pairs: a key uniform over the map's keys, then the insert token;
//  3. targets (training and test alike): the key's value at each insert position, -100 at keys.
// Deliberate difference: MAD seeds its map with the run's seed (12,345 for every run); ours is a
// function of the task seed alone (stream (seed, data, kStream, kMapSplit)), never of the split,
// so training and test share it.
#include "mad.hpp"

namespace {

using ab::Json;

constexpr uint64_t kStream = 0x4D41444D45ull;  // "MADME"
constexpr int kMapSplit = 7;                     // the map's stream: not one of the splits 0, 1, 2

class MadMemorization : public ab::mad::Task {
 public:
  static ab::TaskSpec spec() {
    return ab::mad::spec(
        "mad_memorization",
        "MAD memorization: keys, each followed by an insert token; emit the key's value under one fixed map",
        ab::mad::params(256, 4, 32, 2, 256, {}));
  }

  MadMemorization(const Json& p, uint64_t seed) : Task("mad_memorization", p, seed, kStream) {
    keys_ = (V_ - 1) / 2;
    ab::RngStream rng = split_stream(kStream, kMapSplit);
    const std::vector<int32_t> values = ab::mad::motif(rng, static_cast<int32_t>(keys_), (V_ - 1) - keys_, keys_);
    value_of_ = values;
  }

  int64_t seq_len() const override { return L_ / 2 * 2; }
  Json stats() const override {
    return {{"key_ids", {1, keys_}}, {"value_ids", {keys_ + 1, V_ - 1}}, {"insert_id", V_},
            {"mad_ids", "ours = MAD's + 1"}, {"map_pairs", keys_}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    int k = 0;
    ab::RngStream rng = rng_of(s, index, k);
    ab::Example ex;
    for (int64_t i = 0; i < L_ / 2; ++i) {
      const auto key = static_cast<size_t>(rng.below(static_cast<uint64_t>(keys_)));
      ex.input.push_back(static_cast<int32_t>(key) + 1);
      ex.input.push_back(static_cast<int32_t>(V_ - 1) + 1);
      ex.target.push_back(ab::kIgnoreLabel);
      ex.target.push_back(value_of_[key] + 1);
    }
    return ex;
  }

 private:
  int64_t keys_ = 0;
  std::vector<int32_t> value_of_;  // MAD ids, by key
};

}  // namespace

ATTNBENCH_REGISTER_TASK(MadMemorization);
