#include "attnbench/rng.hpp"

#include <cmath>

namespace ab {
namespace {

inline uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Philox-4x32-10 (Salmon et al., SC'11): counter (c0..c3) and key (k0, k1) -> 4 random words.
inline void philox(uint32_t c[4], uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(M1) * c[2];
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[1] = static_cast<uint32_t>(p1);
    c[3] = static_cast<uint32_t>(p0);
    c[0] = n0;
    c[2] = n2;
    k0 += W0;
    k1 += W1;
  }
}

}  // namespace

RngStream::RngStream(uint64_t seed, Purpose purpose, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = mix64(seed ^ 0x6174746E62656E63ull);
  h = mix64(h ^ static_cast<uint64_t>(purpose));
  h = mix64(h ^ a);
  h = mix64(h ^ (b * 0x9E3779B97F4A7C15ull));
  h = mix64(h ^ (c * 0xC2B2AE3D27D4EB4Full));
  key_hi_ = h;
  key_lo_ = mix64(h ^ 0x5DEECE66Dull);
}

RngStream RngStream::child(uint64_t index) const {
  RngStream s = *this;
  s.key_hi_ = mix64(key_hi_ ^ mix64(index + 0x632BE59BD9B4E019ull));
  s.key_lo_ = mix64(key_lo_ ^ s.key_hi_);
  s.counter_ = 0;
  s.buf_left_ = 0;
  return s;
}

void RngStream::block(uint64_t block, uint32_t out[4]) const {
  out[0] = static_cast<uint32_t>(block);
  out[1] = static_cast<uint32_t>(block >> 32);
  out[2] = static_cast<uint32_t>(key_lo_);
  out[3] = static_cast<uint32_t>(key_lo_ >> 32);
  philox(out, static_cast<uint32_t>(key_hi_), static_cast<uint32_t>(key_hi_ >> 32));
}

uint32_t RngStream::at(uint64_t i) const {
  uint32_t c[4];
  block(i >> 2, c);
  return c[i & 3];
}

uint32_t RngStream::next_u32() {
  if (buf_left_ == 0) {
    uint32_t c[4] = {static_cast<uint32_t>(counter_), static_cast<uint32_t>(counter_ >> 32),
                     static_cast<uint32_t>(key_lo_), static_cast<uint32_t>(key_lo_ >> 32)};
    philox(c, static_cast<uint32_t>(key_hi_), static_cast<uint32_t>(key_hi_ >> 32));
    for (int j = 0; j < 4; ++j) buf_[j] = c[j];
    ++counter_;
    buf_left_ = 4;
  }
  return buf_[4 - buf_left_--];
}

uint64_t RngStream::next_u64() {
  const uint64_t hi = next_u32();
  return (hi << 32) | next_u32();
}

float RngStream::uniform() { return static_cast<float>(next_u32() >> 8) * 0x1.0p-24f; }

double RngStream::uniform_double() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

uint64_t RngStream::below(uint64_t n) {
  if (n <= 1) return 0;
  // Lemire's multiply-shift with rejection: unbiased and exact in integers.
  for (;;) {
    const uint64_t x = next_u64();
    const unsigned __int128 m = static_cast<unsigned __int128>(x) * n;
    const uint64_t low = static_cast<uint64_t>(m);
    if (low >= n || low >= (0 - n) % n) return static_cast<uint64_t>(m >> 64);
  }
}

int64_t RngStream::range(int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
}

float RngStream::normal() {
  // Box-Muller in double; u1 in (0, 1] so the log is finite.
  const double u1 = 1.0 - uniform_double();
  const double u2 = uniform_double();
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace ab
