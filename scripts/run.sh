#!/usr/bin/env bash
# The main job: install the dependencies, build the release binary, train softmax attention on
# ListOps (short sequences, small model, 300 steps), then print a summary of the run file.
# Extra arguments are appended to the train command, e.g. scripts/run.sh --seed 1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

out=results/out/quick/listops-softmax.json

bash scripts/build.sh release

# A failed run still writes its record (status + error), so summarise before passing the code on.
rc=0
rm -f "$out"  # never summarise a stale file from an earlier run
mkdir -p "$(dirname "$out")"
build/release/attnbench train --variant softmax --task listops \
  --set task.max_length=128 --set model.layers=2 --set model.d_model=64 --set train.steps=300 \
  --threads 2 --out "$out" "$@" || rc=$?

if [[ ! -f "$out" ]]; then
  echo "no run file was written (exit code $rc)" >&2
  exit "$((rc == 0 ? 1 : rc))"
fi

/usr/bin/python3 - "$out" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
metrics = run.get("metrics") or {}
print(f"status: {run.get('status')}")
if run.get("error"):
    print(f"error: {run['error']}")
for key in ("test_accuracy", "best_valid_accuracy", "train_seconds", "tokens_per_second", "peak_bytes"):
    if key in metrics:
        print(f"{key}: {metrics[key]}")
PY
echo "run file: $out"
exit "$rc"
