"""The bad-input catalogue: every entry is something a user gets wrong, and the expected outcome is
a clear message naming what is wrong (and, where there is one, the nearest valid choice) with exit
code 2 for usage errors and 1 for failures — never a crash, a hang or a silent default.
Needs ATTNBENCH_BIN (set by CTest)."""
import json
import os
import struct
import subprocess
import tempfile
import time
import unittest
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("ATTNBENCH_BIN", str(ROOT / "build" / "release" / "attnbench"))

TRAIN = ["train", "--variant", "softmax", "--task", "listops", "--threads", "1", "--quiet"]


def run(args, timeout=120, cwd=None):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def gray_png(side, value):
    """An 8-bit gray PNG of side x side pixels, all `value`."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + bytes([value]) * side for _ in range(side))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def pathfinder_dir(root, lines=None, count=10):
    """A Pathfinder contour directory under `root` with `count` 32 x 32 images in imgs/0 and
    metadata/0.npy listing them (or the given metadata lines). Returns its path."""
    contour = Path(root) / "curv_contour_length_14"
    (contour / "imgs" / "0").mkdir(parents=True)
    (contour / "metadata").mkdir()
    for i in range(count):
        (contour / "imgs" / "0" / f"sample_{i}.png").write_bytes(gray_png(32, 10 * i))
    if lines is None:
        lines = [f"imgs/0 sample_{i}.png {i} {i % 2} 1.0 14 4 2 0.5 1 1" for i in range(count)]
    (contour / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    return contour


class Catalogue(unittest.TestCase):
    def expect(self, args, code, *fragments):
        r = run(args)
        self.assertEqual(r.returncode, code, f"{args}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        self.assertNotIn("terminate called", r.stderr)
        for f in fragments:
            self.assertIn(f, r.stderr, f"{args}: message lacks {f!r}:\n{r.stderr}")

    def spec(self, d, text, name="spec.json"):
        p = Path(d) / name
        p.write_text(text if isinstance(text, str) else json.dumps(text))
        return p

    def test_sizes_zero_negative_and_beyond_limits(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "r.json"
            for setting, fragments in [
                ("model.d_model=0", ["'d_model' = 0 is out of range", "nearest valid value: 1"]),
                ("model.heads=-2", ["'heads' = -2 is out of range"]),
                ("model.d_model=30", ["not a multiple of model.heads"]),
                ("task.max_length=0", ["'max_length' = 0 is out of range", "nearest valid value: 8"]),
                ("task.max_length=100000000", ["nearest valid value: 65536"]),
                ("task.train_size=0", ["'train_size' = 0"]),
                ("train.batch_size=0", ["'batch_size' = 0"]),
                ("train.lr=-1", ["'lr' = -1", "out of range"]),
                ("variant.dropout=1.5", ["nearest valid value: 0.95"]),
                ("train.eps=0", ["'eps' = 0.0 is out of range", "nearest valid value: 1e-12"]),  # 0 / 0: always diverged
            ]:
                with self.subTest(setting):
                    extra = ["--set", "model.heads=4"] if setting == "model.d_model=30" else []
                    self.expect([*TRAIN, "--set", setting, *extra, "--out", out], 2, *fragments)
            self.assertFalse(out.exists())

    def test_task_constraints_name_the_fix(self):
        self.expect(["data", "--task", "mqar", "--set", "task.num_kv_pairs=64", "--set", "task.seq_len=64",
                     "--count", "1", "--out", "-"], 2, "num_kv_pairs (at most 16)")
        self.expect(["data", "--task", "pathfinder", "--set", "task.resolution=33", "--count", "1", "--out", "-"], 2,
                    "nearest valid value: 32")
        self.expect(["data", "--task", "listops", "--count", "0", "--out", "-"], 2, "--count = 0")

    def test_wrong_types_and_unknown_keys(self):
        self.expect([*TRAIN, "--set", "model.layers=two", "--out", "x.json"], 2, "must be an integer")
        self.expect([*TRAIN, "--set", "task.max_lenght=64", "--out", "x.json"], 2, "did you mean 'max_length'")
        self.expect([*TRAIN, "--seed", "-1", "--out", "x.json"], 2, "--seed")
        self.expect(["bench", "--variant", "softmax", "--seq-len", "0", "--out", "b.json"], 2, "--seq-len entry '0'")
        self.expect(["bench", "--variant", "softmax", "--seq-len", "abc", "--out", "b.json"], 2, "--seq-len entry 'abc'")
        self.expect(["bench", "--variant", "softmax", "--direction", "backwards", "--out", "b.json"], 2, "backwards")
        self.expect(["bench", "--variant", "softmax", "--fidelity-inputs", "learned", "--out", "b.json"], 2,
                    "--fidelity-inputs", "trained")
        self.expect(["bench", "--variant", "softmax", "--fidelity-inputs", "trained", "--fidelity-steps", "0", "--out",
                     "b.json"], 2, "--fidelity-steps")
        self.expect(["bench", "--variant", "softmax", "--fidelity-steps", "50", "--out", "b.json"], 2,
                    "--fidelity-inputs trained")

    def test_sweep_specs(self):
        with tempfile.TemporaryDirectory() as d:
            base = {"task": "listops", "variant": "softmax"}
            for text, fragments in [
                ('{"name": "x",\n  "grid": {"seed": [0, 1,]}\n}', ["line 2", "column"]),
                ("[1, 2]", ["object"]),
                ({"name": "x", "base": base, "grid": {"seed": []}}, ["empty list"]),
                ({"name": "x", "base": base, "grid": {"seed": "0"}}, ["seed"]),
                ({"name": "x", "base": base, "grdi": {"seed": [0]}}, ["did you mean 'grid'"]),
                ({"name": "x", "base": dict(base, set={"model.layers": "two"}), "grid": {"seed": [0]}},
                 ["must be an integer"]),
                ({"name": "x", "base": base, "grid": {"model.layers": [0, -1]}}, ["model.layers=-1"]),
                ({"name": "x", "base": dict(base, variant="sofmax"), "grid": {"seed": [0]}}, ["did you mean 'softmax'"]),
            ]:
                with self.subTest(text):
                    self.expect(["sweep", self.spec(d, text), "--dry-run"], 2, *fragments)
            self.expect(["sweep", Path(d) / "missing.json", "--dry-run"], 2, "missing.json")

    def test_sweep_specs_drop_nothing_silently(self):
        with tempfile.TemporaryDirectory() as d:
            base = {"task": "listops", "variant": "softmax"}

            def cells(text):
                r = run(["sweep", self.spec(d, text), "--dry-run"])
                self.assertEqual(r.returncode, 0, r.stderr)
                return [l for l in r.stdout.splitlines() if l and not l.startswith(" ") and not l.endswith(" cells")]

            self.assertEqual(len(cells({"name": "x", "base": base, "grid": {"threads": [1, 2]}})), 2)
            self.assertEqual(len(cells({"name": "x", "base": base, "grid": {"model.layers": [2, 2.0]}})), 1)
            self.assertEqual(len(cells({"name": "x", "base": base, "grid": {"seed": [1.0]}})), 1)
            for text, fragments in [
                ({"name": "x", "base": base, "grid": {"threads": [1, 100000]}},
                 ["threads = 100000", "nearest valid value: 4096"]),
                ({"name": "x", "base": base, "grid": {"variant": ["softmax", "performer"]},
                  "per_variant": {"performr": {"variant.num_features": 8}}}, ["did you mean 'performer'"]),
                ({"name": "x", "base": base, "per_task": {"listop": {}}}, ["did you mean 'listops'"]),
                ({"name": "x", "base": base, "grid": {"seed": [0, 1]}, "exclude": [{"variant": "sofmax"}]},
                 ["did you mean 'softmax'"]),
                ({"name": "x", "base": base, "grid": {"seed": [0, 1]}, "exclude": [{"seed": 5}]}, ["matches no cell"]),
                ('{"name": "x",\n "base": {"task": "listops", "variant": "softmax", "seed": 1, "seed": 2}}',
                 ["'seed' appears twice", "base"]),
            ]:
                with self.subTest(text):
                    self.expect(["sweep", self.spec(d, text), "--dry-run"], 2, *fragments)

    def test_sweep_specs_are_validated_as_their_cells_would_run(self):
        with tempfile.TemporaryDirectory() as d:
            base = {"task": "listops", "variant": "softmax"}
            bench = {"variants": ["softmax"], "direction": ["fwd"]}
            for text, fragments in [
                # A constraint between parameters that only the task's constructor checks.
                ({"name": "x", "base": {"task": "mqar", "variant": "softmax"}, "grid": {"task.seq_len": [64, 256]}},
                 ["task.seq_len=256", "vocab_size = 256 must be > seq_len = 256"]),
                ({"name": "x", "bench": dict(bench, seq_len=[0])}, ["bench.seq_len entry = 0", "nearest valid value: 1"]),
                ({"name": "x", "bench": dict(bench, seq_len=[2 ** 40])}, ["bench.seq_len entry", "16777216"]),
                ({"name": "x", "bench": dict(bench, seq_len=[64], d_model=30, heads=4)}, ["not a multiple"]),
                ({"name": "x", "base": base, "limits": {"seconds": -5}}, ["limits.seconds = -5", "nearest valid value: 0"]),
                ({"name": "x", "base": base, "limits": {"memory_bytes": 1e30}}, ["limits.memory_bytes"]),
                ('{"name": "x", "base": {"task": "listops", "variant": "softmax", "set": {"train.lr": 1e999}}}',
                 ["number overflow parsing '1e999'"]),
                ({"name": "x", "base": base, "grid": {"seed": list(range(400)), "task.train_size": list(range(1000, 1400))}},
                 ["160000 cells", "100000"]),
            ]:
                with self.subTest(text):
                    self.expect(["sweep", self.spec(d, text), "--dry-run"], 2, *fragments)

    def test_dry_run_leaves_huge_models_to_the_run(self):
        # Their task is built; their weights (here ~17 TB) are not, in passing.
        with tempfile.TemporaryDirectory() as d:
            spec = self.spec(d, {"name": "x", "base": {"task": "listops", "variant": "softmax", "set": {
                "model.d_model": 65536, "model.layers": 256}}})
            start = time.monotonic()
            r = run(["sweep", spec, "--dry-run"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertLess(time.monotonic() - start, 30)

    def test_shipped_suites_pass_their_dry_run(self):
        for suite in sorted((ROOT / "tasks" / "suites").glob("*.json")):
            with self.subTest(suite.name):
                r = run(["sweep", suite, "--dry-run"], timeout=600)
                self.assertEqual(r.returncode, 0, f"{suite.name}: {r.stderr}")

    def test_non_finite_values_are_named(self):
        for value, shown in [("inf", "inf"), ("nan", "NaN"), ("-inf", "-inf")]:
            with self.subTest(value):
                r = run([*TRAIN, "--set", f"train.lr={value}", "--out", "x.json"])
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(f"'lr' = {shown} is not a finite number", r.stderr)
                self.assertNotIn("null", r.stderr)
        self.expect([*TRAIN, "--set", "model.layers=inf", "--out", "x.json"], 2, "must be an integer, got 'inf'")

    def test_outputs_that_name_no_file(self):
        tiny = ["--set", "task.max_length=32", "--set", "task.train_size=64", "--set", "train.steps=1"]
        with tempfile.TemporaryDirectory() as d:
            self.expect([*TRAIN, *tiny, "--out", ""], 2, "--out is empty")
            r = run([*TRAIN, *tiny, "--out", "-"], cwd=d)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("'-' (standard output)", r.stderr)
            self.assertFalse((Path(d) / "-").exists())
            spec = self.spec(d, {"name": "x", "base": {"task": "listops", "variant": "softmax"}})
            self.expect(["sweep", spec, "--out", ""], 2, "--out is empty")

    def test_integers_read_alike_in_flags_and_set(self):
        # Exact integers in number form are integers everywhere; fractions nowhere.
        for args in (["--count", "1e0"], ["--count", "2.0"], ["--set", "task.max_length=1e2"]):
            with self.subTest(args):
                r = run(["data", "--task", "listops", *args, "--out", "-"])
                self.assertEqual(r.returncode, 0, r.stderr)
        self.expect(["data", "--task", "listops", "--count", "1.5", "--out", "-"], 2, "--count must be an integer")
        self.expect(["data", "--task", "listops", "--set", "task.max_length=64.5", "--count", "1", "--out", "-"], 2,
                    "must be an integer")

    def test_deeply_nested_json_is_refused_naming_the_file(self):
        # ~140 KB of nested arrays overflowed the stack while the error was printed.
        deep = '{"name": "x", "grid": {"seed": ' + "[" * 70000 + "]" * 70000 + "}}"
        with tempfile.TemporaryDirectory() as d:
            self.expect(["sweep", self.spec(d, deep), "--dry-run"], 2, "spec.json", "nested deeper than 64")
            # A run file read back by --resume: refused, not re-run and not crashed on.
            spec = self.spec(d, {"name": "x", "base": {"task": "listops", "variant": "softmax", "threads": 1,
                                                       "set": {"train.steps": 1, "task.max_length": 32}}})
            cell = run(["sweep", spec, "--dry-run"]).stdout.split()[0]
            runs = Path(d) / "out" / "runs"
            runs.mkdir(parents=True)
            (runs / f"{cell}.json").write_text("[" * 70000 + "]" * 70000)
            self.expect(["sweep", spec, "--out", Path(d) / "out", "--resume"], 2, f"{cell}.json", "nested deeper")

    def test_unwritable_outputs_fail_before_the_work(self):
        # A default-size ListOps run would train for minutes: the output path is checked first.
        start = time.monotonic()
        self.expect([*TRAIN, "--out", "/proc/attnbench/run.json"], 1, "cannot write", "/proc/attnbench")
        self.expect(["bench", "--variant", "softmax", "--seq-len", "64", "--out", "/proc/attnbench/b.json"], 1,
                    "cannot write")
        with tempfile.TemporaryDirectory() as d:
            self.expect([*TRAIN, "--out", d], 1, "is a directory")
        self.assertLess(time.monotonic() - start, 60)

    def test_lra_files_with_bad_labels(self):
        with tempfile.TemporaryDirectory() as d:
            for split in ("train", "eval", "test"):
                (Path(d) / f"new_aan_pairs.{split}.tsv").write_text("2\ta\tb\thello\tworld\n")
            self.expect(["data", "--task", "retrieval", "--set", "task.source=lra_files", "--set", f"task.path={d}",
                         "--count", "1", "--out", "-"], 2, "label '2' is not 0 or 1")

    def test_dataset_text_that_is_not_utf8_keeps_its_message(self):
        # Bytes that are not UTF-8 in an AAN text, in task.path and in a Pathfinder metadata line:
        # the document or the message is written with U+FFFD in their place, never replaced by a
        # JSON encoding error.
        def raw(args):
            return subprocess.run([BIN, *args], capture_output=True, timeout=120)
        with tempfile.TemporaryDirectory() as d:
            aan = Path(d) / "aan"
            aan.mkdir()
            for split in ("train", "eval", "test"):
                (aan / f"new_aan_pairs.{split}.tsv").write_bytes(b"1\ta\tb\thello \xff\xfe world\tother \xc3( text\n" * 3)
            r = raw(["data", "--task", "retrieval", "--set", "task.source=lra_files", "--set", f"task.path={aan}",
                     "--count", "1", "--out", "-"])
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = json.loads(r.stdout.decode("utf-8"))  # strict: not UTF-8 fails here
            self.assertEqual(doc["text"], "hello \ufffd\ufffd world\tother \ufffd( text")
            r = raw(["data", "--task", "pathfinder", "--set", "task.source=lra_files",
                     "--set", os.fsdecode(b"task.path=" + os.fsencode(d) + b"/no\xffwhere"), "--count", "1", "--out", "-"])
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(b"is not a directory", r.stderr)
            meta = Path(d) / "pf" / "metadata"
            meta.mkdir(parents=True)
            (meta / "0.npy").write_bytes(b"imgs/0 sample_0.png 0 \xff\n")
            out = Path(d) / "r.json"
            r = raw([*TRAIN[:4], "pathfinder", *TRAIN[5:], "--set", "task.source=lra_files",
                     "--set", f"task.path={meta.parent}", "--out", out])
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(b"0.npy:1: label", r.stderr)
            doc = json.loads(out.read_text(encoding="utf-8"))
            self.assertEqual(doc["status"], "error")
            self.assertIn("label '\ufffd' is not 0 or 1", doc["error"])

    def pathfinder(self, contour, code, *fragments, count=1):
        self.expect(["data", "--task", "pathfinder", "--set", "task.source=lra_files", "--set", f"task.path={contour}",
                     "--count", count, "--out", "-"], code, *fragments)

    def test_pathfinder_paths_stay_inside_the_dataset_folder(self):
        with tempfile.TemporaryDirectory() as d:
            outside = Path(d) / "outside"
            outside.mkdir()
            (outside / "secret.png").write_bytes(gray_png(32, 200))
            ok = [f"imgs/0 sample_{i}.png {i} 0" for i in range(10)]
            for name, line, fragments in [
                ("dot-dot", "imgs/0 ../../../outside/secret.png 9 1", ["0.npy:10", "leaves the contour directory",
                                                                       "../../../outside/secret.png"]),
                ("absolute subpath", f"{outside} secret.png 9 1", ["0.npy:10", "leaves the contour directory"]),
                ("absolute file", f"imgs/0 {outside / 'secret.png'} 9 1", ["0.npy:10", "leaves the contour directory"]),
            ]:
                with self.subTest(name), tempfile.TemporaryDirectory() as root:
                    self.pathfinder(pathfinder_dir(root, ok[:9] + [line]), 2, *fragments)
            # Symbolic links: a subpath through a link to elsewhere, an image that is such a link.
            with tempfile.TemporaryDirectory() as root:
                contour = pathfinder_dir(root, ok[:9] + ["imgs/away secret.png 9 1"])
                (contour / "imgs" / "away").symlink_to(outside)
                self.pathfinder(contour, 2, "0.npy:10", "the subpath 'imgs/away' resolves to", "outside the contour")
            with tempfile.TemporaryDirectory() as root:
                contour = pathfinder_dir(root)
                (contour / "imgs" / "0" / "sample_3.png").unlink()
                (contour / "imgs" / "0" / "sample_3.png").symlink_to(outside / "secret.png")
                self.pathfinder(contour, 2, "sample_3.png' is a symbolic link to", "outside the contour directory",
                                count=8)
                # A link that stays inside is an ordinary file.
                (contour / "imgs" / "0" / "sample_3.png").unlink()
                (contour / "imgs" / "0" / "sample_3.png").symlink_to(contour / "imgs" / "0" / "sample_4.png")
                (contour / "imgs" / "inside").symlink_to(contour / "imgs" / "0")
                (contour / "metadata" / "0.npy").write_text("\n".join(ok[:9] + ["imgs/inside/./ sample_9.png 9 1"]))
                self.pathfinder(contour, 0, count=8)

    def test_pathfinder_damaged_or_oversized_first_image(self):
        # The first image sets the resolution: a damaged one is bad input (exit 2) naming the file.
        with tempfile.TemporaryDirectory() as root:
            contour = pathfinder_dir(root)
            first = contour / "imgs" / "0" / "sample_0.png"
            good = first.read_bytes()
            first.write_bytes(good[:60])
            self.pathfinder(contour, 2, "first image", "sample_0.png: PNG: the file is truncated")
            first.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])
            self.pathfinder(contour, 2, "first image", "sample_0.png: PNG:")
            first.write_bytes(b"GIF89a" + bytes(100))
            self.pathfinder(contour, 2, "first image", "sample_0.png: PNG: not a PNG file")
            first.unlink()
            self.pathfinder(contour, 2, "first image", "sample_0.png: cannot be read")
            # Larger than the task's largest resolution (256): refused before its pixels are read.
            first.write_bytes(gray_png(300, 1))
            self.pathfinder(contour, 2, "sample_0.png: PNG: the image is 300 x 300, larger than the 256 x 256")
            first.write_bytes(gray_png(16, 1))
            self.pathfinder(contour, 2, "is 16 x 16", "32 to 256 pixels a side")
            # A later image larger than the first is refused at the first image's size.
            first.write_bytes(gray_png(32, 1))
            (contour / "imgs" / "0" / "sample_1.png").write_bytes(gray_png(64, 1))
            self.pathfinder(contour, 1, "sample_1.png: PNG: the image is 64 x 64, larger than the 32 x 32", count=2)

    def test_missing_plugin(self):
        self.expect(["list", "variants", "--plugin", "/nonexistent/plugin.so"], 2, "not found")
        self.expect(["list", "variants", "--plugin"], 2, "--plugin needs a path")


if __name__ == "__main__":
    unittest.main()
