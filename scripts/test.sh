#!/usr/bin/env bash
# Installs the dependencies, builds the `ci` preset and runs every test through CTest.
# Exits non-zero if anything fails; CTest's closing line is the summary CI reads.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh ci
ctest --preset ci --output-on-failure -j2
