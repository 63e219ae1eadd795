#pragma once
// One counter-based generator (Philox-4x32-10) for everything random: data, initialisation,
// dropout, stochastic mixers. A stream is keyed by (seed, purpose, a, b, c), e.g.
// (seed, Purpose::dropout, step, layer, head), so a draw depends only on its key and its index:
// identical on every platform and thread count, and replayable by a backward pass.
// Only integer arithmetic produces the bits; floats are made from them by exact scaling.
#include <cstdint>

namespace ab {

enum class Purpose : uint32_t { data = 1, init = 2, dropout = 3, mixer = 4, batch = 5, check = 6 };

class RngStream {
 public:
  RngStream(uint64_t seed, Purpose purpose, uint64_t a = 0, uint64_t b = 0, uint64_t c = 0);
  // A child stream for a sub-purpose, e.g. one example of a split.
  RngStream child(uint64_t index) const;

  uint32_t next_u32();
  uint64_t next_u64();
  float uniform();                         // [0, 1), 24 random bits
  double uniform_double();                 // [0, 1), 53 random bits
  uint64_t below(uint64_t n);              // uniform in [0, n), unbiased
  int64_t range(int64_t lo, int64_t hi);   // uniform in [lo, hi] inclusive
  float normal();                          // N(0, 1) by Box-Muller

  // Stateless access: the i-th 32-bit word of this stream (used by parallel kernels).
  uint32_t at(uint64_t i) const;
  // Words 4*block .. 4*block+3 of this stream at once (one Philox evaluation).
  void block(uint64_t block, uint32_t out[4]) const;
  float uniform_at(uint64_t i) const { return static_cast<float>(at(i) >> 8) * 0x1.0p-24f; }

 private:
  uint64_t key_hi_, key_lo_;  // 128-bit stream key (hashed from the tuple)
  uint64_t counter_ = 0;
  uint32_t buf_[4] = {0, 0, 0, 0};
  int buf_left_ = 0;
};

}  // namespace ab
