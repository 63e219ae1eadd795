// ab::parallel_for: coverage of the range, inline small ranges, nesting (parallel.hpp). Under the tsan
// preset (plain std::threads) a deliberately racy loop must be reported: see tests/CMakeLists.txt.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "attnbench/parallel.hpp"

namespace {

TEST(ParallelFor, CoversTheRangeExactlyOnce) {
  for (int64_t n : {0, 1, 7, 100, 1000, 12345})
    for (int64_t grain : {1, 3, 64, 5000}) {
      std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
      ab::parallel_for(n, grain, [&](int64_t b, int64_t e) {
        ASSERT_LT(b, e);
        for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << "n " << n << " grain " << grain << " i " << i;
    }
}

TEST(ParallelFor, SmallRangesRunInlineAndNestedLoopsComplete) {
  const auto caller = std::this_thread::get_id();
  ab::parallel_for(10, 10, [&](int64_t b, int64_t e) {
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 10);
    EXPECT_EQ(std::this_thread::get_id(), caller);
  });
  std::vector<int64_t> sums(64, 0);
  ab::parallel_for(64, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      std::atomic<int64_t> s{0};
      ab::parallel_for(1000, 10, [&](int64_t ib, int64_t ie) {
        int64_t local = 0;
        for (int64_t j = ib; j < ie; ++j) local += j;
        s += local;
      });
      sums[i] = s.load();
    }
  });
  for (int64_t s : sums) EXPECT_EQ(s, 999 * 1000 / 2);
}

TEST(ParallelFor, UsesMoreThanOneThreadWhenAllowed) {
  if (ab::parallel_threads() < 2) GTEST_SKIP() << "one thread configured";
  std::set<std::thread::id> ids;
  std::mutex mu;
  ab::parallel_for(1 << 12, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
    // Long enough that a TBB worker also picks up chunks before the caller runs out.
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  });
  EXPECT_GE(ids.size(), 2u);
}

// Unsynchronised writes to one variable from every chunk: the tsan preset runs this expecting
// ThreadSanitizer to report it (WILL_FAIL), which shows the stage can catch a race in our loops.
TEST(ParallelFor, DISABLED_RacyLoopForTheSanitizer) {
  int64_t total = 0;
  ab::parallel_for(1 << 20, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) total += i;
  });
  EXPECT_GT(total, 0);
}

}  // namespace
