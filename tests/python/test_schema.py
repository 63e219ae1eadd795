"""Tests of results/schema/run.schema.json and scripts/validate_run.py.

Run with Debian's interpreter (the one that has python3-jsonschema):
    /usr/bin/python3 -m unittest discover -s tests/python
"""
import json
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "results" / "schema" / "run.schema.json"
SCRIPTS = ROOT / "scripts"
VALIDATE = SCRIPTS / "validate_run.py"
PYTHON = "/usr/bin/python3"

import jsonschema  # noqa: E402  (apt-get install python3-jsonschema)


# ---- fixture builders: each returns a fresh, valid document ----

def context():
    return {
        "date": "2026-11-23T17:23:19+00:00",
        "host": "vm",
        "cpu_model": "Example CPU @ 2.60GHz",
        "threads": 2,
        "compiler": "GNU 12.2.0",
        "build_type": "Release",
        "git_revision": "0123456789ab",
        "command_line": "attnbench train --variant softmax --task listops --out x.json",
        "versions": {"attnbench": "0.1.0", "onednn": "2.6.3", "tbb": "2021.8.0", "benchmark": "1.7.1"},
    }


def train_run():
    return {
        "schema": "attnbench.run/1",
        "kind": "train",
        "status": "ok",
        "variant": {"name": "softmax", "params": {}},
        "task": {"name": "listops", "params": {"max_length": 128}},
        "model": {"layers": 2, "d_model": 64, "heads": 4},
        "train": {"steps": 300, "lr": 1e-3, "batch": 32},
        "seed": 0,
        "metrics": {
            "test_accuracy": 0.31,
            "best_valid_accuracy": 0.33,
            "final_train_loss": 1.71,
            "train_seconds": 42.5,
            "steps": 300,
            "tokens_per_second": 90000.0,
            "peak_bytes": 12345678,
            "peak_rss_bytes": 98765432,
            "curves": {
                "step": [0, 100, 200, 300],
                "train_loss": [2.3, 1.9, 1.8, 1.71],
                "valid_step": [150, 300],
                "valid_accuracy": [0.25, 0.33],
                "lr": [0.0, 1e-3, 5e-4, 0.0],
            },
        },
        "context": context(),
    }


def failed_run(status="oom"):
    run = train_run()
    run["status"] = status
    run["error"] = "out of memory at step 12"
    run["metrics"] = {"steps": 12, "train_seconds": 3.0}
    return run


def bench_entry(seq_len=1024, direction="fwd"):
    return {
        "seq_len": seq_len, "direction": direction,
        "median_ms": 4.2, "min_ms": 4.0, "max_ms": 4.9,
        "tokens_per_second": 1.9e6, "peak_bytes": 4194304,
        "flops": 1.1e9, "gflops_per_second": 262.0,
    }


def bench_run():
    return {
        "schema": "attnbench.run/1",
        "kind": "bench",
        "status": "ok",
        "variants": [{"name": "softmax", "params": {}}],
        "task": None,
        "model": {"d_model": 64, "heads": 4, "batch": 8},
        "train": None,
        "seed": 0,
        "metrics": {
            "entries": [bench_entry(1024, "fwd"), bench_entry(1024, "fwd_bwd")],
        },
        "benchmarks": [
            {"name": "attn/softmax/fwd/N:1024", "run_type": "aggregate", "aggregate_name": "median",
             "real_time": 4.2, "cpu_time": 8.3, "time_unit": "ms"},
            {"name": "attn/softmax/fwd/N:1024", "run_type": "iteration",
             "real_time": 4.0, "cpu_time": 8.0, "time_unit": "ms"},
        ],
        "context": context(),
    }


class SchemaTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
        cls.validator = jsonschema.Draft202012Validator(schema)

    def errors(self, doc):
        return [f"{e.json_path}: {e.message}" for e in self.validator.iter_errors(doc)]

    def assertValid(self, doc):
        errors = self.errors(doc)
        self.assertEqual(errors, [], "expected a valid document")

    def assertInvalid(self, doc, mentioning):
        """The schema rejects doc, and some error's path or message names `mentioning`."""
        errors = self.errors(doc)
        self.assertNotEqual(errors, [], "expected the schema to reject this document")
        self.assertTrue(any(mentioning in e for e in errors),
                        f"no error mentions {mentioning!r}: {errors}")

    # ---- valid documents ----

    def test_train_run_is_valid(self):
        self.assertValid(train_run())

    def test_failed_runs_are_valid(self):
        for status in ("error", "oom", "timeout", "skipped", "unsupported", "diverged", "crashed"):
            with self.subTest(status=status):
                self.assertValid(failed_run(status))

    def test_bench_run_is_valid(self):
        self.assertValid(bench_run())

    def test_bench_entry_with_its_own_failure_is_valid(self):
        run = bench_run()
        run["metrics"]["entries"].append(
            {"seq_len": 8192, "direction": "fwd_bwd", "status": "oom", "error": "needs 40 GiB"})
        self.assertValid(run)

    def test_unknown_keys_are_allowed(self):
        run = train_run()
        run["extra"] = {"anything": 1}
        run["metrics"]["extra_metric"] = 3.5
        run["context"]["plugins"] = []
        self.assertValid(run)

    # ---- invalid documents ----

    def test_invalid_documents(self):
        for what, make, breaks, mentioning in INVALID:
            with self.subTest(what):
                doc = make()
                breaks(doc)
                self.assertInvalid(doc, mentioning)


# (what, a valid document, the edit that breaks it, what some error must name)
INVALID = [
    ("missing schema", train_run, lambda d: d.pop("schema"), 'schema'),
    ("wrong schema string", train_run, lambda d: d.update(schema="attnbench.run/2"), '$.schema'),
    ("ok train run without test accuracy", train_run, lambda d: d["metrics"].pop("test_accuracy"), 'test_accuracy'),
    ("failed run carrying test accuracy", lambda: failed_run("error"),
     lambda d: d["metrics"].update(test_accuracy=0.0), 'test_accuracy'),
    ("failed run without error message", lambda: failed_run("timeout"), lambda d: d.pop("error"),
     "'error' is a required property"),
    ("accuracy above one (a percentage, not a fraction)", train_run,
     lambda d: d["metrics"].update(test_accuracy=31.0), '$.metrics.test_accuracy'),
    ("unknown status", train_run, lambda d: d.update(status="exploded"), '$.status'),
    ("bench entry missing median_ms", bench_run, lambda d: d["metrics"]["entries"][0].pop("median_ms"), 'median_ms'),
    ("bench run without benchmarks", bench_run, lambda d: d.pop("benchmarks"), "benchmarks"),
    ("bench run without variants", bench_run, lambda d: d.pop("variants"), "variants"),
    ("train run without variant", train_run, lambda d: d.pop("variant"), "variant"),
    ("train run without task", train_run, lambda d: d.update(task=None), '$.task'),
    ("context missing git_revision", train_run, lambda d: d["context"].pop("git_revision"), 'git_revision'),
]


class ValidateScriptTest(unittest.TestCase):
    def run_script(self, *args):
        return subprocess.run([PYTHON, str(VALIDATE), *map(str, args)],
                              capture_output=True, text=True, timeout=60)

    def write(self, directory, name, doc):
        path = Path(directory) / name
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path

    def test_good_file_exits_0(self):
        with tempfile.TemporaryDirectory() as d:
            result = self.run_script(self.write(d, "good.json", train_run()))
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_bad_file_exits_1_and_names_the_path(self):
        bad = failed_run("error")
        bad["metrics"]["test_accuracy"] = 0.0
        with tempfile.TemporaryDirectory() as d:
            result = self.run_script(self.write(d, "bad.json", bad))
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertIn("$.metrics", result.stdout)

    def test_non_finite_numbers_are_invalid(self):
        """Python's json reads NaN and Infinity, and NaN passes minimum/maximum: checked apart."""
        for key, value in (("test_accuracy", float("nan")), ("train_seconds", float("inf"))):
            run = train_run()
            run["metrics"][key] = value
            with tempfile.TemporaryDirectory() as d:
                result = self.run_script(self.write(d, "nan.json", run))
                self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
                self.assertIn(f"$.metrics.{key}: {value} is not a finite number", result.stdout)

    def test_directory_is_searched_recursively(self):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "sub").mkdir()
            self.write(d, "good.json", bench_run())
            self.write(Path(d) / "sub", "bad.json", {"schema": "attnbench.run/1"})
            result = self.run_script(d)
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertIn("bad.json", result.stdout)

    def test_deeply_nested_file_is_invalid_not_a_traceback(self):
        with tempfile.TemporaryDirectory() as d:
            deep = Path(d) / "deep.json"
            deep.write_text("[" * 100000 + "]" * 100000)
            self.write(d, "good.json", train_run())
            result = self.run_script(d)
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertNotIn("Traceback", result.stderr)
            self.assertIn(f"{deep}: INVALID: cannot read JSON: nested deeper than 64 levels", result.stdout)
            self.assertIn("good.json: ok", result.stdout)

    def test_usage_errors_exit_2(self):
        self.assertEqual(self.run_script().returncode, 2)
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(self.run_script(Path(d) / "missing.json").returncode, 2)


class InstalledLayoutTest(unittest.TestCase):
    """`cmake --install` puts scripts/ in share/attnbench/scripts and results/schema/ in
    share/attnbench/schema: validate_run.py must find the schema there too."""

    def install_tree(self, root, with_schema=True):
        share = Path(root) / "share" / "attnbench"
        shutil.copytree(SCRIPTS, share / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
        if with_schema:
            shutil.copytree(SCHEMA_PATH.parent, share / "schema")
        return share

    def validate_installed(self, root, share):
        """validate_run.py of the install tree on one good run file."""
        run = Path(root) / "run.json"
        run.write_text(json.dumps(train_run()), encoding="utf-8")
        result = subprocess.run([PYTHON, str(share / "scripts" / "validate_run.py"), str(run)],
                                capture_output=True, text=True, timeout=60)
        return run, result

    def test_validate_run_from_the_install_tree(self):
        with tempfile.TemporaryDirectory() as d:
            share = self.install_tree(d)
            run, result = self.validate_installed(d, share)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("ok", result.stdout)
            # report.py checks every run file against the schema too
            result = subprocess.run([PYTHON, str(share / "scripts" / "report.py"), str(run), "--out",
                                     str(Path(d) / "r.html")], capture_output=True, text=True, timeout=120)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertNotIn("invalid", (Path(d) / "r.md").read_text(encoding="utf-8"))

    def test_missing_schema_names_both_places(self):
        with tempfile.TemporaryDirectory() as d:
            share = self.install_tree(d, with_schema=False)
            _, result = self.validate_installed(d, share)
            self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
            self.assertNotIn("Traceback", result.stderr)
            self.assertIn(str(share / "schema" / "run.schema.json"), result.stderr)
            self.assertIn(str(share / "results" / "schema" / "run.schema.json"), result.stderr)


if __name__ == "__main__":
    unittest.main()
