// MQAR, multi-query associative recall (Arora, Eyuboglu et al. 2023, "Zoology"): K key-value pairs,
// then the keys again in a query region; at each repeated key the model must emit its value.
//
// The generator is Zoology's `zoology/data/multiquery_ar.py` re-implemented from its description
// (tasks.md §10.1), per example:
//  1. keys: K distinct ids drawn uniformly from {1, ..., V/2 - 1}; values: K distinct ids from
//     {V/2, ..., V - 1}, independently;
//  2. context C = k1 v1 k2 v2 ... kK vK, repeated num_passes (P) times (length 2KP);
//  3. query region of L - 2KP + 1 slots; space = (L - 2KP) / 2 candidate gaps with weights
//     a * (s + 1)^(a - 1), s = 0 .. space - 1; K distinct gaps g_i are drawn with numpy's
//     weighted-choice-without-replacement algorithm (batches of draws from the renormalised CDF,
//     repeats dropped, drawn gaps zeroed, until K are found); key k_i goes to region offset 2 g_i;
//     every other region position is 0;
//  4. input = the first L tokens of C ++ region; target = -100 except at input index 2KP + 2 g_i,
//     which holds v_i (the model emits the value at the position of the repeated key);
//  5. with random_non_queries every 0 of the input becomes a uniform id in [0, V) (possibly 0).
// Token ids are Zoology's own (0..V-1). Id 0 is Zoology's no-op filler and also the harness's pad id:
// with model.padding_mask=true fillers are masked as keys, which loses nothing (they carry no
// information); set model.padding_mask=false to feed them like Zoology does.
//
// Differences from Zoology, deliberate: one Philox stream per example (seed, data, kMqarStream,
// split).child(index) instead of numpy's global Mersenne Twister, so any example is generated on
// demand; splits are separate streams (Zoology: train seeds in [0, 2^31), test in [2^31, 2^32));
// there is a validation split (Zoology validates on its test set).
#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/rng.hpp"
#include "attnbench/task_helpers.hpp"
#include "preset_sizes.hpp"

namespace {

using ab::Json;

constexpr uint64_t kMqarStream = 0x4D514152ull;  // "MQAR"
constexpr ab::preset_sizes::Sizes kSizes = {{100000, 1000, 1000}, {100000, 3000, 3000}};

class Mqar : public ab::preset_sizes::Task {
 public:
  static ab::TaskSpec spec() {
    using ab::null_int_param;
    ab::TaskSpec s = ab::task_spec(
        "mqar", "Zoology MQAR: K key-value pairs, then each key queried once; emit the value (per position)",
        "Arora, Eyuboglu et al. 2023, Zoology: Measuring and Improving Recall in Efficient Language Models",
        ab::preset_sizes::after(
            {
                ab::enum_param(
                    "preset", "small", {"small", "paper"},
                    "defaults of the null parameters: small = Zoology's basic example (V 256, L 64, K 4, "
                    "random fillers, 100,000 / 1,000 / 1,000 examples); paper = the Figure-2 cell (V 8192, L 64, "
                    "K 4, zero fillers, 100,000 / 3,000 / 3,000)"),
                null_int_param("seq_len", "input length L, even, < vocab_size; null = 64", 4, 1 << 20),
                null_int_param("num_kv_pairs", "key-value pairs K; 2*K*num_passes + 2*K <= seq_len; null = 4", 1,
                               1 << 19),
                null_int_param("vocab_size",
                               "V: keys from [1, V/2), values from [V/2, V); null = 256 (small) / 8192 (paper)", 4,
                               1 << 24),
                ab::num_param("power_a", 0.01, "power-law exponent a of the query gaps (1 = uniform; Zoology: 0.01)",
                              1e-6, 1.0),
                ab::int_param("num_passes", 1, "repetitions of the key-value context (JRT; Zoology: 1)", 1, 64),
                ab::null_bool_param(
                    "random_non_queries",
                    "replace the 0 fillers of the input by uniform ids in [0, V) (Zoology default true; "
                    "Figure-2 config false); null = true (small) / false (paper)"),
            },
            "examples", kSizes, "paper"));
    // The field trains these probes without dropout (Zoology, safari), not with LRA's 0.1.
    s.defaults = {{"model", {{"dropout", 0.0}}}};
    return s;
  }

  Mqar(const Json& p, uint64_t seed) : Task("mqar", p, seed, "paper") {
    L_ = preset_default("seq_len", 64, 64).get<int64_t>();
    K_ = preset_default("num_kv_pairs", 4, 4).get<int64_t>();
    V_ = preset_default("vocab_size", 256, 8192).get<int64_t>();
    random_non_queries_ = preset_default("random_non_queries", true, false).get<bool>();
    resolve_sizes(kSizes);
    a_ = p.at("power_a").get<double>();
    P_ = p.at("num_passes").get<int64_t>();
    if (L_ % 2 != 0)
      throw ab::UsageError(fmt::format("task 'mqar': seq_len = {} must be even (Zoology's constraint); nearest valid "
                                       "value: {}",
                                       L_, L_ + 1));
    if (V_ <= L_)
      throw ab::UsageError(fmt::format("task 'mqar': vocab_size = {} must be > seq_len = {} (Zoology's constraint)",
                                       V_, L_));
    if (2 * K_ * P_ + 2 * K_ > L_)
      throw ab::UsageError(fmt::format(
          "task 'mqar': 2*num_kv_pairs*num_passes + 2*num_kv_pairs = {} must be <= seq_len = {} (K = {}, passes = "
          "{}); lower num_kv_pairs (at most {}) or raise seq_len",
          2 * K_ * P_ + 2 * K_, L_, K_, P_, L_ / (2 * P_ + 2)));
    if (K_ > V_ / 2 - 1)
      throw ab::UsageError(fmt::format("task 'mqar': num_kv_pairs = {} exceeds the {} distinct keys in [1, {})", K_,
                                       V_ / 2 - 1, V_ / 2));
    space_ = (L_ - 2 * K_ * P_) / 2;
    weights_.resize(static_cast<size_t>(space_));
    for (int64_t s = 0; s < space_; ++s) weights_[s] = a_ * std::pow(static_cast<double>(s + 1), a_ - 1.0);
  }

  ab::TaskKind kind() const override { return ab::TaskKind::per_position; }
  int64_t vocab_size() const override { return V_; }
  int64_t num_classes() const override { return V_; }
  int64_t seq_len() const override { return L_; }
  Json stats() const override {
    // Floors: a uniform guess among the V - V/2 value ids, and a model that knows the K values in the
    // context but not which key each belongs to (Zoology's gated convolutions at small width sit here).
    return {{"query_space", space_}, {"context_length", 2 * K_ * P_}, {"scored_per_example", K_},
            {"chance_accuracy", 1.0 / static_cast<double>(V_ - V_ / 2)},
            {"context_floor_accuracy", 1.0 / static_cast<double>(K_)}};
  }

  ab::Example example(ab::Split s, int64_t index) const override {
    const int k = checked_split(s, index);
    ab::RngStream rng = split_stream(kMqarStream, k).child(static_cast<uint64_t>(index));
    const int64_t half = V_ / 2;
    const std::vector<int32_t> keys = distinct(rng, 1, half, K_);    // from [1, V/2)
    const std::vector<int32_t> values = distinct(rng, half, V_, K_);  // from [V/2, V)
    const std::vector<int64_t> gaps = weighted_gaps(rng);
    ab::Example ex;
    ex.input.assign(static_cast<size_t>(L_), 0);
    ex.target.assign(static_cast<size_t>(L_), ab::kIgnoreLabel);
    const int64_t context = 2 * K_ * P_;
    for (int64_t pass = 0; pass < P_; ++pass)
      for (int64_t i = 0; i < K_; ++i) {
        ex.input[pass * 2 * K_ + 2 * i] = keys[i];
        ex.input[pass * 2 * K_ + 2 * i + 1] = values[i];
      }
    for (int64_t i = 0; i < K_; ++i) {
      const int64_t pos = context + 2 * gaps[i];
      ex.input[pos] = keys[i];
      ex.target[pos] = values[i];
    }
    if (random_non_queries_)
      for (auto& t : ex.input)
        if (t == 0) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V_)));
    return ex;
  }

 private:
  // n distinct ids uniformly from [lo, hi) (a partial Fisher-Yates shuffle: numpy's
  // choice(replace=False) without weights draws the same distribution).
  static std::vector<int32_t> distinct(ab::RngStream& rng, int64_t lo, int64_t hi, int64_t n) {
    const int64_t m = hi - lo;
    std::vector<int32_t> pool(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) pool[i] = static_cast<int32_t>(lo + i);
    for (int64_t i = 0; i < n; ++i) std::swap(pool[i], pool[i + static_cast<int64_t>(rng.below(m - i))]);
    pool.resize(static_cast<size_t>(n));
    return pool;
  }

  // numpy's legacy choice(space, K, replace=False, p=w): draw the missing count from the CDF of the
  // remaining weights, keep the first occurrence of each new index in draw order, zero the weights
  // of those found, repeat until K distinct gaps are found.
  std::vector<int64_t> weighted_gaps(ab::RngStream& rng) const {
    std::vector<double> w = weights_, cdf(w.size());
    std::vector<int64_t> found;
    std::vector<char> taken(w.size(), 0);
    while (static_cast<int64_t>(found.size()) < K_) {
      const int64_t missing = K_ - static_cast<int64_t>(found.size());
      std::vector<double> xs(static_cast<size_t>(missing));
      for (auto& x : xs) x = rng.uniform_double();
      for (int64_t g : found) w[g] = 0.0;
      double acc = 0;
      for (size_t j = 0; j < w.size(); ++j) cdf[j] = (acc += w[j]);
      for (auto& c : cdf) c /= acc;
      for (double x : xs) {
        // searchsorted(side='right'): the first j with cdf[j] > x
        const int64_t j = std::min<int64_t>(std::upper_bound(cdf.begin(), cdf.end(), x) - cdf.begin(),
                                            static_cast<int64_t>(cdf.size()) - 1);
        if (!taken[j] && static_cast<int64_t>(found.size()) < K_) {
          taken[j] = 1;
          found.push_back(j);
        }
      }
    }
    return found;
  }

  int64_t L_ = 0, K_ = 0, V_ = 0, P_ = 1, space_ = 0;
  double a_ = 0.01;
  bool random_non_queries_ = true;
  std::vector<double> weights_;
};

}  // namespace

ATTNBENCH_REGISTER_TASK(Mqar);
