// MAD noisy in-context recall (athms/mad-lab `noisy-in-context-recall`): in-context recall whose
// context slots are, with probability frac_noise, two tokens of a separate noise vocabulary carved
// off the top of vocab_size. The generator and the id conventions are in mad.hpp (ab::mad::Recall).
// Baseline (configs/tasks/noisy-in-context-recall.yml): vocab 32 of which 16 noise, seq_len 128,
// frac_noise 0.2, 12,800 training examples; MAD's changes: vocab {48, 80, 144} (16 of them noise),
// seq_len {256, 512, 1024}, train {6400, 3200, 1600, 800}, frac_noise {0.4, 0.6, 0.8}.
#include "mad.hpp"

namespace {

constexpr uint64_t kStream = 0x4D41444E52ull;  // "MADNR"

class MadNoisyRecall : public ab::mad::Recall {
 public:
  static ab::TaskSpec spec() {
    return ab::mad::spec(
        "mad_noisy_recall",
        "MAD noisy in-context recall: key-value pairs among noise tokens, emit the value of every repeated key",
        ab::mad::params(
            32, 3, 128, 4, 12800,
            {ab::int_param("noise_vocab_size", 16, "noise tokens, the top ids of vocab_size (MAD: 16)", 0, 1 << 20),
             ab::num_param("frac_noise", 0.2, "probability that a context slot is two noise tokens (MAD: 0.2)", 0.0,
                           0.999)}));
  }
  MadNoisyRecall(const ab::Json& p, uint64_t seed) : Recall("mad_noisy_recall", p, seed, kStream, true) {}
};

}  // namespace

ATTNBENCH_REGISTER_TASK(MadNoisyRecall);
