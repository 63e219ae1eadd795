// ab::parallel_for on oneTBB, or on plain std::threads in a ThreadSanitizer build (parallel.hpp).
#include "attnbench/parallel.hpp"

#include <algorithm>

#include "core/backend/onednn.hpp"

#if ATTNBENCH_PLAIN_THREADS
#include <thread>
#include <vector>
#else
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#endif

namespace ab {

int parallel_threads() { return kernels::threads(); }

void parallel_for(int64_t n, int64_t grain, RangeFn f) {
  grain = std::max<int64_t>(grain, 1);
  if (n <= grain) {
    if (n > 0) f(0, n);
    return;
  }
#if ATTNBENCH_PLAIN_THREADS
  // Chunk c runs on thread c mod T (the caller is thread 0): every thread gets work however fast
  // the others start, and start and join are the only synchronisation, so TSan sees any two
  // chunks that touch the same memory as concurrent.
  const int64_t chunks = (n + grain - 1) / grain;
  const int64_t workers = std::min<int64_t>(std::max(parallel_threads(), 1), chunks);
  auto work = [&](int64_t t) {
    for (int64_t c = t; c < chunks; c += workers) f(c * grain, std::min(n, (c + 1) * grain));
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < workers; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& t : pool) t.join();
#else
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, grain),
                    [&](const tbb::blocked_range<int64_t>& r) { f(r.begin(), r.end()); });
#endif
}

}  // namespace ab
