// LD_PRELOAD fixture for test_sweep (issue 20, point 9): a process that allocates in the child of a
// fork() before exec() exits 97 with a message. malloc in such a child of a threaded process can
// deadlock on a lock another thread held at the fork; the sweep's cell runner must do all its
// allocating before fork(). Not usable under ASan/TSan, whose runtime owns malloc.
#include <pthread.h>
#include <unistd.h>

#include <cstddef>

extern "C" {
void* __libc_malloc(size_t size);
void* __libc_calloc(size_t count, size_t size);
void* __libc_realloc(void* p, size_t size);
}

namespace {

volatile int g_in_forked_child = 0;

void mark_child() { g_in_forked_child = 1; }

[[noreturn]] void refuse() {
  static const char kMessage[] = "fork_guard: malloc between fork() and exec() in the child\n";
  [[maybe_unused]] const ssize_t n = write(2, kMessage, sizeof kMessage - 1);
  _exit(97);
}

struct Register {
  Register() { pthread_atfork(nullptr, nullptr, mark_child); }
} g_register;

}  // namespace

extern "C" void* malloc(size_t size) noexcept {
  if (g_in_forked_child) refuse();
  return __libc_malloc(size);
}

extern "C" void* calloc(size_t count, size_t size) noexcept {
  if (g_in_forked_child) refuse();
  return __libc_calloc(count, size);
}

extern "C" void* realloc(void* p, size_t size) noexcept {
  if (g_in_forked_child) refuse();
  return __libc_realloc(p, size);
}
