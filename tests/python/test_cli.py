"""The attnbench command line as a user meets it: exit codes, error messages that name the
nearest valid choice, and run files that validate against results/schema/run.schema.json.
Needs ATTNBENCH_BIN (set by CTest) and Debian's python3-jsonschema."""
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("ATTNBENCH_BIN", str(ROOT / "build" / "release" / "attnbench"))
sys.path.insert(0, str(ROOT / "scripts"))
import validate_run  # noqa: E402

# A ListOps configuration small enough for seconds of training.
SMALL = ["--set", "task.max_length=32", "--set", "task.train_size=256", "--set", "task.valid_size=64",
         "--set", "task.test_size=64", "--set", "model.layers=1", "--set", "model.d_model=16",
         "--set", "model.heads=2", "--set", "train.steps=20", "--set", "train.eval_every=10",
         "--threads", "2", "--quiet"]


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=600)


class UsageErrors(unittest.TestCase):
    def expect_usage_error(self, args, *fragments):
        r = run(*args)
        self.assertEqual(r.returncode, 2, f"{args}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        for f in fragments:
            self.assertIn(f, r.stderr, f"{args}: message lacks {f!r}:\n{r.stderr}")

    def train(self, *extra):
        with tempfile.TemporaryDirectory() as d:
            return ["train", "--variant", "softmax", "--task", "listops", "--out", f"{d}/r.json", *extra]

    def test_unknown_variant(self):
        self.expect_usage_error(["train", "--variant", "sofmax", "--task", "listops", "--out", "x.json"],
                                "unknown variant 'sofmax'", "did you mean 'softmax'")

    def test_unknown_task(self):
        self.expect_usage_error(["train", "--variant", "softmax", "--task", "listop", "--out", "x.json"],
                                "unknown task 'listop'", "did you mean 'listops'")

    def test_unknown_parameter(self):
        self.expect_usage_error(self.train("--set", "variant.dropuot=0.1"), "dropuot", "did you mean 'dropout'")
        self.expect_usage_error(self.train("--set", "task.max_len=64"), "did you mean 'max_length'")
        self.expect_usage_error(self.train("--set", "modle.layers=2"), "did you mean 'model'")

    def test_wrong_type(self):
        self.expect_usage_error(self.train("--set", "model.layers=two"), "model parameter 'layers' must be an integer")
        self.expect_usage_error(self.train("--set", "model.causal=maybe"), "must be true or false")
        self.expect_usage_error(self.train("--set", "model.pooling=max"), "valid: mean, cls")

    def test_out_of_range(self):
        self.expect_usage_error(self.train("--set", "model.layers=-1"), "out of range", "nearest valid value: 0")
        self.expect_usage_error(self.train("--set", "train.lr=-0.1"), "out of range")
        self.expect_usage_error(self.train("--set", "task.min_length=40", "--set", "task.max_length=32"),
                                "min_length = 40")

    def test_malformed_set(self):
        self.expect_usage_error(self.train("--set", "model.layers"), "malformed --set 'model.layers'")
        self.expect_usage_error(self.train("--set", "layers=2"), "malformed --set")

    def test_unknown_flag_and_command(self):
        self.expect_usage_error(self.train("--seeds", "3"), "unknown flag '--seeds'", "did you mean '--seed'")
        self.expect_usage_error(["trian"], "unknown command 'trian'", "did you mean 'train'")
        self.expect_usage_error(["train", "--variant", "softmax"], "--task is required")
        self.expect_usage_error(self.train("--threads", "x"), "--threads must be an integer")
        self.expect_usage_error(["list", "variant"], "did you mean 'variants'")
        self.expect_usage_error(["check", "--variant", "nothing_like_it"], "unknown variant")
        self.expect_usage_error(["describe", "sofmax"], "did you mean 'softmax'")

    def test_help_everywhere(self):
        for cmd in ["list", "describe", "check", "train", "data"]:
            r = run(cmd, "--help")
            self.assertEqual(r.returncode, 0, cmd)
            self.assertIn("usage: attnbench " + cmd, r.stdout)


class Commands(unittest.TestCase):
    def test_list_and_describe(self):
        r = run("list", "variants", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        names = [v["name"] for v in json.loads(r.stdout)]
        self.assertIn("softmax", names)
        r = run("list", "tasks", "--json")
        self.assertIn("listops", [t["name"] for t in json.loads(r.stdout)])
        r = run("describe", "softmax", "--json")
        d = json.loads(r.stdout)
        self.assertEqual(d["kind"], "variant")
        self.assertTrue(d["capabilities"]["causal"])
        self.assertGreater(d["cost_examples"][1]["flops"], d["cost_examples"][0]["flops"])
        for group in ["model", "train", "listops"]:
            r = run("describe", group, "--json")
            self.assertEqual(r.returncode, 0, group)
            self.assertTrue(json.loads(r.stdout)["params"])

    def test_check_passes_for_softmax(self):
        r = run("check", "--variant", "softmax", "--threads", "2")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("0 failed", r.stdout)

    def test_data_writes_json_lines(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "ex.jsonl"
            r = run("data", "--task", "listops", "--set", "task.max_length=64", "--count", "5", "--split", "valid",
                    "--out", str(out))
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = [json.loads(l) for l in out.read_text().splitlines()]
            self.assertEqual(len(lines), 5)
            for i, ex in enumerate(lines):
                self.assertEqual(ex["split"], "valid")
                self.assertEqual(ex["index"], i)
                self.assertLess(len(ex["input"]), 64)
                self.assertIn(ex["target"], range(10))
                self.assertEqual(len(ex["text"].split()), len(ex["input"]))
        with tempfile.TemporaryDirectory() as d:
            png = Path(d) / "grid.png"
            r = run("data", "--task", "pathfinder", "--count", "6", "--out", str(Path(d) / "p.jsonl"),
                    "--png", str(png))
            self.assertEqual(r.returncode, 0, r.stderr)
            head = png.read_bytes()[:24]
            self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            self.assertGreaterEqual(width * height, 6 * 64 * 64)  # six enlarged 32 px images
            r = run("data", "--task", "listops", "--count", "2", "--out", "-", "--png", str(Path(d) / "no.png"))
            self.assertEqual(r.returncode, 2)
            self.assertIn("image tasks", r.stderr)
            self.assertFalse((Path(d) / "no.png").exists())
        r = run("data", "--task", "listops", "--set", "task.max_length=64", "--set", "task.test_size=3",
                "--split", "test", "--count", "4", "--out", "-")
        self.assertEqual(r.returncode, 2)
        self.assertIn("nearest valid value: 3", r.stderr)

    def test_train_writes_a_valid_run_file(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "sub" / "run.json"
            r = run("train", "--variant", "softmax", "--task", "listops", "--seed", "5", "--out", str(out), *SMALL)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("test accuracy", r.stdout)
            doc = json.loads(out.read_text())
            errors = validate_run.errors_of(validate_run.load_validator(), doc)
            self.assertEqual(errors, [], errors)
            self.assertEqual(doc["status"], "ok")
            self.assertEqual(doc["seed"], 5)
            self.assertEqual(doc["task"]["params"]["min_length"], 8)  # derived default is recorded
            self.assertEqual(doc["model"]["layers"], 1)
            self.assertEqual(doc["train"]["steps"], 20)
            self.assertEqual(doc["metrics"]["steps"], 20)
            self.assertEqual(doc["metrics"]["curves"]["valid_step"], [10, 20])
            self.assertGreater(doc["metrics"]["peak_bytes"], 0)
            # softmax decodes with a KV cache: keys and values of every position, fp32, per layer
            self.assertEqual(doc["metrics"]["state_bytes"], 1 * 2 * doc["task"]["params"]["max_length"] * 16 * 4)
            self.assertGreater(doc["context"]["threads"], 0)
            self.assertFalse(list(Path(d, "sub").glob("*.tmp*")), "temporary file left behind")

    def test_train_tests_at_other_lengths(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "run.json"
            tiny = ["--set", "task.seq_len=32", "--set", "task.num_kv_pairs=2", "--set", "task.train_size=256",
                    "--set", "task.valid_size=32", "--set", "task.test_size=32", "--set", "model.layers=1",
                    "--set", "model.d_model=16", "--set", "model.heads=2", "--set", "train.steps=10",
                    "--set", "train.eval_every=10", "--threads", "2", "--quiet"]
            r = run("train", "--variant", "softmax", "--task", "mqar", "--out", str(out), *tiny,
                    "--set", "train.test_at=seq_len=64,num_kv_pairs=4;seq_len=128")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            doc = json.loads(out.read_text())
            self.assertEqual(validate_run.errors_of(validate_run.load_validator(), doc), [])
            splits = doc["metrics"]["test_splits"]
            self.assertEqual([(s["seq_len"], s["set"]) for s in splits],
                             [(64, {"seq_len": 64, "num_kv_pairs": 4}), (128, {"seq_len": 128})])
            for s in splits:
                self.assertGreaterEqual(s["test_accuracy"], 0.0)
                self.assertLessEqual(s["test_accuracy"], 1.0)
            # a key the task does not have is refused before any training, with the nearest name
            r = run("train", "--variant", "softmax", "--task", "mqar", "--out", str(out), *tiny,
                    "--set", "train.test_at=seq_lne=64")
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("did you mean 'seq_len'", r.stderr)

    def bench(self, d, *extra):
        out = Path(d) / "b.json"
        r = run("bench", "--variant", "softmax", "--seq-len", "16,32", "--d-model", "32", "--heads", "4",
                "--repetitions", "2", "--min-time", "0.005", "--no-calibration", "--threads", "2",
                "--out", str(out), *extra)
        return r, (json.loads(out.read_text()) if out.exists() else None)

    def test_bench_decode_and_fidelity(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "b.json"
            r = run("bench", "--variant", "softmax,linear_elu,fnet", "--seq-len", "16,64", "--d-model", "32",
                    "--heads", "4", "--repetitions", "2", "--no-calibration", "--threads", "2",
                    "--direction", "fwd,decode", "--fidelity", "--out", str(out))
            doc = json.loads(out.read_text())
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(validate_run.errors_of(validate_run.load_validator(), doc), [])
            decode = {(e["variant"], e["seq_len"]): e for e in doc["metrics"]["entries"] if e["direction"] == "decode"}
            # The KV cache holds 2 x length x d_model floats; the linear state is constant.
            self.assertEqual(decode[("softmax", 64)]["state_bytes"], 2 * 64 * 32 * 4)
            self.assertEqual(decode[("linear_elu", 16)]["state_bytes"], decode[("linear_elu", 64)]["state_bytes"])
            self.assertEqual(decode[("fnet", 16)]["status"], "unsupported")
            fid = {(f["variant"], f["seq_len"]): f["relative_error"] for f in doc["metrics"]["fidelity"]}
            self.assertLess(fid[("softmax", 64)], 1e-5)
            self.assertGreater(fid[("linear_elu", 64)], 1e-2)
            self.assertNotIn(("fnet", 64), fid)  # not attention-style

    def test_bench_writes_a_valid_file_that_compare_py_reads(self):
        with tempfile.TemporaryDirectory() as d:
            r, doc = self.bench(d, "--direction", "fwd,fwd_bwd,train_step")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(validate_run.errors_of(validate_run.load_validator(), doc), [])
            entries = doc["metrics"]["entries"]
            self.assertEqual(len(entries), 6)
            for e in entries:
                self.assertEqual(e["status"], "ok", e)
                self.assertLessEqual(e["min_ms"], e["median_ms"])
                self.assertLessEqual(e["median_ms"], e["max_ms"])
                self.assertGreater(e["peak_bytes"], 0)
                self.assertGreater(e["flops"], 0)
            self.assertEqual({s["direction"] for s in doc["metrics"]["scaling"]}, {"fwd", "fwd_bwd", "train_step"})
            # The revision is taken at build time (a stale configure-time one would name the wrong commit).
            self.assertRegex(doc["context"]["git_revision"], r"^([0-9a-f]{12}(\+dirty)?|unknown)$")
            head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
            if head.returncode == 0 and Path(BIN).resolve().is_relative_to(ROOT.resolve()):
                self.assertEqual(doc["context"]["git_revision"].split("+")[0], head.stdout.strip(),
                                 "the binary names another commit than HEAD: rebuild it")
            self.assertEqual(len(doc["context"]["load_avg"]), 3)
            self.assertGreaterEqual(doc["context"]["runnable_at_start"], 0)
            medians = [b for b in doc["benchmarks"] if b.get("aggregate_name") == "median"]
            self.assertEqual(len(medians), 6)
            compare = Path("/usr/share/benchmark/compare.py")
            if compare.exists():
                c = subprocess.run(["/usr/bin/python3", str(compare), "filters", str(Path(d) / "b.json"),
                                    "softmax/fwd/", "softmax/fwd_bwd/"], capture_output=True, text=True, timeout=120)
                self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
                self.assertIn("OVERALL_GEOMEAN", c.stdout)

    def test_bench_attend_only_times_the_kernel_without_projections(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "b.json"
            common = ["--seq-len", "32", "--d-model", "32", "--heads", "4", "--repetitions", "2", "--min-time",
                      "0.005", "--no-calibration", "--threads", "2", "--direction", "fwd,fwd_bwd"]
            r = run("bench", "--variant", "softmax_tiled,fnet", *common, "--attend-only", "--out", str(out))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            doc = json.loads(out.read_text())
            self.assertEqual(validate_run.errors_of(validate_run.load_validator(), doc), [])
            self.assertEqual(doc["model"]["scope"], "attend")
            got = {(e["variant"], e["direction"]): e for e in doc["metrics"]["entries"]}
            self.assertEqual(got[("fnet", "fwd")]["status"], "unsupported")
            self.assertIn("not attention-style", got[("fnet", "fwd")]["error"])
            tiled = got[("softmax_tiled", "fwd")]
            self.assertEqual((tiled["status"], tiled["scope"]), ("ok", "attend"))
            # FLOPs of QK^T and PV alone: 4 B N^2 D, without the 8 B N D^2 of the projections.
            self.assertEqual(tiled["flops"], 4 * 32 * 32 * 32)
            self.assertEqual(got[("softmax_tiled", "fwd_bwd")]["flops"], 3 * 4 * 32 * 32 * 32)
            self.assertTrue(any("/fwd/attend/" in b["name"] for b in doc["benchmarks"]))
            r = run("bench", "--variant", "softmax_tiled", *common[:-2], "--direction", "train_step", "--attend-only",
                    "--out", str(out))
            self.assertEqual(r.returncode, 2)
            self.assertIn("--attend-only measures the directions fwd and fwd_bwd", r.stderr)

    def test_bench_memory_guard_skips_instead_of_running(self):
        with tempfile.TemporaryDirectory() as d:
            r, doc = self.bench(d, "--memory-limit", "1000")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            for e in doc["metrics"]["entries"]:
                self.assertEqual(e["status"], "skipped")
                self.assertIn("memory limit", e["error"])
                self.assertGreater(e["predicted_bytes"], 1000)
                self.assertNotIn("median_ms", e)
            self.assertEqual(validate_run.errors_of(validate_run.load_validator(), doc), [])

    def test_bench_usage_errors(self):
        with tempfile.TemporaryDirectory() as d:
            r, _ = self.bench(d, "--direction", "fwd,backward")
            self.assertEqual(r.returncode, 2)
            self.assertIn("unknown direction 'backward'", r.stderr)

    def test_unwritable_output_is_a_failure_not_a_crash(self):
        r = run("train", "--variant", "softmax", "--task", "listops", "--out", "/proc/attnbench/run.json", *SMALL)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("cannot", r.stderr)


class ModelOptions(unittest.TestCase):
    """model.mixers (hybrids), model.kv_heads, model.short_conv, model.mlp, model.positions_for."""
    TINY = ["--task", "mqar", "--set", "task.seq_len=32", "--set", "task.num_kv_pairs=2", "--set", "task.train_size=64",
            "--set", "task.valid_size=16", "--set", "task.test_size=16", "--set", "model.d_model=16",
            "--set", "model.heads=2", "--set", "model.causal=true", "--set", "train.steps=6",
            "--set", "train.eval_every=3", "--set", "train.batch_size=8", "--threads", "1", "--quiet"]

    def test_hybrid_trains_on_mqar_and_records_its_schedule(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "run.json"
            r = run("train", "--variant", "mamba", "--out", str(out), *self.TINY, "--set", "model.layers=4",
                    "--set", "model.mixers=mamba,softmax", "--set", "model.kv_heads=1", "--set", "model.short_conv=4",
                    "--set", "model.mlp=false", "--set", "model.positions_for=attention", "--set", "variant.d_state=4")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            doc = json.loads(out.read_text())
            self.assertEqual(validate_run.errors_of(validate_run.load_validator(), doc), [])
            self.assertEqual(doc["status"], "ok")
            self.assertEqual(doc["variant"]["layers"], ["mamba", "softmax", "mamba", "softmax"])
            self.assertEqual(doc["model"]["mixers"], "mamba,softmax")
            self.assertEqual(doc["metrics"]["steps"], 6)
            # both mamba and softmax decode: the state is the sum over the four layers
            self.assertGreater(doc["metrics"]["state_bytes"], 0)
            r = run("train", "--variant", "softmax", "--out", str(out), *self.TINY, "--set", "model.layers=3")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(json.loads(out.read_text())["variant"]["layers"], ["softmax"] * 3)

    def test_bad_values_exit_2_before_training(self):
        cases = [(["--variant", "mamba", "--set", "model.mixers=mamba,sofmax"], "did you mean 'softmax'"),
                 (["--variant", "mamba", "--set", "model.mixers=mamba,softmax", "--set", "model.layers=3"],
                  "nearest valid model.layers: 2"),
                 (["--variant", "softmax", "--set", "model.mixers=mamba"], "does not name --variant 'softmax'"),
                 (["--variant", "softmax", "--set", "model.kv_heads=3", "--set", "model.heads=4"],
                  "nearest valid kv_heads: 2"),
                 (["--variant", "mamba", "--set", "model.kv_heads=1"], "attention-style"),
                 (["--variant", "softmax", "--set", "model.short_conv=-2"], "nearest valid value: 0"),
                 (["--variant", "softmax", "--set", "model.positions_for=attn"], "valid: all, attention")]
        with tempfile.TemporaryDirectory() as d:
            for extra, fragment in cases:
                out = Path(d) / "run.json"
                r = run("train", "--out", str(out), *self.TINY, *extra)
                self.assertEqual(r.returncode, 2, f"{extra}: {r.stdout}{r.stderr}")
                self.assertIn(fragment, r.stderr, extra)
                self.assertFalse(out.exists(), f"{extra}: refused, yet a run file was written")

    def test_describe_shows_the_keys(self):
        r = run("describe", "model", "--json")
        names = [p["name"] for p in json.loads(r.stdout)["params"]]
        for key in ["mixers", "kv_heads", "short_conv", "mlp", "positions_for"]:
            self.assertIn(key, names)
        r = run("list", "variants", "--json")
        style = {v["name"]: v["attention_style"] for v in json.loads(r.stdout)}
        self.assertTrue(style["softmax"])
        self.assertFalse(style["mamba"])


if __name__ == "__main__":
    unittest.main()
