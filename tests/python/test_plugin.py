"""Plugins as a researcher outside our tree meets them: install attnbench, scaffold a plugin with
scripts/new-variant, build it against the installed CMake package, and run check, bench, train and
a sweep with it; the loader's refusals (missing file, not a plugin, ABI mismatch, duplicate name);
and failing fixture plugins recorded per cell, never lost. Needs ATTNBENCH_BIN and
ATTNBENCH_FIXTURE_PLUGIN (set by CTest), cmake, ninja and g++."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ATTNBENCH_BIN", ROOT / "build" / "release" / "attnbench"))
BUILD = BIN.parent
FIXTURE = Path(os.environ.get("ATTNBENCH_FIXTURE_PLUGIN", BUILD / "tests" / "ab_fixture_faults.so"))
sys.path.insert(0, str(ROOT / "scripts"))
import validate_run  # noqa: E402

TINY = ["--set", "task.max_length=32", "--set", "task.train_size=128", "--set", "task.valid_size=32",
        "--set", "task.test_size=32", "--set", "model.layers=1", "--set", "model.d_model=16",
        "--set", "model.heads=2", "--set", "train.steps=6", "--set", "train.eval_every=3",
        "--threads", "1", "--quiet"]


def tiny_listops_spec(name, grid, plugins=None, per_variant=None):
    """A sweep spec (JSON text) over `grid` on a ListOps cell small enough for a test."""
    spec = {"name": name}
    if plugins is not None:
        spec["plugins"] = plugins
    spec["base"] = {"task": "listops", "threads": 1, "set": {
        "task.max_length": 32, "task.train_size": 128, "task.valid_size": 32, "task.test_size": 32,
        "model.layers": 1, "model.d_model": 16, "model.heads": 2, "train.steps": 6, "train.eval_every": 3}}
    spec["grid"] = grid
    if per_variant is not None:
        spec["per_variant"] = per_variant
    return json.dumps(spec)


def kill_sweep_after_first_run(binary, spec, out, env):
    """Starts `sweep spec --out out`, kills it once its first run file exists (or after 300 s) and
    returns how many run files it left."""
    p = subprocess.Popen([str(binary), "sweep", str(spec), "--out", str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline and not list((out / "runs").glob("*.json")):
        time.sleep(0.05)
    p.kill()
    p.wait()
    time.sleep(0.5)  # the running cell dies with its parent
    return len(list((out / "runs").glob("*.json")))


def sh(*args, env=None, cwd=None, timeout=600):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def abi_version():
    text = (ROOT / "harness" / "include" / "attnbench" / "plugin.hpp").read_text()
    return int(text.split("#define ATTNBENCH_PLUGIN_ABI_VERSION ")[1].split()[0])


def fnv1a64(path):
    h = 1469598103934665603
    for b in Path(path).read_bytes():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"fnv1a64:{h:016x}"


def valid(test, path):
    doc = json.loads(Path(path).read_text(encoding="utf-8"))  # strict: a file that is not UTF-8 fails here
    errors = validate_run.errors_of(validate_run.load_validator(), doc)
    test.assertEqual(errors, [], path)
    return doc


class OutOfTreePlugin(unittest.TestCase):
    """One installed attnbench and one scaffolded plugin, shared by the tests of this class."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = Path(cls.tmp.name)
        cls.prefix = d / "prefix"
        r = sh("cmake", "--install", BUILD, "--prefix", cls.prefix)
        assert r.returncode == 0, r.stdout + r.stderr
        cls.bin = cls.prefix / "bin" / "attnbench"
        # The scaffold of the installed tree, as a user outside the source tree would run it.
        cls.src = d / "lowtemp"
        r = sh(cls.prefix / "share" / "attnbench" / "scripts" / "new-variant", "lowtemp", cls.src)
        assert r.returncode == 0, r.stdout + r.stderr
        r = sh("cmake", "-S", cls.src, "-B", cls.src / "build", "-G", "Ninja",
               f"-Dattnbench_DIR={cls.prefix / 'lib' / 'cmake' / 'attnbench'}")
        assert r.returncode == 0, r.stdout + r.stderr
        r = sh("cmake", "--build", cls.src / "build")
        assert r.returncode == 0, r.stdout + r.stderr
        cls.plugin = cls.src / "build" / "lowtemp.so"
        assert cls.plugin.exists()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_ab(self, *args, env=None):
        return sh(self.bin, *args, env=env)

    def test_scaffold_uses_an_empty_folder_and_refuses_a_full_one(self):
        new_variant = self.prefix / "share" / "attnbench" / "scripts" / "new-variant"
        empty = Path(self.tmp.name) / "empty"
        empty.mkdir()
        r = sh(new_variant, "in_empty", empty)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue((empty / "in_empty.cpp").exists())
        r = sh(new_variant, "in_empty", empty)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("not an empty folder", r.stderr)

    def test_scaffold_refuses_bad_names(self):
        r = sh(self.prefix / "share" / "attnbench" / "scripts" / "new-variant", "Bad-Name", Path(self.tmp.name) / "x")
        self.assertEqual(r.returncode, 2)
        self.assertIn("Bad-Name", r.stderr)

    def test_list_and_describe_show_the_plugin_and_its_origin(self):
        r = self.run_ab("list", "variants", "--json", "--plugin", self.plugin)
        self.assertEqual(r.returncode, 0, r.stderr)
        (entry,) = [v for v in json.loads(r.stdout) if v["name"] == "lowtemp"]
        self.assertEqual(entry["origin"], str(self.plugin.resolve()))
        r = self.run_ab("describe", "lowtemp", "--plugin", self.plugin)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("temperature", r.stdout)

    def test_text_list_and_describe_name_the_origin(self):
        r = self.run_ab("list", "variants", "--plugin", self.plugin)
        self.assertEqual(r.returncode, 0, r.stderr)
        (line,) = [x for x in r.stdout.splitlines() if x.startswith("lowtemp ")]
        self.assertTrue(line.endswith(f"[{self.plugin.resolve()}]"), line)
        (line,) = [x for x in r.stdout.splitlines() if x.startswith("softmax ")]
        self.assertTrue(line.endswith("[built-in]"), line)
        r = self.run_ab("describe", "lowtemp", "--plugin", self.plugin)
        self.assertIn(f"origin: {self.plugin.resolve()}", r.stdout)

    def test_an_unknown_variant_suggests_the_plugin_next_door(self):
        r = sh(self.bin, "train", "--variant", "lowtemp", "--task", "listops", "--out", "x.json", cwd=self.plugin.parent)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--plugin ./lowtemp.so", r.stderr)
        r = sh(self.bin, "train", "--variant", "lowtemp", "--task", "listops", "--out", "x.json")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--plugin PATH", r.stderr)
        r = sh(self.bin, "describe", "lowtemp", cwd=self.plugin.parent)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--plugin ./lowtemp.so", r.stderr)

    def test_the_hint_also_looks_beside_loaded_plugins_and_the_spec(self):
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            (d / "mine").mkdir()
            shutil.copy(self.plugin, d / "mine" / "lowtemp.so")
            shutil.copy(FIXTURE, d / "mine" / "faults.so")
            # Beside a loaded plugin: the other module of its folder, not the loaded one.
            r = self.run_ab("describe", "fault_nan", "--plugin", d / "mine" / "lowtemp.so")
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(f"--plugin {d / 'mine' / 'faults.so'}", r.stderr)
            self.assertNotIn("--plugin " + str(d / "mine" / "lowtemp.so"), r.stderr)
            # Beside a sweep spec that forgot its `plugins`.
            spec = d / "mine" / "spec.json"
            spec.write_text(json.dumps({"name": "forgot", "base": {"task": "listops"},
                                        "grid": {"variant": ["fault_nan"]}}))
            r = self.run_ab("sweep", spec, "--dry-run")
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            self.assertIn(f"--plugin {d / 'mine' / 'faults.so'}", r.stderr)

    def test_check_passes(self):
        r = self.run_ab("check", "--plugin", self.plugin, "--variant", "lowtemp")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("0 failed", r.stdout)

    def test_bench_and_train_write_valid_files(self):
        with tempfile.TemporaryDirectory() as d:
            b = Path(d) / "b.json"
            r = self.run_ab("bench", "--plugin", self.plugin, "--variant", "lowtemp,softmax", "--seq-len", "64",
                            "--direction", "fwd", "--d-model", "32", "--heads", "2", "--min-time", "0.01",
                            "--repetitions", "2", "--no-calibration", "--out", b)
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = valid(self, b)
            self.assertEqual({v["name"] for v in doc["variants"]}, {"lowtemp", "softmax"})
            t = Path(d) / "t.json"
            r = self.run_ab("train", "--plugin", self.plugin, "--variant", "lowtemp", "--task", "listops",
                            "--set", "variant.temperature=2", *TINY, "--out", t)
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = valid(self, t)
            self.assertEqual(doc["status"], "ok")
            self.assertEqual(doc["variant"]["params"]["temperature"], 2)
            (p,) = doc["context"]["plugins"]
            self.assertEqual(p["path"], str(self.plugin.resolve()))
            self.assertEqual(p["variants"], ["lowtemp"])
            self.assertEqual(p["hash"], fnv1a64(self.plugin))

    def test_sweep_children_load_the_plugin_from_the_environment(self):
        with tempfile.TemporaryDirectory() as d:
            spec = Path(d) / "spec.json"
            spec.write_text(tiny_listops_spec("plugin", {"variant": ["lowtemp", "softmax"]}))
            env = dict(os.environ, ATTNBENCH_PLUGINS=str(self.plugin))
            r = self.run_ab("sweep", spec, "--out", Path(d) / "out", env=env)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            docs = [valid(self, f) for f in sorted((Path(d) / "out" / "runs").glob("*.json"))]
            self.assertEqual(sorted((x["variant"]["name"], x["status"]) for x in docs),
                             [("lowtemp", "ok"), ("softmax", "ok")])

    def scaffold_and_build(self, name, source=None):
        """new-variant NAME from the install, its .cpp replaced by `source` when given, built
        against the installed package; returns (source file, plugin)."""
        src = Path(self.tmp.name) / name
        r = sh(self.prefix / "share" / "attnbench" / "scripts" / "new-variant", name, src)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        if source is not None:
            shutil.copy(source, src / f"{name}.cpp")
        r = sh("cmake", "-S", src, "-B", src / "build", "-G", "Ninja",
               f"-Dattnbench_DIR={self.prefix / 'lib' / 'cmake' / 'attnbench'}")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return src / f"{name}.cpp", self.rebuild(src / "build", name)

    def rebuild(self, build, name):
        r = sh("cmake", "--build", build)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return build / f"{name}.so"

    def test_relu_cosine_from_the_installed_headers_passes_check_with_a_traced_memory_model(self):
        # Issue 19's "done when": a ReLU-of-cosine attention out of SDK ops only, built against the
        # install; its memory cost model is what `check --trace-memory` prints, pasted; check
        # passes on several seeds without special flags; planted bugs fail.
        cpp, so = self.scaffold_and_build("relu_cosine", ROOT / "tests" / "plugins" / "relu_cosine.cpp")
        trace = ("check", "--plugin", so, "--variant", "relu_cosine", "--trace-memory")
        r = self.run_ab(*trace)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("saved for backward (Cost::activation_bytes) = ", r.stdout)
        self.assertIn("exact at every traced size and at the held-out one", r.stdout)
        self.assertIn("MISMATCH: the declared activation_bytes is 0", r.stdout)  # nothing declared yet
        pasted = [line.strip() for line in r.stdout.splitlines()
                  if line.strip().startswith(("c.activation_bytes = ", "c.peak_bytes = "))]
        self.assertEqual(len(pasted), 2, r.stdout)
        text = cpp.read_text()
        marker = next(line for line in text.splitlines() if "// @MEMORY@" in line)
        cpp.write_text(text.replace(marker, "\n".join("      " + line for line in pasted)))
        so = self.rebuild(cpp.parent / "build", "relu_cosine")
        r = self.run_ab(*trace)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("the declared activation_bytes agrees to the byte at every traced size", r.stdout)
        self.assertNotIn("MISMATCH", r.stdout)
        for seed in range(4):
            r = self.run_ab("check", "--plugin", so, "--variant", "relu_cosine", "--seed", seed)
            self.assertEqual(r.returncode, 0, f"seed {seed}\n" + r.stdout + r.stderr)
            self.assertIn("0 failed", r.stdout)
            for name in ("gradient", "gradient_causal", "padding", "memory_model", "peak_model"):
                self.assertRegex(r.stdout, rf"ok\s+relu_cosine\s+{name}\s", f"seed {seed}")
        # A gradient bug: the keys' branch detached (the forward is unchanged).
        for seed in (0, 1):
            r = self.run_ab("check", "--plugin", so, "--variant", "relu_cosine", "--seed", seed,
                            "--set", "variant.detach_keys=true")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertRegex(r.stdout, r"FAIL\s+relu_cosine\s+gradient\s.*backward is likely wrong")
        # A wrong memory model: the declared saved bytes 30% short fail check, and the trace names them.
        r = self.run_ab("check", "--plugin", so, "--variant", "relu_cosine", "--set", "variant.declared_saved_factor=0.7")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"FAIL\s+relu_cosine\s+memory_model\s")
        r = self.run_ab(*trace, "--set", "variant.declared_saved_factor=0.7")
        self.assertIn("MISMATCH: the declared activation_bytes", r.stdout)
        self.assertRegex(r.stdout, r"at B=2 N=256 D=64 H=4 \(a size check measures\): declared \d+, traced formula "
                                   r"\d+ \(\+42\.9%\)")

    def test_a_spec_naming_the_plugin_is_killed_and_resumed_without_it(self):
        # The spec lists the out-of-tree plugin relative to itself; the sweep is killed after its
        # first cell and resumed with neither --plugin nor ATTNBENCH_PLUGINS; every run file passes
        # the installed validate_run.py.
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            (d / "plugins").mkdir()
            shutil.copy(self.plugin, d / "plugins" / "lowtemp.so")
            spec = d / "spec.json"
            spec.write_text(tiny_listops_spec("spec-names-plugin", {"variant": ["lowtemp", "softmax"], "seed": [1, 2]},
                                              plugins=["plugins/lowtemp.so"]))
            env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLUGINS"}
            out = d / "out"
            before = kill_sweep_after_first_run(self.bin, spec, out, env)
            self.assertLess(before, 4, "the sweep finished before it could be killed")
            r = sh(self.bin, "sweep", spec, "--out", out, "--resume", env=env)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(f"{4 - before} cells done", r.stdout)
            runs = sorted((out / "runs").glob("*.json"))
            self.assertEqual(len(runs), 4)
            r = sh(sys.executable, self.prefix / "share" / "attnbench" / "scripts" / "validate_run.py", out / "runs")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            docs = [json.loads(f.read_text()) for f in runs]
            self.assertEqual(sorted((x["variant"]["name"], x["status"]) for x in docs),
                             [("lowtemp", "ok"), ("lowtemp", "ok"), ("softmax", "ok"), ("softmax", "ok")])
            for x in docs:
                if x["variant"]["name"] == "lowtemp":
                    self.assertEqual(x["context"]["plugins"][0]["hash"], fnv1a64(self.plugin))

    def test_a_second_copy_is_refused_naming_both_origins(self):
        copy = Path(self.tmp.name) / "copy-of-lowtemp.so"
        shutil.copy(self.plugin, copy)
        r = self.run_ab("list", "variants", "--plugin", self.plugin, "--plugin", copy)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("registered twice", r.stderr)
        self.assertIn(str(self.plugin.resolve()), r.stderr)
        self.assertIn(str(copy.resolve()), r.stderr)


class LoaderRefusals(unittest.TestCase):
    def usage_error(self, *args, fragments=()):
        r = sh(BIN, *args)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        for f in fragments:
            self.assertIn(f, r.stderr)
        return r

    def shared_object(self, d, name, source):
        src = Path(d) / f"{name}.cpp"
        src.write_text(source)
        out = Path(d) / f"{name}.so"
        r = sh("g++", "-shared", "-fPIC", "-o", out, src)
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def test_missing_plugin_names_the_nearest_file(self):
        with tempfile.TemporaryDirectory() as d:
            self.shared_object(d, "mixers", "int unused() { return 0; }\n")
            self.usage_error("list", "variants", "--plugin", Path(d) / "mixer.so",
                             fragments=("not found", "mixers.so"))

    def test_a_library_without_the_entry_points_is_not_a_plugin(self):
        with tempfile.TemporaryDirectory() as d:
            so = self.shared_object(d, "plain", "int unused() { return 0; }\n")
            self.usage_error("list", "variants", "--plugin", so, fragments=("not an attnbench plugin",))

    def test_abi_mismatch_names_both_versions(self):
        with tempfile.TemporaryDirectory() as d:
            so = self.shared_object(d, "old", 'extern "C" int attnbench_plugin_abi_version() { return 999; }\n'
                                              'extern "C" void attnbench_plugin_register(const char*) {}\n')
            r = self.usage_error("list", "variants", "--plugin", so, fragments=("999",))
            self.assertIn(f"version {abi_version()}", r.stderr)

    def test_a_plugin_built_against_other_headers_is_refused_naming_the_difference(self):
        # The real entry points, compiled as attnbench_add_plugin() would, once as they are (loads)
        # and once with another public-header hash in the build signature (refused).
        with tempfile.TemporaryDirectory() as d:
            def build(name, *defines):
                so = Path(d) / f"{name}.so"
                r = sh("g++", "-std=c++20", "-shared", "-fPIC", "-DATTNBENCH_PLUGIN", *defines,
                       "-I", ROOT / "harness" / "include", "-I", BUILD / "generated",
                       ROOT / "harness" / "plugin" / "plugin_entry.cpp", "-o", so)
                self.assertEqual(r.returncode, 0, r.stderr)
                return so
            r = sh(BIN, "list", "variants", "--plugin", build("same"))
            self.assertEqual(r.returncode, 0, r.stderr)
            r = self.usage_error("list", "variants", "--plugin", build("other", '-DATTNBENCH_SDK_HASH="0123456789abcdef"'),
                                 fragments=("build signature", "sdk (plugin: 0123456789abcdef, attnbench: "))
            self.assertNotIn("stdlib", r.stderr)  # only what differs is named

    def test_environment_list_is_loaded_and_checked(self):
        env = dict(os.environ, ATTNBENCH_PLUGINS="/nonexistent/plugin.so")
        r = sh(BIN, "list", "variants", env=env)
        self.assertEqual(r.returncode, 2)
        self.assertIn("/nonexistent/plugin.so", r.stderr)


class FailingPlugins(unittest.TestCase):
    """The fixture plugin's variants crash, throw or produce NaN; each failure is recorded."""

    def test_sweep_records_crash_throw_and_nan_and_the_report_shows_them(self):
        with tempfile.TemporaryDirectory() as d:
            spec = Path(d) / "spec.json"
            spec.write_text(tiny_listops_spec("faults",
                                              {"variant": ["softmax", "fault_crash", "fault_throw", "fault_nan"]}))
            out = Path(d) / "out"
            r = sh(BIN, "sweep", spec, "--out", out, "--plugin", FIXTURE)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            docs = {x["variant"]["name"]: x for x in
                    (valid(self, f) for f in sorted((out / "runs").glob("*.json")))}
            self.assertEqual({k: v["status"] for k, v in docs.items()},
                             {"softmax": "ok", "fault_crash": "crashed", "fault_throw": "error",
                              "fault_nan": "diverged"})
            self.assertIn("SEGV", docs["fault_crash"]["error"].upper().replace("SEGMENTATION FAULT", "SEGV"))
            self.assertIn("failing on purpose", docs["fault_throw"]["error"])
            for name in ("fault_crash", "fault_throw", "fault_nan"):
                self.assertNotIn("test_accuracy", docs[name].get("metrics", {}), name)
            r = sh(BIN, "report", out, "--out", Path(d) / "report.html")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            md = (Path(d) / "report.md").read_text()
            for status in ("crashed", "error", "diverged"):
                self.assertIn(status, md)

    def test_a_spec_names_its_plugins_and_resume_needs_no_flag(self):
        # The spec lists the plugin relative to itself; a killed sweep resumes with neither
        # --plugin nor ATTNBENCH_PLUGINS; the manifest records the plugin and its hash; the
        # printed cell commands carry --plugin; a plugin file that changed is refused on resume.
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            (d / "plugins").mkdir()
            plugin = d / "plugins" / "faults.so"
            shutil.copy(FIXTURE, plugin)
            spec = d / "spec.json"
            spec.write_text(tiny_listops_spec("spec-plugins", {"variant": ["fault_nan", "softmax", "fault_throw"]},
                                              plugins=["plugins/faults.so"]))
            env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLUGINS"}
            out = d / "out"
            before = kill_sweep_after_first_run(BIN, spec, out, env)
            self.assertLess(before, 3, "the sweep finished before it could be killed")
            r = sh(BIN, "sweep", spec, "--out", out, "--resume", env=env)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(f"{3 - before} cells done", r.stdout)
            docs = {x["variant"]["name"]: x for x in (valid(self, f) for f in sorted((out / "runs").glob("*.json")))}
            self.assertEqual({k: v["status"] for k, v in docs.items()},
                             {"fault_nan": "diverged", "softmax": "ok", "fault_throw": "error"})
            manifest = json.loads((out / "manifest.json").read_text())
            (rec,) = manifest["plugins"]
            self.assertEqual(rec["path"], str(plugin.resolve()))
            self.assertRegex(rec["hash"], r"^fnv1a64:[0-9a-f]{16}$")
            # A printed command runs as it is, plugin and all.
            r = sh(BIN, "sweep", spec, "--dry-run", env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            (cmd,) = [line.split()[1:] for line in r.stdout.splitlines() if "--variant fault_nan" in line]
            self.assertIn(str(plugin.resolve()), cmd[cmd.index("--plugin") + 1])
            cmd[cmd.index("--out") + 1] = str(d / "copied.json")
            r = sh(BIN, *cmd, env=env)
            self.assertEqual(valid(self, d / "copied.json")["variant"]["name"], "fault_nan", r.stderr)
            # A rebuilt (here: changed) plugin file is refused on resume, by name.
            with open(plugin, "ab") as f:
                f.write(b"\0rebuilt")
            r = sh(BIN, "sweep", spec, "--out", out, "--resume", env=env)
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            self.assertIn(str(plugin.resolve()), r.stderr)
            self.assertIn("changed", r.stderr)

    def test_a_cell_printing_bytes_that_are_not_utf8_is_recorded_and_the_sweep_goes_on(self):
        # The cells print invalid UTF-8 and die (a crash; an exception quoting the bytes), and the
        # results directory's own name is not UTF-8: every record is still written, as valid
        # UTF-8, and the cells after them run.
        with tempfile.TemporaryDirectory() as d:
            spec = Path(d) / "spec.json"
            garbage = {"variant.garbage_output": True}
            spec.write_text(tiny_listops_spec("garbage", {"variant": ["fault_crash", "fault_throw", "softmax"]},
                                              per_variant={"fault_crash": garbage, "fault_throw": garbage}))
            out = Path(d) / os.fsdecode(b"out-\xff\xfe")

            def sweep(*extra):  # its output names the directory, bytes and all
                return subprocess.run([str(BIN), "sweep", str(spec), "--out", str(out), "--plugin", str(FIXTURE), *extra],
                                      capture_output=True, text=True, errors="replace", timeout=600)

            r = sweep()
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            docs = {x["variant"]["name"]: x for x in
                    (valid(self, f) for f in sorted((out / "runs").glob("*.json")))}
            self.assertEqual({k: v["status"] for k, v in docs.items()},
                             {"fault_crash": "crashed", "fault_throw": "error", "softmax": "ok"})
            if "Sanitizer" not in docs["fault_crash"]["error"]:  # under ASan its report fills the log's tail
                self.assertIn("\ufffd", docs["fault_crash"]["error"])
            self.assertIn("failing on purpose", docs["fault_throw"]["error"])
            self.assertIn("\ufffd", docs["fault_throw"]["error"])
            r = sweep("--resume")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("3 skipped", r.stdout)


if __name__ == "__main__":
    unittest.main()
