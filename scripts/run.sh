#!/usr/bin/env bash
# The main job: install the dependencies, build the release binary, run the `quick` sweep
# (a few variants trained on short ListOps, plus a speed and memory sweep) and write its report.
# Extra arguments go to `attnbench sweep`, e.g. scripts/run.sh --jobs 2
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build.sh release

out=results/out/quick
rm -rf "$out"  # a fresh run: never report stale cells from an earlier build
build/release/attnbench sweep tasks/suites/quick.json --out "$out" "$@"
build/release/attnbench report "$out" --out "$out/report.html" --title "attnbench quick sweep"

echo
echo "report: $out/report.html (Markdown twin: $out/report.md); run files: $out/runs/"
