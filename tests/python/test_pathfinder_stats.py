"""Our Pathfinder-32 (contour 14, LRA's "hard") against the ORIGINAL generator's statistics.

The reference numbers below were measured on images drawn by the original code, not by ours:
drewlinsley/pathfinder at ab9c130 (snakes2.py / snakes.py, Dec 2019, the code LRA's release was
drawn with) at the settings of LRA's lra_benchmarks/data/pathfinder.py (google-research/
long-range-arena @ cd31e5c: 32 x 32, padding 1, paddle length 2, thickness 0.5, margin 1,
antialias 2, seed distance 7, marker radius 1.5, continuity 1.0, contour 14, distractor length
14 // 3, 20 // 4 distractors, snake contrast 2, paddle contrast 0.75), run under Debian's python3
(numpy 1.24, OpenCV 4.6, Pillow 9.4) with the old scipy.misc.imresize / imsave supplied:

  PF="$(mktemp -d)/pathfinder"   # any scratch folder
  git clone https://github.com/drewlinsley/pathfinder "$PF" && git -C "$PF" checkout ab9c130
  for s in 1 2; do /usr/bin/python3 scripts/pathfinder_original.py --original "$PF" --resolution 32 \\
      --contour-length 14 --count 1300 --seed $s --out pf_orig_s$s.npz; done   (+ --count 50 --seed 0)
  /usr/bin/python3 scripts/pathfinder_stats.py <the images of those runs, concatenated>

Each statistic is a mean over images, so it is compared with |ours - original| <= 4 standard
errors of the difference (sqrt(se_ours^2 + se_original^2)); standard deviations likewise with
se(sd) = sd / sqrt(2 (n - 1)). The count of distinct grey levels grows with the sample; it is
compared within +-12 (two halves of the original's sample differ by up to about 6).
Standard library only; needs ATTNBENCH_BIN and ATTNBENCH_SOURCE_DIR (see tests/CMakeLists.txt).
"""
import importlib.util
import math
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

# scripts/pathfinder_stats.py on the original's images (see above).
ORIGINAL = {
    'images': 2650,
    'gray_levels': 221,
    'marker_centre_gray': (239.8725, 0.265, 13.6423),  # (mean, se, sd)
    'distractors_drawn': (1.1287, 0.0179, 0.9223),
    'mean_gray': (20.1015, 0.0392, 2.018),
    'share_ge_64': (0.1251, 0.0002, 0.0126),
    'label_1_share': (0.4932, 0.0097, 0.5),
    'marker_distance_0': (12.8472, 0.1353, 4.9595),
    'marker_distance_1': (13.4075, 0.1449, 5.2381),
    'marker_distance_auc': (0.5361, 0.0112),
}
COUNT = 3000  # our images: a few seconds to draw and measure
GRAY_LEVEL_TOLERANCE = 12


def load_stats_module():
    path = Path(os.environ['ATTNBENCH_SOURCE_DIR']) / 'scripts' / 'pathfinder_stats.py'
    spec = importlib.util.spec_from_file_location('pathfinder_stats', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compare(ours, original=ORIGINAL, sigmas=4.0):
    """The statistics that differ by more than `sigmas` standard errors: a list of messages."""
    bad = []
    if abs(ours['gray_levels'] - original['gray_levels']) > GRAY_LEVEL_TOLERANCE:
        bad.append('gray_levels: ours %d, original %d' % (ours['gray_levels'], original['gray_levels']))
    for name, ref in original.items():
        if not isinstance(ref, tuple):
            continue
        o = ours[name]
        se = math.hypot(o['se'], ref[1])
        if abs(o['mean'] - ref[0]) > sigmas * se:
            bad.append('%s: ours %.4f, original %.4f (%.1f standard errors apart)' %
                       (name, o['mean'], ref[0], abs(o['mean'] - ref[0]) / se))
        if len(ref) == 3 and name != 'label_1_share':
            n_ref = original['images'] if not name.startswith('marker_distance_') else original['images'] / 2
            se_sd = math.hypot(o['sd'] / math.sqrt(2 * (o['n'] - 1)), ref[2] / math.sqrt(2 * (n_ref - 1)))
            if abs(o['sd'] - ref[2]) > sigmas * se_sd:
                bad.append('%s sd: ours %.4f, original %.4f' % (name, o['sd'], ref[2]))
    return bad


class PathfinderStatistics(unittest.TestCase):
    def test_ours_match_the_original_generator(self):
        stats = load_stats_module()
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / 'pf.jsonl'
            r = subprocess.run([os.environ['ATTNBENCH_BIN'], 'data', '--task', 'pathfinder', '--split', 'valid',
                                '--set', 'task.valid_size=%d' % COUNT, '--set', 'task.cache_mb=0', '--count',
                                str(COUNT), '--out', str(out)], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            ours = stats.stats(stats.load(str(out)))
        self.assertEqual(ours['images'], COUNT)
        self.assertEqual(ours['side'], 32)
        self.assertEqual(ours['distractors_requested'], 5)
        for name in ORIGINAL:
            if isinstance(ORIGINAL[name], tuple):
                print('%-20s original %9.4f  ours %9.4f +- %.4f' % (name, ORIGINAL[name][0], ours[name]['mean'],
                                                                    ours[name]['se']))
        print('%-20s original %9d  ours %9d' % ('gray_levels', ORIGINAL['gray_levels'], ours['gray_levels']))
        self.assertEqual(compare(ours), [])

    def test_the_comparison_can_fail(self):
        # A sample like the original's passes; one with a statistic moved by 6 standard errors does not.
        same = {'gray_levels': ORIGINAL['gray_levels'], 'images': COUNT}
        for name, ref in ORIGINAL.items():
            if isinstance(ref, tuple):
                n = COUNT if not name.startswith('marker_distance_') else COUNT // 2
                same[name] = {'mean': ref[0], 'se': ref[1], 'sd': ref[2] if len(ref) == 3 else 0.0, 'n': n}
        self.assertEqual(compare(same), [])
        moved = dict(same, distractors_drawn=dict(same['distractors_drawn']))
        moved['distractors_drawn']['mean'] += 6 * math.sqrt(2) * ORIGINAL['distractors_drawn'][1]
        self.assertEqual(len(compare(moved)), 1)
        self.assertEqual(len(compare(dict(same, gray_levels=ORIGINAL['gray_levels'] - 40))), 1)


if __name__ == '__main__':
    unittest.main()
