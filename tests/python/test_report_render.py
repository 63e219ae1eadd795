"""The report as a person sees it: a real (tiny) sweep with a train grid and a bench block,
rendered by `attnbench report`, opened in headless Chromium; the screenshot is kept as a test
artifact (ATTNBENCH_ARTIFACTS, set by CTest). Needs ATTNBENCH_BIN and Debian's chromium."""
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("ATTNBENCH_BIN", str(ROOT / "build" / "release" / "attnbench"))
ARTIFACTS = Path(os.environ.get("ATTNBENCH_ARTIFACTS", tempfile.gettempdir())) / "report-render"

SPEC = {
    "name": "render",
    "base": {"task": "listops", "threads": 1,
             "set": {"task.max_length": 32, "task.train_size": 256, "task.valid_size": 32, "task.test_size": 32,
                     "model.layers": 1, "model.d_model": 16, "model.heads": 2, "train.steps": 20,
                     "train.eval_every": 10}},
    "grid": {"variant": ["softmax"], "seed": [0, 1]},
    "bench": {"variants": ["softmax"], "seq_len": [32, 64], "direction": ["fwd", "fwd_bwd"], "d_model": 32,
              "heads": 4, "repetitions": 2, "min_time": 0.005, "threads": 1},
}


class ReportRender(unittest.TestCase):
    def test_report_renders_with_tables_and_every_image(self):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            self.fail("chromium is not installed (scripts/setup.sh installs it)")
        with tempfile.TemporaryDirectory() as d:
            spec = Path(d) / "spec.json"
            spec.write_text(json.dumps(SPEC))
            out = Path(d) / "sweep"
            r = subprocess.run([BIN, "sweep", str(spec), "--out", str(out)], capture_output=True, text=True, timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr)
            html = out / "report.html"
            r = subprocess.run([BIN, "report", str(out), "--out", str(html)], capture_output=True, text=True, timeout=600)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            page = html.read_text()
            self.assertGreaterEqual(page.count("<table"), 3)
            self.assertIn("Accuracy", page)
            self.assertIn("Speed and memory", page)
            images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', page)
            self.assertGreaterEqual(len(images), 3)
            for payload in images:
                self.assertTrue(base64.b64decode(payload).startswith(b"\x89PNG\r\n\x1a\n"))
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "report.png"
            shot.unlink(missing_ok=True)
            r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                "--window-size=1280,3000", f"--screenshot={shot}", html.as_uri()],
                               capture_output=True, text=True, timeout=180)
            self.assertTrue(shot.exists(), r.stdout + r.stderr)
            data = shot.read_bytes()
            self.assertTrue(data.startswith(b"\x89PNG"))
            self.assertGreater(len(data), 20000, "the screenshot is nearly empty")
            shutil.copy(html, ARTIFACTS / "report.html")


if __name__ == "__main__":
    unittest.main()
