#!/usr/bin/env bash
# Installs the dependencies, then configures and builds one CMake preset (default: release).
# Usage: scripts/build.sh [release|debug|ci|sanitize|tsan]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

preset="${1:-release}"

bash scripts/setup.sh
cmake --preset "$preset"
cmake --build --preset "$preset"

echo "built: build/$preset/attnbench"
