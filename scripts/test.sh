#!/usr/bin/env bash
# Installs the dependencies, builds the `ci` preset and runs every test through CTest; then builds
# the `sanitize` preset (clang, ASan + UBSan, libFuzzer targets) and runs the suite and the fuzz
# targets (30 s each) under the sanitizers. ATTNBENCH_SKIP_SANITIZE=1 skips the second stage
# (about half the time). Exits non-zero if anything fails; CTest's closing lines are the summary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh ci
ctest --preset ci --output-on-failure -j2

if [[ "${ATTNBENCH_SKIP_SANITIZE:-0}" != "1" ]]; then
  bash scripts/build.sh sanitize
  ctest --preset sanitize --output-on-failure -j2
fi
