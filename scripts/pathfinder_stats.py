#!/usr/bin/python3
"""Image statistics of a Pathfinder sample (issue 17's table), with their standard errors.

Reads either the .npz written by scripts/pathfinder_original.py (the original generator) or the
JSON lines of `attnbench data --task pathfinder ...` (ours), and prints one JSON object:

  /usr/bin/python3 scripts/pathfinder_stats.py pf32_original.npz
  attnbench data --task pathfinder --split valid --set task.valid_size=5000 --count 5000 --out ours.jsonl
  /usr/bin/python3 scripts/pathfinder_stats.py ours.jsonl

Standard library only (numpy is used only to read an .npz), so the CI test needs nothing more.
Every statistic is a mean over images (or over the two markers), so its standard error is the
sample standard deviation over sqrt(n); tests/python/test_pathfinder_stats.py compares two
samples with these.
"""
import json
import math
import sys


def load(path, limit=None):
    """A list of samples: dict(gray=bytes (side*side), side, label, markers=[[y, x], [y, x]],
    distractors, distractors_requested)."""
    samples = []
    if path.endswith('.npz'):
        import numpy as np
        z = np.load(path)
        n = len(z['labels']) if limit is None else min(limit, len(z['labels']))
        for i in range(n):
            img = z['images'][i]
            samples.append(dict(gray=bytes(img.astype(np.uint8).ravel()), side=int(img.shape[0]),
                                label=int(z['labels'][i]), markers=z['markers'][i].tolist(),
                                distractors=int(z['distractors'][i]),
                                distractors_requested=int(z['distractors_requested'][i])))
        return samples
    with (sys.stdin if path == '-' else open(path)) as f:
        for line in f:
            if limit is not None and len(samples) >= limit:
                break
            ex = json.loads(line)
            meta = json.loads(ex['text'])
            side = int(round(math.sqrt(len(ex['input']))))
            offset = 1 if min(ex['input']) >= 1 else 0  # black_is_padding=false shifts by one
            target = ex['target'][0] if isinstance(ex['target'], list) else ex['target']
            samples.append(dict(gray=bytes(v - offset for v in ex['input']), side=side, label=int(target),
                                markers=meta['markers'], distractors=meta['distractors'],
                                distractors_requested=meta['distractors_requested']))
    return samples


def mean_se(xs):
    n = len(xs)
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n), math.sqrt(var)


def auc(neg, pos):
    """P(a positive's score > a negative's) + half the ties (Mann-Whitney)."""
    scored = sorted([(v, 0) for v in neg] + [(v, 1) for v in pos])
    rank_sum, i = 0.0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2.0  # ranks i+1..j
        rank_sum += avg_rank * sum(1 for k in range(i, j) if scored[k][1] == 1)
        i = j
    n1, n0 = len(pos), len(neg)
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def stats(samples):
    levels = set()
    centre, distractors, mean_gray, bright, labels = [], [], [], [], []
    dist = {0: [], 1: []}
    for s in samples:
        g, side = s['gray'], s['side']
        levels.update(set(g))
        mean_gray.append(sum(g) / len(g))
        bright.append(sum(1 for v in g if v >= 64) / len(g))
        (ay, ax), (by, bx) = s['markers']
        centre.append((g[ay * side + ax] + g[by * side + bx]) / 2.0)
        distractors.append(s['distractors'])
        labels.append(s['label'])
        dist[s['label']].append(math.hypot(ay - by, ax - bx))
    levels.discard(0)
    out = {'images': len(samples), 'side': samples[0]['side'],
           'distractors_requested': samples[0]['distractors_requested'], 'gray_levels': len(levels)}
    for name, xs in (('marker_centre_gray', centre), ('distractors_drawn', distractors), ('mean_gray', mean_gray),
                     ('share_ge_64', bright), ('label_1_share', labels), ('marker_distance_0', dist[0]),
                     ('marker_distance_1', dist[1])):
        m, se, sd = mean_se(xs)
        out[name] = {'mean': round(m, 4), 'se': round(se, 4), 'sd': round(sd, 4), 'n': len(xs)}
    a = auc(dist[0], dist[1])
    n0, n1 = len(dist[0]), len(dist[1])
    # Hanley & McNeil's standard error of an AUC.
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n0 * n1))
    out['marker_distance_auc'] = {'mean': round(a, 4), 'se': round(se, 4)}
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('path', help='.npz from pathfinder_original.py, or JSON lines from attnbench data (- = stdin)')
    ap.add_argument('--limit', type=int, default=None, help='use the first N images only')
    a = ap.parse_args()
    samples = load(a.path, a.limit)
    if not samples:
        print('pathfinder_stats: no images in %s' % a.path, file=sys.stderr)
        return 2
    print(json.dumps(stats(samples), indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
