// The MAD synthetics, each checked by code written separately from its generator: targets and
// structure are re-derived from the token sequence alone (ids are MAD's + 1; -100 = not scored),
// following athms/mad-lab's mad/data/instances.py as described in protocols.md §3.1. Determinism
// and parameter errors are covered with every task in test_tasks.cpp (task_cases()).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "attnbench/ops.hpp"
#include "attnbench/params.hpp"
#include "attnbench/task.hpp"
#include "support/task_fixtures.hpp"

using namespace ab;

namespace {

constexpr Split kSplits[] = {Split::train, Split::valid, Split::test};

using test::make_task;
using test::usage_error;

// Training examples are next-token LM targets: target[j] = input[j + 1].
void expect_next_token(const Example& ex, const std::string& what) {
  ASSERT_EQ(ex.input.size(), ex.target.size()) << what;
  for (size_t j = 0; j + 1 < ex.input.size(); ++j) ASSERT_EQ(ex.target[j], ex.input[j + 1]) << what << " at " << j;
}

// ---------------------------------------------------------------------------------------------
// In-context recall and noisy recall: pairs (key, value) or (noise, noise), then a probe pair.

struct RecallIds {
  int32_t V, noise;  // MAD vocab_size and noise_vocab_size
  int32_t keys() const { return (V - noise) / 2; }
  bool is_key(int32_t t) const { return t >= 1 && t <= keys(); }
  bool is_value(int32_t t) const { return t > keys() && t <= V - noise; }
  bool is_noise(int32_t t) const { return t > V - noise && t <= V; }
};

// Checks one example; `full` is the whole sequence (the input plus the last target, which is always
// the probe's value). Returns the number of noise slots; fails the test on any disagreement.
int check_recall(const Example& ex, const RecallIds& ids, int64_t L, bool training, const std::string& what) {
  EXPECT_EQ(static_cast<int64_t>(ex.input.size()), L - 1) << what;
  EXPECT_EQ(ex.target.size(), ex.input.size()) << what;
  std::vector<int32_t> full = ex.input;
  full.push_back(ex.target.back());
  std::vector<int32_t> expected(full.size(), kIgnoreLabel);  // expected[p]: the target for predicting full[p]
  std::map<int32_t, int32_t> value_of;
  int noise = 0;
  for (size_t p = 0; p + 1 < full.size(); p += 2) {
    const int32_t a = full[p], b = full[p + 1];
    const bool last = p + 2 == full.size();
    if (ids.is_noise(a) || ids.is_noise(b)) {
      EXPECT_TRUE(ids.is_noise(a) && ids.is_noise(b)) << what << ": half a noise slot at " << p;
      EXPECT_FALSE(last) << what << ": a noise probe";
      ++noise;
      continue;
    }
    EXPECT_TRUE(ids.is_key(a)) << what << ": not a key at " << p << ": " << a;
    EXPECT_TRUE(ids.is_value(b)) << what << ": not a value at " << p + 1 << ": " << b;
    const auto it = value_of.find(a);
    if (it != value_of.end()) {
      EXPECT_EQ(it->second, b) << what << ": key " << a << " changed its value at " << p;
      expected[p + 1] = b;
    } else {
      EXPECT_FALSE(last) << what << ": the probe asks for a key never presented";
      value_of[a] = b;
    }
  }
  for (size_t j = 0; j < ex.target.size(); ++j) {
    const int32_t want = training ? full[j + 1] : expected[j + 1];
    if (ex.target[j] != want) {
      ADD_FAILURE() << what << ": target at " << j << " is " << ex.target[j] << ", re-derived " << want;
      break;
    }
  }
  return noise;
}

void check_recall_task(const std::string& name, const Json& given, const RecallIds& ids, int64_t L, double frac_noise) {
  auto task = make_task(name, given, 5);
  ASSERT_EQ(task->kind(), TaskKind::per_position);
  ASSERT_EQ(task->vocab_size(), ids.V + 1);
  ASSERT_EQ(task->num_classes(), ids.V + 1);
  ASSERT_EQ(task->seq_len(), L - 1);
  int64_t noise = 0, slots = 0, scored = 0, n = 0;
  for (Split s : kSplits)
    for (int64_t i = 0; i < 400; ++i) {
      const Example ex = task->example(s, i);
      const std::string what = fmt::format("{} {} {}", name, split_name(s), i);
      noise += check_recall(ex, ids, L, s == Split::train, what);
      slots += L / 2 - 1;
      if (s == Split::train) expect_next_token(ex, what);
      else
        for (int32_t t : ex.target) scored += t != kIgnoreLabel;
      n += s != Split::train;
      if (::testing::Test::HasFailure()) return;
    }
  // Every context slot but the forced one (uniform over all L/2 slots) is noise with probability
  // frac_noise; frac_noise < 0: not checked (short sequences, where the retries bias it).
  const double share = static_cast<double>(noise) / static_cast<double>(slots);
  const double want = frac_noise * (1.0 - 1.0 / static_cast<double>(L / 2));
  if (frac_noise >= 0) {
    EXPECT_NEAR(share, want, 0.01 + 4 * std::sqrt(want * (1 - want) / static_cast<double>(slots))) << name;
  }
  std::printf("%s %s: noise share %.3f (expected %.3f), %.1f scored positions per test example\n", name.c_str(),
              given.dump().c_str(), share, want, static_cast<double>(scored) / static_cast<double>(n));
}

TEST(MadRecall, TargetsAreTheValuesOfRepeatedKeys) {
  check_recall_task("mad_recall", Json::object(), {16, 0}, 128, 0.0);
  check_recall_task("mad_recall", {{"vocab_size", 64}, {"seq_len", 256}}, {64, 0}, 256, 0.0);
  EXPECT_NE(usage_error("mad_recall", {{"seq_len", 127}}).find("nearest valid value: 128"), std::string::npos);
}

TEST(MadNoisyRecall, NoiseSlotsAreUnscoredAndFrequentAsAsked) {
  check_recall_task("mad_noisy_recall", Json::object(), {32, 16}, 128, 0.2);
  check_recall_task("mad_noisy_recall", {{"frac_noise", 0.8}, {"vocab_size", 48}}, {48, 16}, 128, 0.8);
  // Short sequences at heavy noise: the retried examples still always hold a presented probe key.
  check_recall_task("mad_noisy_recall", {{"frac_noise", 0.95}, {"seq_len", 6}}, {32, 16}, 6, -1);
  EXPECT_NE(usage_error("mad_noisy_recall", {{"vocab_size", 17}}).find("vocab_size"), std::string::npos);
  EXPECT_NE(usage_error("mad_noisy_recall", {{"noise_vocab_size", 0}}).find("noise_vocab_size"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Fuzzy recall: left padding, then alternating runs of key tokens and value tokens.

TEST(MadFuzzyRecall, TargetsAreTheValueMotifsOfRepeatedKeyMotifs) {
  const int32_t V = 16, km = 3, vm = 3, keys = (V - 1) / 2, pad = V;  // ours: keys 1..7, values 8..15, pad 16
  const int64_t L = 128;
  auto task = make_task("mad_fuzzy_recall", Json::object(), 9);
  ASSERT_EQ(task->seq_len(), L);
  ASSERT_EQ(task->vocab_size(), V + 1);
  int64_t unseen_probes = 0, examples = 0;
  std::map<int64_t, int64_t> test_key_sizes, train_key_sizes;
  for (Split s : kSplits)
    for (int64_t i = 0; i < 500; ++i) {
      const Example ex = task->example(s, i);
      const std::string what = fmt::format("fuzzy {} {}", split_name(s), i);
      ASSERT_EQ(static_cast<int64_t>(ex.input.size()), L) << what;
      std::vector<int32_t> full = ex.input;
      full.push_back(ex.target.back());
      size_t p = 0;
      while (p < full.size() && full[p] == pad) ++p;
      ASSERT_GE(p, 2u) << what << ": MAD's loop always leaves room for padding";
      // Runs: key tokens are 1..keys, value tokens keys+1..V-1.
      struct Run { size_t start, len; bool key; };
      std::vector<Run> runs;
      for (size_t q = p; q < full.size(); ++q) {
        ASSERT_TRUE(full[q] >= 1 && full[q] < pad) << what << ": token " << full[q] << " at " << q;
        const bool key = full[q] <= keys;
        if (runs.empty() || runs.back().key != key) runs.push_back({q, 0, key});
        ++runs.back().len;
      }
      ASSERT_EQ(runs.size() % 2, 0u) << what;
      std::vector<int32_t> expected(full.size(), kIgnoreLabel);
      std::map<std::vector<int32_t>, std::vector<int32_t>> value_of;
      for (size_t r = 0; r < runs.size(); r += 2) {
        ASSERT_TRUE(runs[r].key && !runs[r + 1].key) << what << ": a value before its key";
        ASSERT_LE(runs[r].len, static_cast<size_t>(km)) << what;
        ASSERT_LE(runs[r + 1].len, static_cast<size_t>(vm)) << what;
        (s == Split::train ? train_key_sizes : test_key_sizes)[static_cast<int64_t>(runs[r].len)]++;
        const std::vector<int32_t> k(full.begin() + runs[r].start, full.begin() + runs[r].start + runs[r].len);
        const std::vector<int32_t> v(full.begin() + runs[r + 1].start,
                                     full.begin() + runs[r + 1].start + runs[r + 1].len);
        ASSERT_EQ(std::set<int32_t>(k.begin(), k.end()).size(), k.size()) << what << ": repeated token in a key motif";
        ASSERT_EQ(std::set<int32_t>(v.begin(), v.end()).size(), v.size()) << what << ": repeated token in a value motif";
        const bool last = r + 2 == runs.size();
        const auto it = value_of.find(k);
        if (it != value_of.end()) {
          ASSERT_EQ(it->second, v) << what << ": a key motif changed its value";
        }
        if (it != value_of.end() || last)
          for (size_t j = 0; j < v.size(); ++j) expected[runs[r + 1].start + j] = v[j];
        if (last && it == value_of.end()) ++unseen_probes;
        value_of[k] = v;
      }
      for (size_t j = 0; j < ex.target.size(); ++j) {
        const int32_t want = s == Split::train ? full[j + 1] : expected[j + 1];
        ASSERT_EQ(ex.target[j], want) << what << ": target at " << j;
      }
      ++examples;
    }
  // Test keys always have the longest motif; training keys take every size 1..km.
  EXPECT_EQ(test_key_sizes.size(), 1u);
  EXPECT_EQ(test_key_sizes.begin()->first, km);
  EXPECT_EQ(train_key_sizes.size(), static_cast<size_t>(km));
  // MAD's quirk (the loop can end before the probe's slot): rare.
  EXPECT_LT(unseen_probes, examples / 20);
  std::printf("mad_fuzzy_recall: %lld of %lld final probes ask for an unseen key (MAD's loop ends first)\n",
              static_cast<long long>(unseen_probes), static_cast<long long>(examples));
  EXPECT_NE(usage_error("mad_fuzzy_recall", {{"vocab_size", 6}}).find("raise vocab_size to 7"), std::string::npos);
  EXPECT_NE(usage_error("mad_fuzzy_recall", {{"seq_len", 12}}).find("nearest valid value: 13"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Selective copying: tokens and blanks, the copy token, n blanks; the tokens are the last targets.

void check_copying(const Json& given, int32_t V, int64_t L, int64_t n) {
  auto task = make_task("mad_selective_copying", given, 3);
  ASSERT_EQ(task->seq_len(), L);
  ASSERT_EQ(task->vocab_size(), V + 1);
  const int32_t blank = V - 1, copy = V;  // MAD's V-2 and V-1, plus one
  double first_token = 0;
  for (Split s : kSplits)
    for (int64_t i = 0; i < 300; ++i) {
      const Example ex = task->example(s, i);
      const std::string what = fmt::format("copying {} {} {}", given.dump(), split_name(s), i);
      ASSERT_EQ(static_cast<int64_t>(ex.input.size()), L) << what;
      ASSERT_EQ(ex.input[L - n - 1], copy) << what;
      std::vector<int32_t> tokens;
      int64_t blanks = 0;
      for (int64_t p = 0; p < L - n - 1; ++p) {
        const int32_t t = ex.input[p];
        ASSERT_TRUE(t >= 1 && t <= blank) << what << ": token " << t;
        if (t == blank) ++blanks;
        else tokens.push_back(t), first_token += tokens.size() == 1 ? static_cast<double>(p) : 0.0;
      }
      ASSERT_EQ(static_cast<int64_t>(tokens.size()), n) << what;
      ASSERT_EQ(blanks, L - 2 * n - 1) << what;
      ASSERT_NE(ex.input[L - n - 2], blank) << what << ": MAD inserts blanks only before tokens";
      for (int64_t p = 0; p < L; ++p) {
        if (p >= L - n) {
          ASSERT_EQ(ex.input[p], blank) << what;
        }
        const int32_t want = p >= L - n ? tokens[static_cast<size_t>(p - (L - n))] : kIgnoreLabel;
        ASSERT_EQ(ex.target[p], want) << what << " at " << p;
      }
    }
  // Blanks fall before each token with equal chance: (L - 2n - 1) / n of them before the first.
  EXPECT_NEAR(first_token / 900.0, static_cast<double>(L - 2 * n - 1) / static_cast<double>(n), 1.5);
}

TEST(MadSelectiveCopying, TargetsAreTheTokensInOrder) {
  check_copying(Json::object(), 16, 256, 16);
  check_copying({{"num_tokens_to_copy", 96}}, 16, 256, 96);
  check_copying({{"vocab_size", 128}, {"seq_len", 512}}, 128, 512, 16);
  EXPECT_NE(usage_error("mad_selective_copying", {{"num_tokens_to_copy", 128}}).find("num_tokens_to_copy at most 127"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Memorization: one map across splits, a function of the seed.

std::map<int32_t, int32_t> check_memorization(const Json& given, uint64_t seed, int32_t V, int64_t L) {
  auto task = make_task("mad_memorization", given, seed);
  EXPECT_EQ(task->seq_len(), L);
  EXPECT_EQ(task->vocab_size(), V + 1);
  const int32_t keys = (V - 1) / 2, insert = V;
  std::map<int32_t, int32_t> value_of;
  for (Split s : kSplits)
    for (int64_t i = 0; i < std::min<int64_t>(task->split_size(s), 256); ++i) {
      const Example ex = task->example(s, i);
      EXPECT_EQ(static_cast<int64_t>(ex.input.size()), L);
      for (int64_t p = 0; p + 1 < L; p += 2) {
        const int32_t k = ex.input[p], v = ex.target[p + 1];
        EXPECT_TRUE(k >= 1 && k <= keys) << "key " << k;
        EXPECT_EQ(ex.input[p + 1], insert);
        EXPECT_EQ(ex.target[p], kIgnoreLabel);
        EXPECT_TRUE(v > keys && v < V) << "value " << v;
        const auto [it, fresh] = value_of.emplace(k, v);
        if (!fresh && it->second != v) {
          ADD_FAILURE() << "key " << k << " maps to " << it->second << " and " << v << " (" << split_name(s) << ")";
          return value_of;
        }
      }
    }
  std::set<int32_t> values;
  for (const auto& kv : value_of) values.insert(kv.second);
  EXPECT_EQ(values.size(), value_of.size()) << "two keys share a value";
  return value_of;
}

TEST(MadMemorization, OneFixedMapAcrossSplits) {
  const auto a = check_memorization(Json::object(), 7, 256, 32);
  EXPECT_EQ(a.size(), 127u);  // 256 examples x 16 keys cover all 127 keys
  EXPECT_EQ(a, check_memorization(Json::object(), 7, 256, 32)) << "the map is a function of the seed";
  EXPECT_NE(a, check_memorization(Json::object(), 8, 256, 32)) << "another seed, another map";
  check_memorization({{"vocab_size", 8192}}, 7, 8192, 32);
}

// ---------------------------------------------------------------------------------------------
// Compression: L - 1 content tokens, uniform over MAD's [0, V - 1), then the compression token
// V - 1; the target is the sequence itself everywhere, in every split.

void check_compression(const Json& given, int32_t V, int64_t L) {
  auto task = make_task("mad_compression", given, 5);
  EXPECT_EQ(task->seq_len(), L);
  EXPECT_EQ(task->vocab_size(), V + 1);
  EXPECT_EQ(task->kind(), TaskKind::per_position);
  const int32_t compress = V;  // MAD's V - 1, plus one
  std::vector<int64_t> count(static_cast<size_t>(V) + 1, 0);
  int64_t content = 0;
  for (Split s : kSplits)
    for (int64_t i = 0; i < std::min<int64_t>(task->split_size(s), 400); ++i) {
      const Example ex = task->example(s, i);
      ASSERT_EQ(static_cast<int64_t>(ex.input.size()), L);
      ASSERT_EQ(ex.input.back(), compress) << split_name(s) << " " << i;
      for (int64_t p = 0; p < L; ++p) ASSERT_EQ(ex.target[p], ex.input[p]) << "target differs from input at " << p;
      for (int64_t p = 0; p + 1 < L; ++p) {
        const int32_t t = ex.input[p];
        ASSERT_TRUE(t >= 1 && t < compress) << "content token " << t << " at " << p;
        ++count[static_cast<size_t>(t)];
        ++content;
      }
    }
  // Uniform over the V - 1 content ids: each within 5 standard deviations of its expected count.
  const double expect = static_cast<double>(content) / (V - 1), sd = std::sqrt(expect * (1.0 - 1.0 / (V - 1)));
  for (int32_t t = 1; t < compress; ++t)
    EXPECT_NEAR(static_cast<double>(count[static_cast<size_t>(t)]), expect, 5 * sd) << "content id " << t;
}

TEST(MadCompression, TheSequenceIsItsOwnTargetAndEndsInTheCompressionToken) {
  check_compression(Json::object(), 16, 32);
  check_compression({{"vocab_size", 128}, {"seq_len", 64}}, 128, 64);
  const TaskSpec& spec = TaskRegistry::instance().get("mad_compression");
  EXPECT_EQ(spec.defaults.at("model").at("pooling"), "last") << "MAD trains compression on its autoencoder";
}

}  // namespace
