// MAD fuzzy in-context recall (athms/mad-lab `fuzzy-in-context-recall`, multi-query): keys and
// values are motifs of several tokens; at every repeated key motif the model must emit its value
// motif. Baseline (configs/tasks/fuzzy-in-context-recall.yml): vocab 16, seq_len 128, key and value
// motifs of up to 3 tokens, 12,800 training examples; MAD's changes: vocab {32, 64, 128}, seq_len
// {256, 512, 1024}, train {6400, 3200, 1600, 800}.
//
// MAD's generate_fuzzy_in_context_recall_instance (multi_query=True, no noise, as the benchmark
// runs it) re-implemented from its description, in MAD ids: pad = V - 1; with V' = V - 1 key tokens
// [0, V'/2), value tokens [V'/2, V'). A key motif is a uniform ordered draw of distinct key tokens,
// a value motif likewise (MAD picks uniformly from the list of all permutations of that size).
// Key sizes are uniform in 1..k_motif_size for training, always k_motif_size for testing; value
// sizes uniform in 1..v_motif_size. Per example:
//  1. a probe (k, v) of such sizes, and a position probe_idx uniform in [0, L - 2 |k v|);
//  2. while the sequence is shorter than L - |probe| - (k_motif_size + v_motif_size): draw a key
//     size and a value size; if the length has reached probe_idx and the probe is not in yet,
//     insert the probe; otherwise a key motif, then the probe's value if it is the probe's key, the
//     value it had before, or a fresh value motif; targets: the value's tokens if the key appeared
//     before, -100 on the key and on first values;
//  3. the probe again at the end, its value scored; left-padded with the pad token to L + 1;
//  4. input = seq[:-1] (L tokens); test targets = targets[1:], training targets = seq[1:] (pads
//     and all).
// As in MAD, the loop can end before probe_idx is reached; then the final probe asks for a key that
// never appeared (rare; the checker in tests/tasks/test_mad.cpp counts it).
#include <map>

#include "mad.hpp"

namespace {

using ab::Json;

constexpr uint64_t kStream = 0x4D41444652ull;  // "MADFR"

class MadFuzzyRecall : public ab::mad::Task {
 public:
  static ab::TaskSpec spec() {
    return ab::mad::spec(
        "mad_fuzzy_recall",
        "MAD fuzzy in-context recall: key and value motifs of several tokens, emit the value of every repeated key",
        ab::mad::params(16, 5, 128, 4, 12800,
                        {ab::int_param("k_motif_size", 3, "longest key motif in tokens (MAD: 3)", 1, 64),
                         ab::int_param("v_motif_size", 3, "longest value motif in tokens (MAD: 3)", 1, 64)}));
  }

  MadFuzzyRecall(const Json& p, uint64_t seed) : Task("mad_fuzzy_recall", p, seed, kStream) {
    km_ = p.at("k_motif_size").get<int64_t>();
    vm_ = p.at("v_motif_size").get<int64_t>();
    keys_ = (V_ - 1) / 2;
    values_ = (V_ - 1) - keys_;
    if (km_ > keys_ || vm_ > values_)
      refuse(fmt::format("vocab_size = {} gives {} key and {} value tokens, too few for motifs of {} distinct key and {} "
                         "distinct value tokens; raise vocab_size to {} or lower the motif sizes",
                         V_, keys_, values_, km_, vm_, 2 * std::max(km_, vm_) + 1));
    if (L_ <= 2 * (km_ + vm_))
      refuse(fmt::format("seq_len = {} must be > 2 * (k_motif_size + v_motif_size) = {} (room for the probe twice); "
                         "nearest valid value: {}", L_, 2 * (km_ + vm_), 2 * (km_ + vm_) + 1));
  }

  int64_t seq_len() const override { return L_; }
  Json stats() const override {
    return {{"key_ids", {1, keys_}}, {"value_ids", {keys_ + 1, keys_ + values_}}, {"pad_id", V_},
            {"mad_ids", "ours = MAD's + 1"}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    int k = 0;
    ab::RngStream rng = rng_of(s, index, k);
    const bool training = k == 0;
    using Motif = std::vector<int32_t>;
    auto key_size = [&] { return training ? 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(km_))) : km_; };
    auto value_size = [&] { return 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(vm_))); };
    auto key_motif = [&](int64_t n) { return ab::mad::motif(rng, 0, keys_, n); };
    auto value_motif = [&](int64_t n) { return ab::mad::motif(rng, static_cast<int32_t>(keys_), values_, n); };
    const int64_t kps = key_size(), vps = value_size();
    const Motif k_probe = key_motif(kps), v_probe = value_motif(vps);
    const int64_t probe_len = kps + vps;
    const int64_t probe_idx = static_cast<int64_t>(rng.below(static_cast<uint64_t>(L_ - 2 * probe_len)));
    bool probe_added = false;
    std::map<Motif, Motif> value_of;  // key motif -> value motif
    std::vector<int32_t> seq, tgt;
    auto append = [](std::vector<int32_t>& dst, const Motif& m) { dst.insert(dst.end(), m.begin(), m.end()); };
    auto ignore = [&](int64_t n) { tgt.insert(tgt.end(), static_cast<size_t>(n), ab::kIgnoreLabel); };
    while (static_cast<int64_t>(seq.size()) < L_ - probe_len - (km_ + vm_)) {
      const int64_t ks = key_size(), vs = value_size();
      if (static_cast<int64_t>(seq.size()) >= probe_idx && !probe_added) {
        append(seq, k_probe);
        append(seq, v_probe);
        ignore(probe_len);
        value_of[k_probe] = v_probe;
        probe_added = true;
        continue;
      }
      const Motif key = key_motif(ks);
      Motif value;
      const auto it = value_of.find(key);
      const bool seen = it != value_of.end();
      if (key == k_probe) {
        value = v_probe;
        probe_added = true;
      } else {
        value = seen ? it->second : value_motif(vs);
      }
      value_of[key] = value;
      append(seq, key);
      append(seq, value);
      ignore(ks);
      if (seen) append(tgt, value);
      else ignore(static_cast<int64_t>(value.size()));
    }
    append(seq, k_probe);
    append(seq, v_probe);
    ignore(kps);
    append(tgt, v_probe);
    const size_t pad = static_cast<size_t>(L_ + 1) - seq.size();  // > 0: the loop stops short of it
    seq.insert(seq.begin(), pad, static_cast<int32_t>(V_ - 1));
    tgt.insert(tgt.begin(), pad, ab::kIgnoreLabel);
    return ab::mad::shifted(seq, tgt, training);
  }

 private:
  int64_t km_ = 3, vm_ = 3, keys_ = 0, values_ = 0;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(MadFuzzyRecall);
