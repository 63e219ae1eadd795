#!/usr/bin/env bash
# Installs the dependencies, builds the `ci` preset and runs every test through CTest; then builds
# the `sanitize` preset (clang, ASan + UBSan, libFuzzer targets) and runs the suite and the fuzz
# targets (30 s each) under the sanitizers; then the `tsan` preset (ThreadSanitizer, our parallel
# loops on std::threads) and runs the C++ tests under it. ATTNBENCH_SKIP_SANITIZE=1 skips the
# sanitizer stages (more than half the time). Exits non-zero if anything fails; CTest's closing
# lines are the summary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh ci
ctest --preset ci --output-on-failure -j2

if [[ "${ATTNBENCH_SKIP_SANITIZE:-0}" != "1" ]]; then
  bash scripts/build.sh sanitize
  ctest --preset sanitize --output-on-failure -j2
  bash scripts/build.sh tsan
  ctest --preset tsan --output-on-failure -j2
fi
