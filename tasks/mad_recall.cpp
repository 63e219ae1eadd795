// MAD in-context recall (Poli et al. 2024, athms/mad-lab `in-context-recall`, multi-query): a
// sequence of key-value pairs drawn from a per-sequence map; at every repeated key the model must
// emit its value. The generator and the id conventions are in mad.hpp (ab::mad::Recall).
// Baseline (configs/tasks/in-context-recall.yml): vocab 16, seq_len 128, 12,800 training examples;
// MAD's changes: vocab {32, 64, 128}, seq_len {256, 512, 1024}, train {6400, 3200, 1600, 800}.
#include "mad.hpp"

namespace {

constexpr uint64_t kStream = 0x4D41444352ull;  // "MADCR"

class MadRecall : public ab::mad::Recall {
 public:
  static ab::TaskSpec spec() {
    return ab::mad::spec("mad_recall",
                         "MAD in-context recall: key-value pairs, emit the value of every repeated key (per position)",
                         ab::mad::params(16, 2, 128, 4, 12800, {}));
  }
  MadRecall(const ab::Json& p, uint64_t seed) : Recall("mad_recall", p, seed, kStream, false) {}
};

}  // namespace

ATTNBENCH_REGISTER_TASK(MadRecall);
