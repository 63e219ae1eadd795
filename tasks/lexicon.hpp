#pragma once
// The pseudo-language of the byte-level text tasks (text, retrieval): syllable words, and a lexicon
// of common words with Zipf frequencies drawn from one fixed stream, the same for every seed (a
// fixed "language", like IMDb's English), so both tasks speak it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "attnbench/rng.hpp"

namespace ab::lexicon {

constexpr uint64_t kLexiconKey = 0x4C657869636F6Eull;  // "Lexicon"
constexpr int kSize = 5000;
constexpr double kZipf = 1.1;

// A word of `syllables` consonant-vowel syllables, each closed by a consonant one time in three.
inline std::string syllable_word(RngStream& rng, int syllables) {
  static constexpr const char* kCons = "bcdfghjklmnprstvwz";
  static constexpr const char* kVow = "aeiou";
  std::string w;
  for (int i = 0; i < syllables; ++i) {
    w += kCons[rng.below(18)];
    w += kVow[rng.below(5)];
    if (rng.below(3) == 0) w += kCons[rng.below(18)];
  }
  return w;
}

// The kSize common words (1-3 syllables, cut to 6 letters), in rank order (frequent first); words
// already in `seen` are skipped, and every word drawn is added to it.
inline std::vector<std::string> common_words(std::set<std::string>& seen) {
  RngStream rng(0, Purpose::data, kLexiconKey);
  std::vector<std::string> words;
  while (static_cast<int>(words.size()) < kSize) {
    std::string w = syllable_word(rng, 1 + static_cast<int>(rng.below(3)));
    if (w.size() > 6) w.resize(6);
    if (seen.insert(w).second) words.push_back(w);
  }
  return words;
}

// The Zipf CDF over the kSize ranks: rank^-kZipf, normalised.
inline std::vector<double> zipf_cdf() {
  std::vector<double> cdf(kSize);
  double acc = 0;
  for (int r = 0; r < kSize; ++r) cdf[r] = (acc += std::pow(r + 1.0, -kZipf));
  for (auto& c : cdf) c /= acc;
  return cdf;
}

// A rank drawn with Zipf frequencies (cdf from zipf_cdf()).
inline int32_t zipf_rank(const std::vector<double>& cdf, RngStream& rng) {
  const double u = rng.uniform_double();
  return static_cast<int32_t>(std::min<ptrdiff_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin(), kSize - 1));
}

}  // namespace ab::lexicon
