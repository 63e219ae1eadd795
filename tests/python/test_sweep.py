"""attnbench sweep as a user meets it: expansion, dry runs, failures recorded per cell, resume
after SIGKILL, shards. Needs ATTNBENCH_BIN (set by CTest)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("ATTNBENCH_BIN", str(ROOT / "build" / "release" / "attnbench"))
sys.path.insert(0, str(ROOT / "scripts"))
import validate_run  # noqa: E402

TINY = {"task.max_length": 32, "task.train_size": 256, "task.valid_size": 32, "task.test_size": 32,
        "model.layers": 1, "model.d_model": 16, "model.heads": 2, "train.eval_every": 10}


def spec(d, grid, steps=10, **extra):
    s = {"name": "t", "base": {"task": "listops", "variant": "softmax", "threads": 1,
                               "set": dict(TINY, **{"train.steps": steps})}, "grid": grid, **extra}
    p = Path(d) / "spec.json"
    p.write_text(json.dumps(s))
    return p


def sweep(*args, timeout=600):
    return subprocess.run([BIN, "sweep", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def cell_ids(spec_path):
    r = sweep(spec_path, "--dry-run")
    assert r.returncode == 0, r.stderr
    return sorted(l for l in r.stdout.splitlines() if l and not l.startswith(" ") and not l.endswith(" cells"))


def runs(out):
    files = sorted((Path(out) / "runs").glob("*.json"))
    validator = validate_run.load_validator()
    docs = {}
    for f in files:
        doc = json.loads(f.read_text())  # a corrupt file fails here
        assert validate_run.errors_of(validator, doc) == [], (f, validate_run.errors_of(validator, doc))
        docs[f.stem] = doc
    return docs


class Sweep(unittest.TestCase):
    def test_dry_run_expands_the_grid_with_overrides_and_exclusions(self):
        with tempfile.TemporaryDirectory() as d:
            p = spec(d, {"seed": [0, 1, 2], "model.dropout": [0.0, 0.1]},
                     exclude=[{"seed": 2, "model.dropout": 0.1}],
                     per_task={"listops": {"train.lr": 0.002}})
            r = sweep(p, "--dry-run")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("5 cells", r.stdout)
            self.assertIn("--set train.lr=0.002", r.stdout)
            self.assertEqual(len(set(cell_ids(p))), 5)
            # Ids are content hashes: the same spec gives the same ids.
            self.assertEqual(cell_ids(p), cell_ids(p))

    def test_bench_cells_pass_their_settings_on(self):
        with tempfile.TemporaryDirectory() as d:
            bench = {"variants": ["softmax_tiled"], "seq_len": [64], "direction": ["fwd"], "attend_only": True,
                     "causal": True}
            r = sweep(spec(d, {"seed": [0]}, bench=bench), "--dry-run")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("--causal --attend-only", r.stdout)
            r = sweep(spec(d, {"seed": [0]}, bench=dict(bench, attend_only="yes")), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("bench.attend_only must be true or false", r.stderr)

    def test_bad_specs_are_usage_errors(self):
        with tempfile.TemporaryDirectory() as d:
            bad = Path(d) / "bad.json"
            bad.write_text('{"name": "x",\n  "grid": {"seed": [0, 1,]}\n}')
            r = sweep(bad, "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("line 2", r.stderr)
            r = sweep(spec(d, {"seed": []}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("empty list", r.stderr)
            r = sweep(spec(d, {"sed": [0]}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("sed", r.stderr)
            r = sweep(spec(d, {"seed": [0]}, grdi={}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("did you mean 'grid'", r.stderr)
            r = sweep(spec(d, {"model.layers": [0, -1]}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("model.layers=-1", r.stderr)
            r = sweep(spec(d, {"seed": [0]}), "--shard", "2/2", "--dry-run")
            self.assertEqual(r.returncode, 2)

    def test_a_settings_axis_applies_each_object_together(self):
        with tempfile.TemporaryDirectory() as d:
            settings = [{"model.layers": 1}, {"model.layers": 2, "train.lr": 0.002}, {"task.max_length": 48}]
            p = spec(d, {"setting": settings, "seed": [0, 1]})
            r = sweep(p, "--dry-run")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("6 cells", r.stdout)  # 3 settings x 2 seeds, never 2 x 2 x 2 combinations
            self.assertEqual(r.stdout.count("--set train.lr=0.002"), 2)
            self.assertEqual(r.stdout.count("--set task.max_length=48"), 2)
            for bad in ({"model.layers": [{"model.layers": 1}]}, {"setting": [{"model.layers": 1}, 2]},
                        {"setting": [{}]}, {"setting": [{"model.layerz": 1}]}):
                r = sweep(spec(d, bad), "--dry-run")
                self.assertEqual(r.returncode, 2, (bad, r.stderr))

    def test_protocol_names_grid_axes_and_a_threshold(self):
        with tempfile.TemporaryDirectory() as d:
            grid = {"train.lr": [1e-3, 3e-3], "seed": [0, 1]}
            ok = spec(d, grid, protocol={"tuned": ["train.lr"], "solved": 0.99})
            self.assertEqual(len(cell_ids(ok)), 4)
            r = sweep(spec(d, grid, protocol={"tuned": ["train.lrr"]}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("protocol.tuned", r.stderr)
            self.assertIn("did you mean 'train.lr'", r.stderr)
            r = sweep(spec(d, grid, protocol={"tuned": ["train.lr"], "solved": 99}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("protocol.solved", r.stderr)
            r = sweep(spec(d, grid, protocol={"tuned": ["train.lr"], "solvd": 0.9}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("solvd", r.stderr)

    def test_cases_bundle_settings_and_reproductions_are_checked(self):
        with tempfile.TemporaryDirectory() as d:
            def spec(d, grid, **extra):  # the task's own settings come with each case
                p = Path(d) / "spec.json"
                p.write_text(json.dumps({"name": "t", "base": {"variant": "softmax", "threads": 1, "set": {
                    "model.layers": 1, "model.d_model": 16, "model.heads": 2}}, "grid": grid, **extra}))
                return p
            grid = {"case": [{"task": "listops", "task.max_length": 32, "task.train_size": 64},
                             {"task": "mqar", "task.seq_len": 64, "task.num_kv_pairs": 4}]}
            ok = {"id": "r", "source": "paper", "where": {"task": "mqar"}, "expect": ["acc(softmax) >= 0.9"]}
            r = sweep(spec(d, grid, reproductions=[ok], protocol_notes="scaled down"), "--dry-run")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("softmax.mqar.", r.stdout)
            self.assertIn("softmax.listops.", r.stdout)
            for bad, word in (([dict(ok, expect=[])], "expect"), ([dict(ok, expct=["x"])], "expct"),
                              ([{"source": "paper", "expect": ["x"]}], "id")):
                r = sweep(spec(d, grid, reproductions=bad), "--dry-run")
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(word, r.stderr)
            r = sweep(spec(d, {"case": [1]}), "--dry-run")
            self.assertEqual(r.returncode, 2)
            self.assertIn("a 'case' must be an object of settings", r.stderr)

    def test_failures_are_recorded_and_the_sweep_goes_on(self):
        with tempfile.TemporaryDirectory() as d:
            # A cell that cannot finish in time, one whose memory limit is far too small, one ok.
            p = spec(d, {"train.steps": [10, 100000]})
            out = Path(d) / "out"
            r = sweep(p, "--out", out, "--time-limit", "3")
            self.assertEqual(r.returncode, 0, r.stderr)
            docs = runs(out)
            self.assertEqual(sorted(doc["status"] for doc in docs.values()), ["ok", "timeout"])
            timeout = next(doc for doc in docs.values() if doc["status"] == "timeout")
            self.assertIn("time limit", timeout["error"])
            self.assertNotIn("test_accuracy", timeout["metrics"])
            manifest = json.loads((out / "manifest.json").read_text())
            self.assertEqual(sorted(c["status"] for c in manifest["cells"]), ["ok", "timeout"])
            out2 = Path(d) / "out2"
            big = {"model.d_model": [256], "model.heads": [8], "task.max_length": [512], "train.batch_size": [32]}
            r = sweep(spec(d, big), "--out", out2, "--memory-limit", "100000000")
            self.assertEqual(r.returncode, 0, r.stderr)
            (doc,) = runs(out2).values()
            self.assertIn(doc["status"], ["oom", "error"])
            self.assertNotIn("test_accuracy", doc["metrics"])

    def test_a_timed_out_cell_keeps_its_curve_and_resolved_task(self):
        # The child rewrites its run file as it goes (status running); the failure record keeps it.
        with tempfile.TemporaryDirectory() as d:
            s = {"name": "t", "base": {"task": "mqar", "variant": "softmax", "threads": 1,
                                       "set": {"model.layers": 1, "model.d_model": 16, "model.heads": 2,
                                               "task.train_size": 256, "task.valid_size": 16, "task.test_size": 16,
                                               "train.valid_examples": 16, "train.batch_size": 8,
                                               "train.eval_every": 2, "train.steps": 1000000}},
                 "grid": {"seed": [0]}}
            p = Path(d) / "spec.json"
            p.write_text(json.dumps(s))
            out = Path(d) / "out"
            r = sweep(p, "--out", out, "--time-limit", "4")
            self.assertEqual(r.returncode, 0, r.stderr)
            (doc,) = runs(out).values()
            self.assertEqual(doc["status"], "timeout")
            self.assertIn("time limit", doc["error"])
            self.assertGreater(len(doc["metrics"]["curves"]["valid_accuracy"]), 0)
            self.assertNotIn("test_accuracy", doc["metrics"])
            self.assertIsNotNone(doc["task"]["params"]["vocab_size"])  # resolved, as an ok run records it
            self.assertIn("chance_accuracy", doc["metrics"]["data"])
            # --resume re-runs a cell left "running" (a sweep killed with its cells)
            f = next((out / "runs").glob("*.json"))
            f.write_text(json.dumps(dict(doc, status="running")))
            r = sweep(p, "--out", out, "--resume", "--time-limit", "2")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("1 to run", r.stderr)
            self.assertEqual(json.loads(f.read_text())["status"], "timeout")

    @unittest.skipIf(b"__asan_init" in Path(BIN).read_bytes() or b"__tsan_init" in Path(BIN).read_bytes(),
                     "the sanitizer's runtime owns malloc; the guard cannot be preloaded")
    def test_cells_start_without_allocating_between_fork_and_exec(self):
        # The guard makes any malloc in a forked child before exec fatal (exit 97): cells whose
        # child built its argv after fork() would all fail.
        guard = os.environ.get("ATTNBENCH_FORK_GUARD")
        if not guard:
            self.skipTest("ATTNBENCH_FORK_GUARD (set by CTest) names the guard library")
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "out"
            env = dict(os.environ, LD_PRELOAD=guard)
            r = subprocess.run([BIN, "sweep", spec(d, {"seed": [0, 1]}, steps=2), "--out", out, "--jobs", "2"],
                               capture_output=True, text=True, timeout=600, env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(sorted(doc["status"] for doc in runs(out).values()), ["ok", "ok"],
                             [p.read_text()[-300:] for p in (out / "logs").glob("*.log")])

    def test_sigkill_then_resume_runs_every_cell_exactly_once(self):
        with tempfile.TemporaryDirectory() as d:
            p = spec(d, {"seed": list(range(6))}, steps=60)
            ids = cell_ids(p)
            out = Path(d) / "out"
            proc = subprocess.Popen([BIN, "sweep", str(p), "--out", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.5)  # the running cell dies with its parent
            before = {f.stem: f.stat().st_mtime_ns for f in (out / "runs").glob("*.json")}
            self.assertGreaterEqual(len(before), 2)
            self.assertLess(len(before), 6, "the sweep finished before it could be killed: make cells slower")
            self.assertEqual(list((out / "runs").glob("*.tmp*")), [], "a half-written run file is visible")
            r = sweep(p, "--out", out, "--resume")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"{6 - len(before)} cells done", r.stdout)
            docs = runs(out)
            self.assertEqual(sorted(docs), ids)
            for cell, mtime in before.items():
                self.assertEqual((out / "runs" / f"{cell}.json").stat().st_mtime_ns, mtime, f"{cell} was re-run")
            self.assertTrue(all(doc["status"] == "ok" for doc in docs.values()))

    def test_a_rerun_keeps_the_previous_result_until_its_replacement_exists(self):
        with tempfile.TemporaryDirectory() as d:
            p = spec(d, {"seed": [0]}, steps=100000)
            (cell,) = cell_ids(p)
            out = Path(d) / "out"
            (out / "runs").mkdir(parents=True)
            previous = {"schema": "attnbench.run/1", "status": "ok", "note": "a previous result"}
            (out / "runs" / f"{cell}.json").write_text(json.dumps(previous))
            proc = subprocess.Popen([BIN, "sweep", str(p), "--out", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            log = out / "logs" / f"{cell}.log"
            deadline = time.time() + 60
            while time.time() < deadline and not log.exists():
                time.sleep(0.02)
            time.sleep(0.5)  # the cell is running
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.assertTrue(log.exists(), "the cell never started")
            self.assertEqual(json.loads((out / "runs" / f"{cell}.json").read_text()), previous)
            manifest = json.loads((out / "manifest.json").read_text())
            self.assertEqual([c["status"] for c in manifest["cells"]], ["ok"])

    def test_a_second_sweep_on_one_directory_is_refused_naming_the_first(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "out"
            (out / "runs").mkdir(parents=True)
            dead = 4194303  # above any pid this machine hands out: the writer of this litter is gone
            (out / f"manifest.json.tmp.{dead}").write_text("{")
            (out / "runs" / f"x.json.tmp.{dead}").write_text("{")
            first = subprocess.Popen([BIN, "sweep", str(spec(d, {"seed": [0]}, steps=100000)), "--out", str(out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.time() + 60
                while time.time() < deadline and not list((out / "logs").glob("*.log")):
                    time.sleep(0.02)
                # The dead writer's litter is gone; the running cell may hold a live temporary of its
                # own (its .partial record, written as a temporary and renamed).
                self.assertEqual(sorted(out.glob(f"**/*.tmp.{dead}")), [], "stale temporaries are left")
                r = sweep(spec(d, {"seed": [0]}, steps=100000), "--out", out, "--time-limit", "5")
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertIn(f"pid {first.pid}", r.stderr)
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait()
            # The lock ends with its holder, however it ends.
            r = sweep(spec(d, {"seed": [0]}, steps=10), "--out", out)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_shards_together_give_the_single_process_cells(self):
        with tempfile.TemporaryDirectory() as d:
            p = spec(d, {"seed": [0, 1, 2, 3, 4]})
            single, sharded = Path(d) / "single", Path(d) / "sharded"
            self.assertEqual(sweep(p, "--out", single).returncode, 0)
            procs = [subprocess.Popen([BIN, "sweep", str(p), "--out", str(sharded), "--shard", f"{i}/2"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
            for proc in procs:
                self.assertEqual(proc.wait(timeout=600), 0)
            a, b = runs(single), runs(sharded)
            self.assertEqual(sorted(a), sorted(b))
            for cell in a:  # same seed and threads: the same numbers
                self.assertEqual(a[cell]["metrics"]["curves"], b[cell]["metrics"]["curves"])
            self.assertTrue((sharded / "manifest.shard-0-of-2.json").exists())
            self.assertTrue((sharded / "manifest.shard-1-of-2.json").exists())

    def test_mpi_ranks_together_give_the_single_process_cells(self):
        import shutil
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun is not installed (apt-get install openmpi-bin)")
        with tempfile.TemporaryDirectory() as d:
            p = spec(d, {"seed": [0, 1, 2, 3]})
            single, ranks = Path(d) / "single", Path(d) / "mpi"
            self.assertEqual(sweep(p, "--out", single).returncode, 0)
            env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
            r = subprocess.run([mpirun, "--oversubscribe", "-np", "3", BIN, "sweep", str(p), "--out", str(ranks), "--mpi"],
                               capture_output=True, text=True, timeout=600, env=env)
            if "built without MPI" in r.stderr:
                self.skipTest("this attnbench was built without MPI")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            a, b = runs(single), runs(ranks)
            self.assertEqual(sorted(a), sorted(b))
            for cell in a:
                self.assertEqual(a[cell]["metrics"]["curves"], b[cell]["metrics"]["curves"])


if __name__ == "__main__":
    unittest.main()
