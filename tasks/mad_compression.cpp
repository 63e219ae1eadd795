// MAD compression (athms/mad-lab `compression`): a random sequence ending in a compression token;
// the model must reconstruct the whole sequence from its state at that last position. Baseline
// (configs/tasks/compression.yml): vocab 16, seq_len 32, 12,800 training examples; MAD's changes:
// vocab {32, 64, 128}, seq_len {64, 128, 256}, train {6400, 3200, 1600, 800}.
//
// MAD's generate_compression_instance re-implemented from its description, in MAD ids: L - 1
// tokens uniform (with replacement) over [0, V - 1), then the compression token V - 1; the targets
// are the inputs themselves at every position, the compression token included, training and test
// alike. MAD's noise options (noise_vocab_size, frac_noise; 0 in every MAD setting, and its
// generator returns the inputs as targets even then) are not offered.
//
// On a per-position model that target is a copy of each position's own input, so the task is
// meant for MAD's autoencoder: its TaskSpec defaults set model.pooling=last (harness/model: the
// encoder's last state alone, decoded at every position by a small MLP); a run that sets another
// pooling trains a copy task, and the run file shows the setting.
#include "mad.hpp"

namespace {

constexpr uint64_t kStream = 0x4D414443ull;  // "MADC"

class MadCompression : public ab::mad::Task {
 public:
  static ab::TaskSpec spec() {
    ab::TaskSpec s = ab::mad::spec(
        "mad_compression",
        "MAD compression: reconstruct a random sequence from the encoder's state at its last position "
        "(MAD's autoencoder: model.pooling=last)",
        ab::mad::params(16, 2, 32, 2, 12800, {}));
    s.defaults = {{"model", {{"pooling", "last"}}}};
    return s;
  }

  MadCompression(const ab::Json& p, uint64_t seed) : Task("mad_compression", p, seed, kStream) {}

  int64_t seq_len() const override { return L_; }
  ab::Json stats() const override {
    return {{"content_ids", {1, V_ - 1}}, {"compression_id", V_}, {"mad_ids", "ours = MAD's + 1"}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    int k = 0;
    ab::RngStream rng = rng_of(s, index, k);
    ab::Example ex;
    ex.input.reserve(static_cast<size_t>(L_));
    for (int64_t i = 0; i + 1 < L_; ++i)
      ex.input.push_back(1 + static_cast<int32_t>(rng.below(static_cast<uint64_t>(V_ - 1))));
    ex.input.push_back(static_cast<int32_t>(V_));  // MAD's compression token V - 1, plus one
    ex.target = ex.input;
    return ex;
  }
};

}  // namespace

ATTNBENCH_REGISTER_TASK(MadCompression);
