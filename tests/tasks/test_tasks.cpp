// The task suite: every generator checked by code written separately from it.
//  * Pathfinder: labels re-derived from the exported target paths, checked against the image (a
//    connectivity search cannot recover them: see check_pathfinder); the drawing itself is compared
//    with the original generator's statistics in tests/python/test_pathfinder_stats.py.
//  * MQAR, selective copying, induction heads, associative recall: structure and targets re-derived
//    from the token sequence alone.
//  * Image: exact class balance, a visible shape on every image. Text: labels = an independent
//    recount of the cue words in the readable text. Retrieval: related pairs share >= 2 repeated rare
//    words, unrelated pairs none, read from the text.
//  * PNG preview grids (the reader and writer: test_png.cpp), the LRA file loaders
//    on fixtures written to a temporary directory, determinism and parameter errors of every task,
//    and the generation speed of every task (printed, not asserted).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "io/lra_loaders.hpp"
#include "attnbench/ops.hpp"
#include "attnbench/params.hpp"
#include "io/png.hpp"
#include "attnbench/task.hpp"
#include "support/task_fixtures.hpp"

using namespace ab;

namespace {

namespace fs = std::filesystem;
constexpr Split kSplits[] = {Split::train, Split::valid, Split::test};

using test::make_task;
using test::usage_error;

// A scratch directory removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("attnbench_test_tasks_" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// ---------------------------------------------------------------------------------------------
// Pathfinder

struct PathfinderCase {
  int resolution, contour_length, count;
};

// The generator draws as LRA's (drewlinsley/pathfinder): labels are by construction and snakes are
// kept apart by its masks only, so the label is NOT recoverable by a connectivity search on the
// pixels (on 450 of the original's own 32 px images such a search agrees with the label in 47-53%
// of images at every threshold 0-32 and link radius 1-2.5 tried). What is checked instead, from
// the image and the exported target paths: each path is a chain of paddles at the generator's
// spacing whose heads are drawn, the markers sit on path ends and are drawn, and the label is 1
// exactly when both markers are the ends of one path (0: the origin of one and the end of the other).
void check_pathfinder(const PathfinderCase& c) {
  auto task = make_task("pathfinder", {{"resolution", c.resolution}, {"contour_length", c.contour_length},
                                       {"valid_size", c.count}, {"cache_mb", 0}},
                        3);
  const int side = c.resolution;
  ASSERT_EQ(task->seq_len(), side * side);
  ASSERT_EQ(task->vocab_size(), 257);
  ASSERT_EQ(task->num_classes(), 2);
  const Json eff = task->effective_params();
  // Paddle length L and the largest margin m per resolution (tasks.md §7.3): consecutive heads lie
  // about L + 2m + (L + m) apart, at most 2 (L + m) + m + 2 with the pixel roundings.
  const int L = side == 32 ? 2 : 5, m = side == 128 ? 3 : side == 256 ? 3 : 1;
  const double max_step = 2.0 * (L + m) + m + 2.0;
  int positives = 0, ambiguous = 0;
  for (int i = 0; i < c.count; ++i) {
    const Example ex = task->example(Split::valid, i);
    ASSERT_EQ(static_cast<int>(ex.input.size()), side * side);
    std::vector<uint8_t> img(ex.input.size());
    for (size_t p = 0; p < img.size(); ++p) {
      ASSERT_GE(ex.input[p], 1);
      ASSERT_LE(ex.input[p], 256);
      img[p] = static_cast<uint8_t>(ex.input[p] - 1);
    }
    const Json meta = Json::parse(ex.text);
    const std::array<int, 2> a = {meta["markers"][0][0].get<int>(), meta["markers"][0][1].get<int>()};
    const std::array<int, 2> b = {meta["markers"][1][0].get<int>(), meta["markers"][1][1].get<int>()};
    // Markers are value 1 discs among paddles of at most 1.5 (32 px) or 1 (others): bright.
    ASSERT_GE(img[a[0] * side + a[1]], 128) << "marker centre not drawn, image " << i;
    ASSERT_GE(img[b[0] * side + b[1]], 128) << "marker centre not drawn, image " << i;
    std::array<std::vector<std::array<int, 2>>, 2> paths;
    for (int k = 0; k < 2; ++k) {
      for (const auto& q : meta["paths"][k]) paths[k].push_back({q[0].get<int>(), q[1].get<int>()});
      ASSERT_EQ(static_cast<int>(paths[k].size()), c.contour_length) << "image " << i;
      for (size_t j = 0; j < paths[k].size(); ++j) {
        const auto& q = paths[k][j];
        ASSERT_TRUE(q[0] >= 0 && q[0] < side && q[1] >= 0 && q[1] < side);
        if (j > 0) {
          EXPECT_GT(img[q[0] * side + q[1]], 0) << "paddle head not drawn, image " << i;
          const auto& r = paths[k][j - 1];
          EXPECT_LE(std::hypot(q[0] - r[0], q[1] - r[1]), max_step) << "path breaks, image " << i;
        }
      }
    }
    const int label = ex.target.at(0);
    ASSERT_TRUE(label == 0 || label == 1);
    positives += label;
    // Target 1's last paddle is never masked (as in the original), so target 2 may end on the same
    // pixel: then both labels draw the same image.
    if (paths[0].back() == paths[1].back()) {
      ++ambiguous;
      continue;
    }
    int derived = -1;
    for (int k = 0; k < 2; ++k) {
      if (a == paths[k].front() && b == paths[k].back()) derived = 1;
      if (a == paths[k].front() && b == paths[1 - k].back()) derived = 0;
    }
    EXPECT_EQ(derived, label) << "resolution " << side << " image " << i;
  }
  EXPECT_LE(ambiguous, c.count / 20 + 1);
  // Labels are Bernoulli(1/2) (4 sigma: seven such checks run).
  EXPECT_GT(positives, c.count / 2 - 4 * std::sqrt(c.count / 4.0) - 1);
  EXPECT_LT(positives, c.count / 2 + 4 * std::sqrt(c.count / 4.0) + 1);
  std::printf("pathfinder %d, contour %d: %d images, %d labelled 1, %d with both targets ending on one pixel, the "
              "others' labels re-derived from the drawn paths\n",
              side, c.contour_length, c.count, positives, ambiguous);
}

TEST(Pathfinder, LabelsMatchPaths32) { check_pathfinder({32, 14, 300}); }
TEST(Pathfinder, LabelsMatchPaths64) { check_pathfinder({64, 14, 100}); }
TEST(Pathfinder, LabelsMatchPaths128) { check_pathfinder({128, 14, 24}); }
TEST(Pathfinder, LabelsMatchPaths256) { check_pathfinder({256, 14, 20}); }
TEST(Pathfinder, EasierContoursMatchPaths) {
  check_pathfinder({32, 6, 200});
  check_pathfinder({32, 9, 200});
  check_pathfinder({64, 6, 100});
}

TEST(Pathfinder, ParametersPresetsAndPadding) {
  Json resolved;
  auto t = make_task("pathfinder", Json::object(), 1, &resolved);
  EXPECT_TRUE(resolved.at("train_size").is_null());
  const Json eff = t->effective_params();
  EXPECT_EQ(eff.at("resolution"), 32);
  EXPECT_EQ(eff.at("contour_length"), 14);
  EXPECT_EQ(eff.at("distractor_length"), 4);      // 14 // 3
  EXPECT_EQ(eff.at("num_distractor_snakes"), 5);  // 20 // 4
  EXPECT_EQ(eff.at("train_size"), 20000);
  EXPECT_EQ(t->split_size(Split::valid), 2000);
  auto lra = make_task("pathfinder", {{"preset", "lra"}, {"resolution", 128}});
  EXPECT_EQ(lra->effective_params().at("train_size"), 160000);
  EXPECT_EQ(lra->effective_params().at("num_distractor_snakes"), 8);  // 35 // 4
  EXPECT_EQ(lra->seq_len(), 128 * 128);
  auto easy = make_task("pathfinder", {{"contour_length", 6}});
  EXPECT_EQ(easy->effective_params().at("distractor_length"), 2);
  EXPECT_EQ(easy->effective_params().at("num_distractor_snakes"), 10);
  // LRA's convention: token = gray level (black = padding).
  auto a = make_task("pathfinder", {{"black_is_padding", false}}), b = make_task("pathfinder", {{"black_is_padding", true}});
  EXPECT_EQ(b->vocab_size(), 256);
  const Example ea = a->example(Split::train, 5), eb = b->example(Split::train, 5);
  ASSERT_EQ(ea.input.size(), eb.input.size());
  int black = 0;
  for (size_t i = 0; i < ea.input.size(); ++i) {
    ASSERT_EQ(ea.input[i], eb.input[i] + 1);
    black += eb.input[i] == 0;
  }
  EXPECT_GT(black, 512);  // mostly background
  EXPECT_EQ(ea.target, eb.target);
  EXPECT_THROW(a->example(Split::test, 2000), std::out_of_range);
}

// ---------------------------------------------------------------------------------------------
// MQAR

TEST(Mqar, StructureMatchesZoology) {
  const int64_t L = 64, K = 4, V = 256;
  auto task = make_task("mqar", {{"random_non_queries", false}, {"valid_size", 3000}});
  ASSERT_EQ(task->kind(), TaskKind::per_position);
  ASSERT_EQ(task->seq_len(), L);
  ASSERT_EQ(task->vocab_size(), V);
  ASSERT_EQ(task->num_classes(), V);
  int64_t first_half = 0, queries = 0;
  for (int64_t i = 0; i < 3000; ++i) {
    const Example ex = task->example(Split::valid, i);
    ASSERT_EQ(static_cast<int64_t>(ex.input.size()), L);
    ASSERT_EQ(static_cast<int64_t>(ex.target.size()), L);
    std::map<int32_t, int32_t> value_of;
    std::set<int32_t> values;
    for (int64_t j = 0; j < K; ++j) {
      const int32_t k = ex.input[2 * j], v = ex.input[2 * j + 1];
      ASSERT_GE(k, 1);
      ASSERT_LT(k, V / 2);
      ASSERT_GE(v, V / 2);
      ASSERT_LT(v, V);
      ASSERT_TRUE(value_of.emplace(k, v).second) << "repeated key";
      ASSERT_TRUE(values.insert(v).second) << "repeated value";
      ASSERT_EQ(ex.target[2 * j], kIgnoreLabel);
      ASSERT_EQ(ex.target[2 * j + 1], kIgnoreLabel);
    }
    std::set<int32_t> asked;
    for (int64_t p = 2 * K; p < L; ++p) {
      const int32_t t = ex.input[p];
      if (t == 0) {  // Zoology's filler
        ASSERT_EQ(ex.target[p], kIgnoreLabel);
        continue;
      }
      ASSERT_EQ((p - 2 * K) % 2, 0) << "a query at an odd offset";
      ASSERT_TRUE(value_of.count(t)) << "a query for a key not in the context";
      ASSERT_TRUE(asked.insert(t).second) << "a key queried twice";
      ASSERT_EQ(ex.target[p], value_of[t]) << "the label is not the paired value";
      ++queries;
      first_half += (p - 2 * K) / 2 < (L - 2 * K) / 4;
    }
    ASSERT_EQ(static_cast<int64_t>(asked.size()), K) << "every key is queried exactly once";
  }
  // tasks.md §10.1: with a = 0.01 about 80% of the queries fall in the first half of the region.
  const double share = static_cast<double>(first_half) / static_cast<double>(queries);
  EXPECT_NEAR(share, 0.80, 0.04) << share;
  std::printf("mqar (64, 4): %.3f of queries in the first half of the query region\n", share);
}

TEST(Mqar, RandomFillersPresetsAndConstraints) {
  auto task = make_task("mqar", Json::object());
  int zeros = 0, fillers_random = 0;
  for (int64_t i = 0; i < 200; ++i) {
    const Example ex = task->example(Split::train, i);
    for (size_t p = 8; p < ex.input.size(); ++p) {
      if (ex.target[p] != kIgnoreLabel) continue;
      zeros += ex.input[p] == 0;
      fillers_random += ex.input[p] != 0;
    }
  }
  EXPECT_GT(fillers_random, 200 * 40);  // random_non_queries (Zoology's default) replaces the fillers
  EXPECT_LT(zeros, 200);                // about 1/256 of them are 0 again
  auto paper = make_task("mqar", {{"preset", "paper"}});
  EXPECT_EQ(paper->vocab_size(), 8192);
  EXPECT_EQ(paper->split_size(Split::train), 100000);
  EXPECT_EQ(paper->split_size(Split::test), 3000);
  EXPECT_EQ(paper->effective_params().at("random_non_queries"), false);
  auto big = make_task("mqar", {{"seq_len", 256}, {"num_kv_pairs", 16}, {"vocab_size", 8192}});
  for (int64_t i = 0; i < 50; ++i) {
    const Example ex = big->example(Split::test, i);
    int scored = 0;
    for (int32_t t : ex.target) scored += t != kIgnoreLabel;
    ASSERT_EQ(scored, 16);
  }
  EXPECT_NE(usage_error("mqar", {{"seq_len", 63}}).find("even"), std::string::npos);
  EXPECT_NE(usage_error("mqar", {{"num_kv_pairs", 20}}).find("num_kv_pairs"), std::string::npos);
  EXPECT_NE(usage_error("mqar", {{"vocab_size", 64}}).find("vocab_size"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Selective copying

TEST(SelectiveCopying, TargetsAreTheDataTokensInOrder) {
  const int L = 256, M = 16, A = 16;
  auto task = make_task("selective_copying", Json::object());
  ASSERT_EQ(task->seq_len(), L + 2 * M);
  ASSERT_EQ(task->vocab_size(), A + 1);
  double mean_pos = 0;
  for (int64_t i = 0; i < 500; ++i) {
    const Example ex = task->example(Split::test, i);
    ASSERT_EQ(static_cast<int>(ex.input.size()), L + 2 * M);
    std::vector<int32_t> data;
    for (int p = 0; p < L + M; ++p) {
      const int32_t t = ex.input[p];
      ASSERT_NE(t, 0);
      ASSERT_NE(t, A) << "a marker among the data";
      ASSERT_EQ(ex.target[p], kIgnoreLabel);
      if (t != 1) {
        ASSERT_GE(t, 2);
        ASSERT_LE(t, A - 1);
        data.push_back(t);
        mean_pos += p;
      }
    }
    ASSERT_EQ(static_cast<int>(data.size()), M);
    for (int j = 0; j < M; ++j) {
      ASSERT_EQ(ex.input[L + M + j], A);
      ASSERT_EQ(ex.target[L + M + j], data[j]);
    }
  }
  mean_pos /= 500.0 * M;
  EXPECT_NEAR(mean_pos, (L + M - 1) / 2.0, 6.0);  // positions uniform over the first L + M
  auto vanilla = make_task("selective_copying", {{"variable", false}, {"num_noise", 32}});
  const Example ex = vanilla->example(Split::train, 0);
  for (int j = 0; j < M; ++j) EXPECT_EQ(ex.input[j], ex.target[32 + M + j]);
  EXPECT_EQ(make_task("selective_copying", {{"preset", "paper"}})->seq_len(), 4096 + 32);
}

// ---------------------------------------------------------------------------------------------
// Induction heads and associative recall

TEST(InductionHeads, TargetIsTheTokenAfterTheTrigger) {
  auto task = make_task("induction_heads", Json::object());
  const int32_t N = 18, prefix = 19;  // vocab 20 = 18 ordinary + "=>" + "."
  ASSERT_EQ(task->vocab_size(), 21);
  ASSERT_EQ(task->seq_len(), 31);
  for (Split s : {Split::valid, Split::test})
    for (int64_t i = 0; i < task->split_size(s); ++i) {
      const Example ex = task->example(s, i);
      ASSERT_EQ(ex.input.size(), 31u);
      ASSERT_EQ(ex.input.back(), prefix);
      size_t first = ex.input.size();
      for (size_t p = 0; p + 1 < ex.input.size(); ++p) {
        ASSERT_GE(ex.input[p], 1);
        ASSERT_LE(ex.input[p], prefix);
        if (ex.input[p] == prefix && first == ex.input.size()) first = p;
      }
      ASSERT_LT(first, ex.input.size() - 1) << "no trigger before the final one";
      const int32_t answer = ex.input[first + 1];
      ASSERT_GE(answer, 1);
      ASSERT_LE(answer, N);
      for (size_t p = 0; p + 1 < ex.input.size(); ++p)
        if (ex.input[p] == prefix) {
          ASSERT_EQ(ex.input[p + 1], answer) << "triggers disagree";
        }
      for (size_t p = 0; p + 1 < ex.target.size(); ++p) ASSERT_EQ(ex.target[p], kIgnoreLabel);
      ASSERT_EQ(ex.target.back(), answer);
    }
  // Training targets: the next token everywhere (safari), or only the answer.
  const Example tr = task->example(Split::train, 3);
  for (size_t p = 0; p + 1 < tr.input.size(); ++p) ASSERT_EQ(tr.target[p], tr.input[p + 1]);
  auto answer_only = make_task("induction_heads", {{"train_targets", "answer"}});
  const Example ta = answer_only->example(Split::train, 3);
  EXPECT_EQ(ta.input, tr.input);
  for (size_t p = 0; p + 1 < ta.target.size(); ++p) EXPECT_EQ(ta.target[p], kIgnoreLabel);
  EXPECT_EQ(ta.target.back(), tr.target.back());
  // Deduplicated splits hold distinct sequences.
  std::set<std::vector<int32_t>> seen;
  for (int64_t i = 0; i < task->split_size(Split::train); ++i) ASSERT_TRUE(seen.insert(task->example(Split::train, i).input).second);
  // Mamba's setting, with a longer test length.
  auto mamba = make_task("induction_heads", {{"preset", "mamba"}, {"test_seq_len", 512}});
  EXPECT_EQ(mamba->vocab_size(), 17);
  EXPECT_EQ(mamba->seq_len(), 513);
  EXPECT_EQ(mamba->example(Split::train, 0).input.size(), 257u);
  EXPECT_EQ(mamba->example(Split::test, 0).input.size(), 513u);
  // Several triggers, two copied tokens.
  auto multi = make_task("induction_heads", {{"num_triggers", 3}, {"induction_len", 2}, {"dedupe", false}});
  for (int64_t i = 0; i < 200; ++i) {
    const Example ex = multi->example(Split::test, i);
    const size_t n = ex.input.size();
    ASSERT_EQ(ex.input[n - 2], prefix);
    size_t first = 0;
    while (ex.input[first] != prefix) ++first;
    ASSERT_EQ(ex.target[n - 2], ex.input[first + 1]);
    ASSERT_EQ(ex.target[n - 1], ex.input[first + 2]);
    ASSERT_EQ(ex.input[n - 1], ex.input[first + 1]);
  }
}

TEST(AssociativeRecall, TargetIsTheQueriedKeysValue) {
  auto task = make_task("associative_recall", Json::object());
  const int32_t keys_hi = 9, values_lo = 10, values_hi = 18, prefix = 19;
  ASSERT_EQ(task->vocab_size(), 21);
  ASSERT_EQ(task->seq_len(), 42);  // 20 pairs, "=>", key (the value is the target)
  for (int64_t i = 0; i < task->split_size(Split::test); ++i) {
    const Example ex = task->example(Split::test, i);
    const size_t n = ex.input.size();
    ASSERT_EQ(n, 42u);
    ASSERT_EQ(ex.input[n - 2], prefix);
    std::map<int32_t, int32_t> value_of;
    for (size_t p = 0; p + 2 < n; p += 2) {
      const int32_t k = ex.input[p], v = ex.input[p + 1];
      ASSERT_GE(k, 1);
      ASSERT_LE(k, keys_hi);
      ASSERT_GE(v, values_lo);
      ASSERT_LE(v, values_hi);
      auto [it, fresh] = value_of.emplace(k, v);
      ASSERT_EQ(it->second, v) << "a key with two values";
    }
    const int32_t q = ex.input[n - 1];
    ASSERT_TRUE(value_of.count(q)) << "allow_dot=false queries a present key";
    for (size_t p = 0; p + 1 < n; ++p) ASSERT_EQ(ex.target[p], kIgnoreLabel);
    ASSERT_EQ(ex.target[n - 1], value_of[q]);
  }
  const Example tr = task->example(Split::train, 0);
  for (size_t p = 0; p + 1 < tr.input.size(); ++p) ASSERT_EQ(tr.target[p], tr.input[p + 1]);
  // allow_dot: an absent key is answered by "." (id 20).
  auto dot = make_task("associative_recall", {{"allow_dot", true}, {"seq_len", 6}, {"dedupe", false}});
  int dots = 0;
  for (int64_t i = 0; i < 300; ++i) {
    const Example ex = dot->example(Split::test, i);
    const size_t n = ex.input.size();
    bool present = false;
    for (size_t p = 0; p + 2 < n; p += 2) present |= ex.input[p] == ex.input[n - 1];
    ASSERT_EQ(ex.target.back() == 20, !present);
    dots += !present;
  }
  EXPECT_GT(dots, 100);  // 3 pairs among 9 keys: the query is absent about 2/3 of the time
  // Two keys per value.
  auto two = make_task("associative_recall", {{"num_keys", 2}, {"dedupe", false}});
  for (int64_t i = 0; i < 100; ++i) {
    const Example ex = two->example(Split::test, i);
    const size_t n = ex.input.size();
    ASSERT_EQ(ex.input[n - 3], prefix);
    std::map<std::pair<int32_t, int32_t>, int32_t> value_of;
    for (size_t p = 0; p + 3 < n; p += 3) value_of[{ex.input[p], ex.input[p + 1]}] = ex.input[p + 2];
    ASSERT_EQ(ex.target.back(), (value_of.at({ex.input[n - 2], ex.input[n - 1]})));
  }
  EXPECT_EQ(make_task("associative_recall", {{"preset", "hyena"}, {"train_size", 2}, {"valid_size", 1},
                                             {"test_size", 1}})->seq_len(),
            131072 + 2);
}

// ---------------------------------------------------------------------------------------------
// Image, text, retrieval

TEST(ImageTask, BalancedClassesWithVisibleShapes) {
  auto task = make_task("image", Json::object());
  ASSERT_EQ(task->seq_len(), 1024);
  ASSERT_EQ(task->num_classes(), 10);
  const std::vector<std::string> names = {"disc", "square", "triangle", "cross", "ring",
                                          "stripes", "checker", "blob", "line", "dots"};
  std::vector<int> count(10, 0);
  for (int64_t i = 0; i < 1000; ++i) {
    const Example ex = task->example(Split::valid, i);
    ASSERT_EQ(ex.input.size(), 1024u);
    const int c = ex.target.at(0);
    ASSERT_GE(c, 0);
    ASSERT_LT(c, 10);
    ++count[c];
    EXPECT_EQ(ex.text, names[c]);
    std::vector<int32_t> px(ex.input);
    for (auto& p : px) {
      ASSERT_GE(p, 1);
      ASSERT_LE(p, 256);
    }
    std::nth_element(px.begin(), px.begin() + 512, px.end());
    const int32_t median = px[512];
    int far = 0;
    for (int32_t p : ex.input) far += std::abs(p - median) >= 35;
    EXPECT_GE(far, 8) << "image " << i << " (" << names[c] << ") shows no shape";
  }
  for (int c = 0; c < 10; ++c) EXPECT_EQ(count[c], 100) << names[c];
  EXPECT_EQ(make_task("image", {{"preset", "lra"}})->split_size(Split::train), 45000);
}

// The cue lists and the scoring rule, as documented in tasks/text.cpp, applied to the text.
int recount_sentiment(const std::string& text, int window) {
  static const std::set<std::string> pos = {"good",    "nice",     "great",    "superb",    "lovely",
                                            "amazing", "terrific", "charming", "wonderful", "brilliant"};
  static const std::set<std::string> neg = {"poor",    "dull",     "awful",    "boring",    "clumsy",
                                            "tedious", "horrible", "dreadful", "appalling", "miserable"};
  static const std::set<std::string> negations = {"not", "never", "hardly"};
  std::vector<std::string> words;
  std::string w;
  for (char ch : text + " ") {
    if (std::isalpha(static_cast<unsigned char>(ch))) {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!w.empty()) {
      words.push_back(w);
      w.clear();
    }
  }
  int score = 0, armed = 0;
  for (const auto& word : words) {
    if (negations.count(word)) {
      armed = window;
    } else if (pos.count(word) || neg.count(word)) {
      const int v = pos.count(word) ? 1 : -1;
      score += armed > 0 ? -v : v;
      armed = 0;
    } else if (armed > 0) {
      --armed;
    }
  }
  return score;
}

TEST(TextTask, LabelsEqualAnIndependentRecount) {
  auto task = make_task("text", Json::object());
  ASSERT_EQ(task->vocab_size(), 257);
  ASSERT_EQ(task->seq_len(), 1024);
  int ones = 0, negated_cues = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    const Example ex = task->example(Split::train, i);
    ASSERT_EQ(ex.input.size(), ex.text.size());
    ASSERT_LE(ex.input.size(), 1024u);
    ASSERT_GE(ex.input.size(), 400u);
    for (size_t j = 0; j < ex.text.size(); ++j) ASSERT_EQ(ex.input[j], static_cast<uint8_t>(ex.text[j]) + 1);
    const int score = recount_sentiment(ex.text, 3);
    ASSERT_NE(score, 0) << "ties are redrawn";
    ASSERT_EQ(ex.target.at(0), score > 0 ? 1 : 0) << ex.text;
    ones += ex.target[0];
    if (i % 2 == 1) {
      ASSERT_EQ(ones, (i + 1) / 2) << "each pair of indices holds one of each class";
    }
    negated_cues += ex.text.find("not ") != std::string::npos;
  }
  EXPECT_EQ(ones, 500);
  EXPECT_GT(negated_cues, 500);
  // The rule matters: ignoring negations disagrees with the labels on a fair share of documents.
  int disagree = 0;
  for (int64_t i = 0; i < 300; ++i) {
    const Example ex = task->example(Split::test, i);
    disagree += (recount_sentiment(ex.text, 0) > 0) != (ex.target[0] == 1);
  }
  EXPECT_GT(disagree, 10);
  auto lra = make_task("text", {{"preset", "lra"}});
  EXPECT_EQ(lra->seq_len(), 4096);
  const Example long_doc = lra->example(Split::valid, 0);
  EXPECT_GE(long_doc.input.size(), 900u);
  EXPECT_EQ(long_doc.target[0], recount_sentiment(long_doc.text, 3) > 0 ? 1 : 0);
}

std::set<std::string> repeated_rare_words(const std::string& doc) {
  std::map<std::string, int> count;
  std::string w;
  for (char ch : doc + " ") {
    if (std::isalpha(static_cast<unsigned char>(ch))) {
      w += ch;
    } else {
      if (w.size() >= 7) ++count[w];
      w.clear();
    }
  }
  std::set<std::string> out;
  for (const auto& [word, n] : count)
    if (n >= 2) out.insert(word);
  return out;
}

TEST(RetrievalTask, RelatedPairsShareATopicFingerprint) {
  auto task = make_task("retrieval", Json::object());
  ASSERT_EQ(task->kind(), TaskKind::pair_classify);
  ASSERT_EQ(task->seq_len(), 1024);
  int ones = 0, hard_negatives = 0;
  for (int64_t i = 0; i < 600; ++i) {
    const Example ex = task->example(Split::valid, i);
    const size_t tab = ex.text.find('\t');
    ASSERT_NE(tab, std::string::npos);
    const std::string d1 = ex.text.substr(0, tab), d2 = ex.text.substr(tab + 1);
    ASSERT_EQ(ex.input.size(), d1.size());
    ASSERT_EQ(ex.input2.size(), d2.size());
    ASSERT_LE(d1.size(), 1024u);
    ASSERT_GE(d1.size(), 400u);
    for (size_t j = 0; j < d2.size(); ++j) ASSERT_EQ(ex.input2[j], static_cast<uint8_t>(d2[j]) + 1);
    const auto r1 = repeated_rare_words(d1), r2 = repeated_rare_words(d2);
    ASSERT_EQ(r1.size(), 4u);
    ASSERT_EQ(r2.size(), 4u);
    std::vector<std::string> shared;
    std::set_intersection(r1.begin(), r1.end(), r2.begin(), r2.end(), std::back_inserter(shared));
    const int label = ex.target.at(0);
    if (label == 1) {
      EXPECT_GE(shared.size(), 2u);
    } else {
      EXPECT_EQ(shared.size(), 0u);
      for (const auto& w : r1) hard_negatives += d2.find(w) != std::string::npos;
    }
    ones += label;
  }
  EXPECT_EQ(ones, 300);
  EXPECT_GT(hard_negatives, 80);  // about half the negatives borrow one fingerprint word
  auto lra = make_task("retrieval", {{"preset", "lra"}});
  EXPECT_EQ(lra->seq_len(), 4000);
  EXPECT_EQ(lra->split_size(Split::train), 147086);
}

// ---------------------------------------------------------------------------------------------
// PNG previews (the reader and writer: test_png.cpp)

TEST(Png, PreviewGrids) {
  TempDir dir;
  auto image = make_task("image", Json::object());
  const std::string path = (dir.path / "grid.png").string();
  ASSERT_TRUE(write_preview_png(*image, Split::train, 10, path));
  const GrayImage g = read_png_gray(path);
  // 10 images: 4 columns x 3 rows of 64-px images (32 x 2) with 4-px frames and 14-px label strips.
  EXPECT_EQ(g.width, 4 * (64 + 4) + 4);
  EXPECT_EQ(g.height, 3 * (64 + 14 + 4) + 4);
  // The first cell holds the first image, enlarged twice.
  const std::vector<uint8_t> first = dynamic_cast<const ImageTask&>(*image).image_pixels(image->example(Split::train, 0));
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) ASSERT_EQ(g.pixels[(4 + y) * g.width + 4 + x], first[(y / 2) * 32 + x / 2]);
  auto pf = make_task("pathfinder", Json::object());
  EXPECT_TRUE(write_preview_png(*pf, Split::valid, 4, (dir.path / "pf.png").string()));
  auto mqar = make_task("mqar", Json::object());
  EXPECT_FALSE(write_preview_png(*mqar, Split::train, 4, (dir.path / "none.png").string()));
  EXPECT_FALSE(fs::exists(dir.path / "none.png"));
}

// ---------------------------------------------------------------------------------------------
// LRA release loaders, on fixtures written here

TEST(LraFiles, PathfinderDirectory) {
  TempDir dir;
  const fs::path root = dir.path / "pathfinder32" / "curv_contour_length_14";
  fs::create_directories(root / "metadata");
  fs::create_directories(root / "imgs" / "0");
  fs::create_directories(root / "imgs" / "1");
  // 20 images over two metadata files (numeric order: 2.npy before 10.npy), labels i % 3 == 0.
  auto gen = make_task("pathfinder", Json::object(), 9);
  std::vector<std::vector<uint8_t>> images;
  std::ofstream meta_a(root / "metadata" / "2.npy"), meta_b(root / "metadata" / "10.npy");
  for (int i = 0; i < 20; ++i) {
    const Example ex = gen->example(Split::train, i);
    GrayImage g;
    g.width = g.height = 32;
    for (int32_t t : ex.input) g.pixels.push_back(static_cast<uint8_t>(t - 1));
    images.push_back(g.pixels);
    const std::string sub = i < 10 ? "imgs/0" : "imgs/1";
    const std::string file = "sample_" + std::to_string(i) + ".png";
    write_png_gray((root / sub / file).string(), g);
    (i < 10 ? meta_a : meta_b) << sub << " " << file << " " << i << " " << (i % 3 == 0) << " 1.0 14 4 2 0.5 1 1\n";
  }
  meta_a.close();
  meta_b.close();
  auto task = make_task("pathfinder", {{"source", "lra_files"}, {"path", root.string()}});
  EXPECT_EQ(task->split_size(Split::train), 16);
  EXPECT_EQ(task->split_size(Split::valid), 2);
  EXPECT_EQ(task->split_size(Split::test), 2);
  EXPECT_EQ(task->effective_params().at("resolution"), 32);
  int k = 0;
  for (Split s : kSplits)
    for (int64_t i = 0; i < task->split_size(s); ++i, ++k) {
      const Example ex = task->example(s, i);
      ASSERT_EQ(ex.input.size(), 1024u);
      for (size_t p = 0; p < 1024; ++p) ASSERT_EQ(ex.input[p], images[k][p] + 1);
      ASSERT_EQ(ex.target.at(0), k % 3 == 0 ? 1 : 0);
    }
  // Explicit sizes within the files, errors outside them and for a wrong path.
  EXPECT_EQ(make_task("pathfinder", {{"source", "lra_files"}, {"path", root.string()}, {"train_size", 5}})
                ->split_size(Split::train),
            5);
  EXPECT_NE(usage_error("pathfinder", {{"source", "lra_files"}, {"path", root.string()}, {"train_size", 17}})
                .find("nearest valid value: 16"),
            std::string::npos);
  EXPECT_NE(usage_error("pathfinder", {{"source", "lra_files"}, {"path", (dir.path / "nope").string()}}).find("nope"),
            std::string::npos);
  EXPECT_NE(usage_error("pathfinder", {{"source", "lra_files"}}).find("path"), std::string::npos);
  EXPECT_NE(usage_error("pathfinder", {{"path", root.string()}}).find("source=lra_files"), std::string::npos);
  EXPECT_NE(usage_error("pathfinder", {{"source", "lra_files"}, {"path", root.string()}, {"resolution", 64}})
                .find("resolution"),
            std::string::npos);
  {
    std::ofstream bad(root / "metadata" / "11.npy");
    bad << "imgs/0 sample_0.png 0\n";
  }
  EXPECT_NE(usage_error("pathfinder", {{"source", "lra_files"}, {"path", root.string()}}).find("11.npy:1"),
            std::string::npos);
}

TEST(LraFiles, AanPairs) {
  TempDir dir;
  const std::string long_text(5000, 'x');
  auto write = [&](const std::string& name, int n) {
    std::ofstream f(dir.path / ("new_aan_pairs." + name + ".tsv"));
    for (int i = 0; i < n; ++i)
      f << (i % 2 ? "1.0" : "0") << "\tid" << i << "a\tid" << i << "b\t" << name << " doc " << i << " one\t"
        << (i == 0 ? long_text : name + " doc " + std::to_string(i) + " two") << "\n";
  };
  write("train", 7);
  write("eval", 3);
  write("test", 4);
  auto task = make_task("retrieval", {{"source", "lra_files"}, {"path", dir.path.string()}});
  EXPECT_EQ(task->split_size(Split::train), 7);
  EXPECT_EQ(task->split_size(Split::valid), 3);
  EXPECT_EQ(task->split_size(Split::test), 4);
  const Example ex = task->example(Split::valid, 1);
  EXPECT_EQ(ex.target.at(0), 1);
  const std::string one = "eval doc 1 one";
  ASSERT_EQ(ex.input.size(), one.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(ex.input[i], static_cast<uint8_t>(one[i]) + 1);
  EXPECT_EQ(task->example(Split::train, 0).target.at(0), 0);
  EXPECT_EQ(task->example(Split::train, 0).input2.size(), 1024u);  // cut to max_length
  const lra::AanPair p = lra::parse_aan_line("1\ta\tb\tx y\tz");
  EXPECT_EQ(p.label, 1);
  EXPECT_EQ(p.text1, "x y");
  EXPECT_THROW(lra::parse_aan_line("1\ta\tb\tx"), std::runtime_error);
  EXPECT_THROW(lra::parse_aan_line("2\ta\tb\tx\ty"), std::runtime_error);
  {
    std::ofstream f(dir.path / "new_aan_pairs.test.tsv");
    f << "0.0\tonly three\tcolumns\n";
  }
  EXPECT_NE(usage_error("retrieval", {{"source", "lra_files"}, {"path", dir.path.string()}}).find("test.tsv:1"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Every task: determinism, parameter errors, generation speed

struct TaskCase {
  std::string name;
  Json given;              // small settings for a quick construction
  std::string misspelled;  // an unknown key...
  std::string suggestion;  // ...and the nearest valid one
  Json out_of_range;       // one parameter outside its range
};

const std::vector<TaskCase>& task_cases() {
  static const std::vector<TaskCase> cases = {
      {"pathfinder", Json::object(), "contour_lenght", "contour_length", {{"contour_length", 1}}},
      {"image", Json::object(), "clutter_", "clutter", {{"noise", -1}}},
      {"text", Json::object(), "max_lenght", "max_length", {{"negation_window", 0}}},
      {"retrieval", Json::object(), "num_topic", "num_topics", {{"max_length", 100}}},
      {"mqar", Json::object(), "num_kv_pair", "num_kv_pairs", {{"power_a", 2.0}}},
      {"selective_copying", Json::object(), "num_dat", "num_data", {{"alphabet", 2}}},
      {"induction_heads", Json::object(), "induction_length", "induction_len", {{"vocab_size", 3}}},
      {"associative_recall", Json::object(), "num_key", "num_keys", {{"num_keys", 0}}},
      {"mad_recall", Json::object(), "vocab_sise", "vocab_size", {{"seq_len", 2}}},
      {"mad_noisy_recall", Json::object(), "frac_nois", "frac_noise", {{"frac_noise", 1.0}}},
      {"mad_fuzzy_recall", Json::object(), "k_motif_sise", "k_motif_size", {{"v_motif_size", 0}}},
      {"mad_selective_copying", Json::object(), "num_tokens_to_cpy", "num_tokens_to_copy", {{"vocab_size", 2}}},
      {"mad_memorization", {{"train_size", 64}}, "seq_lenn", "seq_len", {{"vocab_size", 3}}},
      {"mad_compression", Json::object(), "vocab_sizes", "vocab_size", {{"seq_len", 1}}},
  };
  return cases;
}

TEST(AllTasks, DeterministicForASeed) {
  for (const auto& c : task_cases()) {
    auto a = make_task(c.name, c.given, 7), b = make_task(c.name, c.given, 7), other = make_task(c.name, c.given, 8);
    int differ = 0;
    for (Split s : kSplits)
      for (int64_t i = 0; i < 12; ++i) {
        const Example ea = a->example(s, i), eb = b->example(s, i), ec = other->example(s, i);
        ASSERT_EQ(ea.input, eb.input) << c.name;
        ASSERT_EQ(ea.input2, eb.input2) << c.name;
        ASSERT_EQ(ea.target, eb.target) << c.name;
        ASSERT_EQ(ea.text, eb.text) << c.name;
        ASSERT_EQ(a->example(s, i).input, ea.input) << c.name << ": reading twice differs";
        differ += ea.input != ec.input;
      }
    EXPECT_GE(differ, 34) << c.name << ": another seed should give other data";
    // Splits are different streams.
    EXPECT_NE(a->example(Split::train, 0).input, a->example(Split::test, 0).input) << c.name;
    EXPECT_THROW(a->example(Split::train, -1), std::out_of_range) << c.name;
    EXPECT_THROW(a->example(Split::valid, a->split_size(Split::valid)), std::out_of_range) << c.name;
  }
}

TEST(AllTasks, ParameterErrorsNameTheProblem) {
  for (const auto& c : task_cases()) {
    const TaskSpec& spec = TaskRegistry::instance().get(c.name);
    bool has_preset = false;
    for (const auto& p : spec.params) has_preset |= p.name == "preset";
    EXPECT_TRUE(has_preset) << c.name;
    const std::string unknown = usage_error(c.name, {{c.misspelled, 1}});
    EXPECT_NE(unknown.find("did you mean '" + c.suggestion + "'"), std::string::npos) << c.name << ": " << unknown;
    const std::string range = usage_error(c.name, c.out_of_range);
    EXPECT_NE(range.find(c.out_of_range.begin().key()), std::string::npos) << c.name << ": " << range;
    EXPECT_FALSE(usage_error(c.name, {{"preset", "huge"}}).empty()) << c.name;
    // Every resolved run records the parameters it used, nulls filled in.
    const Json eff = make_task(c.name, c.given)->effective_params();
    for (const auto& [k, v] : eff.items()) EXPECT_FALSE(v.is_null()) << c.name << "." << k;
  }
  EXPECT_NE(usage_error("pathfinder", {{"resolution", 100}}).find("nearest valid value: 128"), std::string::npos);
  EXPECT_NE(usage_error("text", {{"min_length", 2000}}).find("min_length"), std::string::npos);
  EXPECT_NE(usage_error("induction_heads", {{"seq_len", 3}, {"induction_len", 2}}).find("induction_len"),
            std::string::npos);
}

TEST(AllTasks, GenerationSpeed) {
  using Clock = std::chrono::steady_clock;
  struct Speed {
    std::string name;
    Json given;
    int count;
  };
  const std::vector<Speed> runs = {
      {"pathfinder", {{"cache_mb", 0}}, 100},
      {"pathfinder", {{"resolution", 64}, {"cache_mb", 0}}, 20},
      {"pathfinder", {{"resolution", 128}, {"cache_mb", 0}}, 6},
      {"pathfinder", {{"resolution", 256}, {"cache_mb", 0}}, 20},
      {"image", Json::object(), 500},
      {"text", Json::object(), 500},
      {"text", {{"preset", "lra"}}, 200},
      {"retrieval", Json::object(), 500},
      {"mqar", Json::object(), 5000},
      {"mqar", {{"preset", "paper"}}, 2000},
      {"selective_copying", Json::object(), 5000},
      {"selective_copying", {{"preset", "paper"}}, 500},
      {"induction_heads", Json::object(), 5000},
      {"associative_recall", Json::object(), 5000},
      {"mad_recall", Json::object(), 5000},
      {"mad_fuzzy_recall", Json::object(), 5000},
      {"mad_selective_copying", Json::object(), 5000},
      {"mad_memorization", {{"vocab_size", 8192}}, 5000},
      {"mad_compression", Json::object(), 5000},
  };
  for (const auto& r : runs) {
    auto task = make_task(r.name, r.given, 11);
    const auto t0 = Clock::now();
    int64_t tokens = 0;
    for (int i = 0; i < r.count; ++i) tokens += static_cast<int64_t>(task->example(Split::valid, i % task->split_size(Split::valid)).input.size());
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("generation speed: %-20s %-28s %9.0f examples/s (%.1f M tokens/s)\n", r.name.c_str(),
                r.given.dump().c_str(), r.count / s, tokens / s / 1e6);
    EXPECT_GT(tokens, 0);
  }
}

}  // namespace

// Task::targets_in_input() says what the data shows: a task that declares next-token targets
// scores the following input token almost everywhere, one that does not, almost nowhere.
TEST(TargetsInInput, DeclarationMatchesTheData) {
  struct Case {
    const char* task;
    Json params;
  };
  const std::vector<Case> cases = {
      {"induction_heads", Json::object()},
      {"induction_heads", {{"train_targets", "answer"}}},
      {"induction_heads", {{"train_targets", "answer"}, {"induction_len", 3}, {"dedupe", false}}},
      {"associative_recall", Json::object()},
      {"associative_recall", {{"train_targets", "answer"}}},
      {"mqar", {{"train_size", 64}}},
      {"selective_copying", Json::object()},
  };
  for (const auto& c : cases) {
    auto task = make_task(c.task, c.params);
    int64_t scored = 0, next = 0;
    for (int64_t i = 0; i < 32; ++i) {
      const Example ex = task->example(i % 2 ? Split::train : Split::test, i / 2);
      for (size_t p = 0; p + 1 < ex.target.size() && p + 1 < ex.input.size(); ++p)
        if (ex.target[p] != kIgnoreLabel) scored++, next += ex.target[p] == ex.input[p + 1];
    }
    ASSERT_GT(scored + (task->targets_in_input() ? 0 : 1), 0) << c.task;
    const double share = scored ? static_cast<double>(next) / static_cast<double>(scored) : 0.0;
    EXPECT_EQ(task->targets_in_input(), share > 0.5) << c.task << " " << c.params.dump() << ": " << share;
  }
}
