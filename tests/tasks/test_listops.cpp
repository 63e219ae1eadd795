// ListOps: every label re-derived by an evaluator written separately from the generator (an
// explicit stack over the readable text, sorting for the median), plus the structural limits,
// uniqueness, determinism, LRA's label and length statistics and the parameter errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "attnbench/params.hpp"
#include "attnbench/task.hpp"

using namespace ab;

namespace {

// What the evaluator learns about one expression.
struct Parsed {
  bool ok = false;
  std::string error;
  int value = -1;
  int depth = 0;      // deepest node, the root at depth 1
  int min_args = 0;   // fewest / most arguments of any operator (0 if there is none)
  int max_args = 0;
  std::vector<std::string> tokens;
};

Parsed evaluate(const std::string& text) {
  Parsed out;
  std::istringstream in(text);
  for (std::string t; in >> t;) out.tokens.push_back(t);
  struct Frame {
    std::string op;
    std::vector<int> args;
  };
  std::vector<Frame> stack;
  bool have_root = false;
  auto fail = [&](std::string why) {
    out.ok = false;
    out.error = std::move(why);
    return out;
  };
  auto deliver = [&](int v) {  // hands a finished value to its parent, or makes it the root
    if (!stack.empty()) {
      stack.back().args.push_back(v);
    } else {
      have_root = true;  // a later token is then an error, caught at the top of the loop
      out.value = v;
    }
  };
  for (const std::string& t : out.tokens) {
    if (have_root) return fail("token after the complete expression: " + t);
    if (t == "[MIN" || t == "[MAX" || t == "[MED" || t == "[SM") {
      stack.push_back({t.substr(1), {}});
      out.depth = std::max<int>(out.depth, static_cast<int>(stack.size()));
    } else if (t.size() == 1 && t[0] >= '0' && t[0] <= '9') {
      out.depth = std::max<int>(out.depth, static_cast<int>(stack.size()) + 1);
      deliver(t[0] - '0');
    } else if (t == "]") {
      if (stack.empty()) return fail("']' without an operator");
      Frame f = std::move(stack.back());
      stack.pop_back();
      if (f.args.empty()) return fail("operator without arguments");
      const int n = static_cast<int>(f.args.size());
      out.min_args = out.min_args == 0 ? n : std::min(out.min_args, n);
      out.max_args = std::max(out.max_args, n);
      std::vector<int> a = f.args;
      std::sort(a.begin(), a.end());
      int v = 0;
      if (f.op == "MIN") v = a.front();
      else if (f.op == "MAX") v = a.back();
      else if (f.op == "MED") v = n % 2 == 1 ? a[n / 2] : (a[n / 2 - 1] + a[n / 2]) / 2;
      else {
        int s = 0;
        for (int x : a) s += x;
        v = s % 10;
      }
      deliver(v);
    } else {
      return fail("unknown token: " + t);
    }
  }
  if (!stack.empty()) return fail("unclosed operator");
  if (!have_root) return fail("empty expression");
  out.ok = true;
  return out;
}

// The token ids the task promises, written out here rather than taken from the generator.
int expected_id(const std::string& t) {
  static const std::map<std::string, int> ids = {
      {"0", 1},     {"1", 2},     {"2", 3},     {"3", 4},    {"4", 5}, {"5", 6}, {"6", 7}, {"7", 8},
      {"8", 9},     {"9", 10},    {"[MIN", 11}, {"[MAX", 12}, {"[MED", 13}, {"[SM", 14}, {"]", 15}};
  auto it = ids.find(t);
  return it == ids.end() ? -1 : it->second;
}

std::unique_ptr<Task> make_listops(const Json& given, uint64_t seed, Json* resolved = nullptr) {
  const TaskSpec& spec = TaskRegistry::instance().get("listops");
  Json params = resolve_params(spec.params, given, "task 'listops'");
  if (resolved) *resolved = params;
  return spec.make(params, seed);
}

constexpr Split kSplits[] = {Split::train, Split::valid, Split::test};

}  // namespace

TEST(ListOpsEvaluator, HandWrittenExpressions) {
  EXPECT_EQ(evaluate("[MED 3 4 ]").value, 3);  // numpy median 3.5, truncated
  EXPECT_EQ(evaluate("[MED 1 2 3 9 ]").value, 2);
  EXPECT_EQ(evaluate("[MED 9 1 5 ]").value, 5);
  EXPECT_EQ(evaluate("[SM 9 9 ]").value, 8);
  EXPECT_EQ(evaluate("[MIN 5 [MAX 1 7 ] ]").value, 5);
  EXPECT_EQ(evaluate("7").value, 7);
  const Parsed p = evaluate("[MAX 4 [MIN 3 1 ] [SM 2 3 4 ] ]");
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.value, 9);
  EXPECT_EQ(p.depth, 3);
  EXPECT_EQ(p.min_args, 2);
  EXPECT_EQ(p.max_args, 3);
  EXPECT_FALSE(evaluate("[MAX 4 3").ok);
  EXPECT_FALSE(evaluate("[MAX 4 3 ] ]").ok);
  EXPECT_FALSE(evaluate("4 3").ok);
}

TEST(ListOps, SpecAndShape) {
  Json resolved;
  auto task = make_listops({{"max_length", 256}, {"train_size", 10}, {"valid_size", 5}, {"test_size", 5}}, 3,
                           &resolved);
  EXPECT_TRUE(resolved.at("min_length").is_null());  // resolved by the task: max_length / 4
  EXPECT_EQ(task->kind(), TaskKind::classify);
  EXPECT_EQ(task->vocab_size(), 16);
  EXPECT_EQ(task->num_classes(), 10);
  EXPECT_EQ(task->seq_len(), 256);
  EXPECT_EQ(task->pad_id(), 0);
  EXPECT_EQ(task->split_size(Split::train), 10);
  EXPECT_EQ(task->split_size(Split::valid), 5);
  EXPECT_EQ(task->split_size(Split::test), 5);
  EXPECT_THROW(task->example(Split::valid, 5), std::out_of_range);
  EXPECT_THROW(task->example(Split::train, -1), std::out_of_range);

  const TaskSpec& spec = TaskRegistry::instance().get("listops");
  const Json defaults = resolve_params(spec.params, Json::object(), "task 'listops'");
  EXPECT_EQ(defaults.at("max_length"), 2000);
  EXPECT_EQ(defaults.at("max_depth"), 10);
  EXPECT_EQ(defaults.at("max_args"), 10);
  EXPECT_EQ(defaults.at("train_size"), 96000);
  EXPECT_EQ(defaults.at("valid_size"), 2000);
  EXPECT_EQ(defaults.at("test_size"), 2000);
}

TEST(ListOps, EveryExampleMatchesTheIndependentEvaluator) {
  const int64_t max_length = 256, min_length = 256 / 4, max_depth = 10, max_args = 10;
  auto task = make_listops({{"max_length", max_length}, {"train_size", 3000}, {"valid_size", 500}, {"test_size", 500}},
                           11);
  std::set<std::vector<int32_t>> seen;
  int64_t count = 0, checked_ok = 0;
  for (Split s : kSplits) {
    for (int64_t i = 0; i < task->split_size(s); ++i) {
      const Example ex = task->example(s, i);
      const Parsed p = evaluate(ex.text);
      ++count;
      ASSERT_TRUE(p.ok) << split_name(s) << " " << i << ": " << p.error << "\n" << ex.text;
      ASSERT_EQ(ex.target.size(), 1u);
      ASSERT_EQ(ex.target[0], p.value) << split_name(s) << " " << i << ": " << ex.text;
      ASSERT_TRUE(ex.input2.empty());
      ASSERT_EQ(ex.input.size(), p.tokens.size()) << ex.text;
      for (size_t k = 0; k < ex.input.size(); ++k)
        ASSERT_EQ(ex.input[k], expected_id(p.tokens[k])) << "token " << k << " of " << ex.text;
      const int64_t len = static_cast<int64_t>(ex.input.size());
      ASSERT_GT(len, min_length);
      ASSERT_LT(len, max_length);
      ASSERT_LE(p.depth, max_depth);
      ASSERT_GE(p.min_args, 2);
      ASSERT_LE(p.max_args, max_args);
      ASSERT_TRUE(seen.insert(ex.input).second) << "repeated tree at " << split_name(s) << " " << i;
      ++checked_ok;
    }
  }
  EXPECT_EQ(count, 4000);
  EXPECT_EQ(checked_ok, 4000);
}

TEST(ListOps, NonDefaultKnobsAreRespected) {
  const int64_t max_length = 120, min_length = 40, max_depth = 6, max_args = 4;
  auto task = make_listops({{"max_length", max_length}, {"min_length", min_length}, {"max_depth", max_depth},
                            {"max_args", max_args}, {"train_size", 500}, {"valid_size", 50}, {"test_size", 50}},
                           5);
  int max_seen_args = 0, max_seen_depth = 0;
  for (Split s : kSplits)
    for (int64_t i = 0; i < task->split_size(s); ++i) {
      const Example ex = task->example(s, i);
      const Parsed p = evaluate(ex.text);
      ASSERT_TRUE(p.ok) << p.error;
      ASSERT_EQ(ex.target[0], p.value) << ex.text;
      ASSERT_GT(static_cast<int64_t>(ex.input.size()), min_length);
      ASSERT_LT(static_cast<int64_t>(ex.input.size()), max_length);
      ASSERT_LE(p.depth, max_depth);
      ASSERT_GE(p.min_args, 2);
      ASSERT_LE(p.max_args, max_args);
      max_seen_args = std::max(max_seen_args, p.max_args);
      max_seen_depth = std::max(max_seen_depth, p.depth);
    }
  EXPECT_EQ(max_seen_args, max_args);  // the limits are reached, not just respected
  EXPECT_EQ(max_seen_depth, max_depth);
}

TEST(ListOps, DeterministicForASeed) {
  const Json given = {{"max_length", 256}, {"train_size", 300}, {"valid_size", 50}, {"test_size", 50}};
  auto a = make_listops(given, 7), b = make_listops(given, 7), c = make_listops(given, 8);
  int differ = 0;
  for (Split s : kSplits)
    for (int64_t i = 0; i < a->split_size(s); ++i) {
      const Example ea = a->example(s, i), eb = b->example(s, i), ec = c->example(s, i);
      ASSERT_EQ(ea.input, eb.input);
      ASSERT_EQ(ea.target, eb.target);
      ASSERT_EQ(ea.text, eb.text);
      differ += ea.input != ec.input;
      // Reading an example twice gives the same thing (no hidden state).
      ASSERT_EQ(a->example(s, i).input, ea.input);
    }
  EXPECT_GT(differ, 390);  // a different seed gives different trees (a coincidence is astronomically rare)
}

TEST(ListOps, LabelAndLengthStatisticsAtLraLengths) {
  // tasks.md §3.2: labels 0 and 9 about 17.5% each, 1..8 about 7.4-9.0%; median length ~984.
  auto task = make_listops({{"train_size", 2800}, {"valid_size", 100}, {"test_size", 100}}, 1);
  std::vector<int> label_count(10, 0);
  std::vector<int64_t> lengths;
  int at_depth_cap = 0;
  for (Split s : kSplits)
    for (int64_t i = 0; i < task->split_size(s); ++i) {
      const Example ex = task->example(s, i);
      ++label_count.at(ex.target.at(0));
      lengths.push_back(static_cast<int64_t>(ex.input.size()));
      int depth = 0, open = 0;  // nesting from the ids alone: 11..14 open, 15 closes
      for (int32_t t : ex.input) {
        if (t >= 11 && t <= 14) ++open;
        else if (t == 15) --open;
        else depth = std::max(depth, open + 1);
      }
      at_depth_cap += depth == 10;
    }
  const double n = static_cast<double>(lengths.size());
  ASSERT_EQ(lengths.size(), 3000u);
  for (int d = 0; d < 10; ++d) {
    const double share = 100.0 * label_count[d] / n;
    if (d == 0 || d == 9) {
      EXPECT_NEAR(share, 17.5, 3.0) << "label " << d;
    } else {
      EXPECT_GE(share, 4.0) << "label " << d;
      EXPECT_LE(share, 13.0) << "label " << d;
    }
  }
  std::sort(lengths.begin(), lengths.end());
  const int64_t median = lengths[lengths.size() / 2];
  EXPECT_GE(median, 800);
  EXPECT_LE(median, 1200);
  EXPECT_GT(lengths.front(), 500);
  EXPECT_LT(lengths.back(), 2000);
  EXPECT_GT(lengths.back(), 1800);  // the whole window is used, not only its low end
  EXPECT_GE(at_depth_cap, 0.98 * n);  // §3.2: every accepted tree reaches the depth cap
}

TEST(ListOps, ParameterErrors) {
  EXPECT_THROW(make_listops({{"min_length", 1999}, {"train_size", 1}, {"valid_size", 1}, {"test_size", 1}}, 0),
               UsageError);
  EXPECT_THROW(make_listops({{"max_length", 100}, {"min_length", 100}}, 0), UsageError);
  try {
    make_listops({{"max_length", 100}, {"min_length", 99}}, 0);
    ADD_FAILURE() << "min_length = max_length - 1 was accepted";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("99"), std::string::npos) << msg;
    EXPECT_NE(msg.find("100"), std::string::npos) << msg;
  }
  try {
    make_listops({{"max_len", 512}}, 0);
    ADD_FAILURE() << "an unknown key was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("max_length"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_listops({{"train_size", "many"}}, 0), UsageError);
  EXPECT_THROW(make_listops({{"max_depth", 2.5}}, 0), UsageError);
  EXPECT_THROW(make_listops({{"max_length", 4}}, 0), UsageError);
  EXPECT_THROW(make_listops({{"max_args", 1}}, 0), UsageError);
  EXPECT_THROW(make_listops({{"train_size", 0}}, 0), UsageError);
  // Strings from the command line are parsed.
  auto t = make_listops({{"max_length", "64"}, {"train_size", "3"}, {"valid_size", "1"}, {"test_size", "1"}}, 0);
  EXPECT_EQ(t->seq_len(), 64);
  EXPECT_EQ(t->split_size(Split::train), 3);
}

TEST(ListOps, ImpossibleSettingsFailInsteadOfHanging) {
  // max_depth 1 only makes single digits: caught before drawing anything.
  EXPECT_THROW(make_listops({{"max_length", 8}, {"max_depth", 1}, {"train_size", 1}, {"valid_size", 1},
                             {"test_size", 1}},
                            0),
               UsageError);
  try {
    // Window (8, 10) = {9}: with max_args 2 every length is 1 mod 3 (1, 4, 7, 10, ...), so 9 never occurs
    // and only the 1,000,000-draw guard can stop the search.
    make_listops({{"max_length", 10}, {"min_length", 8}, {"max_args", 2}, {"train_size", 1}, {"valid_size", 1},
                  {"test_size", 1}},
                 0);
    ADD_FAILURE() << "an unreachable length window was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("min_length"), std::string::npos) << e.what();
  }
  try {
    // Depth 2, two arguments: only 4 * 100 distinct trees of length 4, fewer than requested.
    make_listops({{"max_length", 8}, {"min_length", 2}, {"max_depth", 2}, {"max_args", 2}, {"train_size", 1000},
                  {"valid_size", 1}, {"test_size", 1}},
                 0);
    ADD_FAILURE() << "more distinct trees than exist were promised";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("400 distinct"), std::string::npos) << e.what();
  }
  // Exactly as many as exist is fine.
  auto t = make_listops({{"max_length", 8}, {"min_length", 2}, {"max_depth", 2}, {"max_args", 2}, {"train_size", 398},
                         {"valid_size", 1}, {"test_size", 1}},
                        0);
  std::set<std::string> texts;
  for (Split s : kSplits)
    for (int64_t i = 0; i < t->split_size(s); ++i) texts.insert(t->example(s, i).text);
  EXPECT_EQ(texts.size(), 400u);
}
