#pragma once
// The one parallel loop of attnbench's hand-written kernels, variants and plugins.
// It runs on oneTBB. A build configured with -DATTNBENCH_PLAIN_THREADS=ON runs it on std::threads
// instead, so that ThreadSanitizer, which cannot see the synchronisation inside Debian's
// uninstrumented libtbb, checks our kernels (the `tsan` preset). Never call oneDNN from the body.
#include <cstdint>
#include <type_traits>
#include <utility>

namespace ab {

// Non-owning reference to a callable f(begin, end); valid while the callable lives.
class RangeFn {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RangeFn>>>
  RangeFn(F&& f)  // NOLINT: implicit, so a lambda can be passed directly
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, int64_t b, int64_t e) { (*static_cast<std::remove_reference_t<F>*>(o))(b, e); }) {}
  void operator()(int64_t b, int64_t e) const { call_(obj_, b, e); }

 private:
  void* obj_;
  void (*call_)(void*, int64_t, int64_t);
};

// Calls f(begin, end) on disjoint chunks covering [0, n), concurrently on up to
// parallel_threads() threads; runs f(0, n) inline when n <= grain. TBB does not split a chunk
// below about grain/2 items but may leave it larger than grain; chunk boundaries may differ
// between runs, so results must not depend on them.
void parallel_for(int64_t n, int64_t grain, RangeFn f);

// Threads parallel_for may use: the `--threads` setting.
int parallel_threads();

}  // namespace ab
