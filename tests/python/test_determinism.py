"""Determinism: the same seed and thread count give bitwise-identical losses, accuracies, curves and
run files (timings, dates and paths aside) — shown by training one variant of every registered
family twice. Needs ATTNBENCH_BIN (set by CTest)."""
import json
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("ATTNBENCH_BIN", str(ROOT / "build" / "release" / "attnbench"))

TINY = ["--set", "task.max_length=32", "--set", "task.train_size=128", "--set", "task.valid_size=32",
        "--set", "task.test_size=32", "--set", "model.layers=2", "--set", "model.d_model=16",
        "--set", "model.heads=2", "--set", "train.steps=8", "--set", "train.eval_every=4",
        "--set", "model.dropout=0.1", "--threads", "2", "--quiet"]


def timing_free(doc):
    """The run file without what may differ between identical runs: times, dates, the machine's load
    and the output path."""
    doc = json.loads(json.dumps(doc))
    for k in list(doc["metrics"]):
        if "second" in k or k == "peak_rss_bytes":
            del doc["metrics"][k]
    for k in ("date", "command_line", "load_avg", "runnable_at_start"):
        doc["context"].pop(k, None)
    return doc


class Determinism(unittest.TestCase):
    def test_every_family_trains_bitwise_identically_twice(self):
        r = subprocess.run([BIN, "list", "variants", "--json"], capture_output=True, text=True, check=True)
        first_of_family = {}
        for v in sorted(json.loads(r.stdout), key=lambda v: v["name"]):
            if v["origin"] == "built-in":
                first_of_family.setdefault(v["family"], v)
        self.assertGreaterEqual(len(first_of_family), 5)
        with tempfile.TemporaryDirectory() as d:
            for family, v in sorted(first_of_family.items()):
                with self.subTest(family=family, variant=v["name"]):
                    causal = [] if v["capabilities"]["bidirectional"] else ["--set", "model.causal=true"]
                    docs = []
                    for attempt in (1, 2):
                        out = Path(d) / f"{v['name']}-{attempt}.json"
                        r = subprocess.run([BIN, "train", "--variant", v["name"], "--task", "listops", *TINY,
                                            *causal, "--out", str(out)], capture_output=True, text=True, timeout=300)
                        self.assertEqual(r.returncode, 0, r.stderr)
                        docs.append(json.loads(out.read_text()))
                    self.assertEqual(docs[0]["status"], "ok", docs[0].get("error"))
                    a, b = timing_free(docs[0]), timing_free(docs[1])
                    self.assertEqual(a["metrics"]["curves"], b["metrics"]["curves"])
                    self.assertEqual(a, b)


if __name__ == "__main__":
    unittest.main()
