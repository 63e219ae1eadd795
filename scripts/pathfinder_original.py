#!/usr/bin/python3
"""Runs the ORIGINAL Pathfinder generator (drewlinsley/pathfinder, snakes2.py / snakes.py) at LRA's
settings and stores its images, labels and marker/distractor metadata in one .npz, for
scripts/pathfinder_stats.py. Development tool only: nothing in CI needs it.

  PF="$(mktemp -d)/pathfinder"   # any scratch folder
  git clone https://github.com/drewlinsley/pathfinder "$PF" && git -C "$PF" checkout ab9c130
  /usr/bin/python3 scripts/pathfinder_original.py --original "$PF" --resolution 32 \
      --contour-length 14 --count 5000 --seed 0 --out pf32_original.npz

ab9c130 (Dec 2019) is the code LRA's 2020 release was drawn with; it calls scipy.misc.imresize /
imsave and np.float, which today's SciPy and NumPy no longer have. They are supplied here with
the old SciPy behaviour (toimage: float arrays are min-max scaled to 0..255 by bytescale, +0.5 and
truncated; uint8 arrays pass unchanged; then PIL's resize with resample 1 = LANCZOS). Nothing of
the generator itself is changed; it is only observed (which snakes were drawn, where the markers
went). Debian packages: python3-numpy python3-scipy python3-pil python3-opencv python3-matplotlib.
"""
import argparse
import contextlib
import io
import os
import random
import sys
import tempfile

import numpy as np

# LRA's settings (lra_benchmarks/data/pathfinder.py docstrings, google-research/long-range-arena
# @ cd31e5c) over snakes2_wrapper.Args' defaults; budget // distractor_length distractors.
LRA = {
    32: dict(paddle_margin_list=[1], window_size=[32, 32], padding=1, paddle_length=2, marker_radius=1.5,
             paddle_thickness=0.5, antialias_scale=2, seed_distance=7, continuity=1.0, budget=20,
             snake_contrast_list=[2], paddle_contrast_list=[0.75]),
    64: dict(padding=1, paddle_margin_list=[1], seed_distance=12, window_size=[64, 64], marker_radius=2.5,
             paddle_thickness=1, antialias_scale=2, continuity=1.8, budget=22, snake_contrast_list=[0.8]),
    128: dict(padding=1, paddle_margin_list=[2, 3], seed_distance=20, window_size=[128, 128], marker_radius=3,
              paddle_thickness=1.5, antialias_scale=2, continuity=1.8, budget=35, snake_contrast_list=[0.9]),
    256: dict(paddle_margin_list=[3], window_size=[256, 256], marker_radius=5, paddle_thickness=2,
              antialias_scale=2, continuity=1.8, budget=30, snake_contrast_list=[1.0]),
}


def bytescale(data):
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    cmin, cmax = data.min(), data.max()
    cscale = cmax - cmin
    if cscale == 0:
        cscale = 1
    scaled = (data - cmin) * (255.0 / cscale)
    return (scaled.clip(0, 255) + 0.5).astype(np.uint8)


def install_old_scipy_misc(store):
    from PIL import Image
    import scipy.misc

    def imresize(arr, size, interp='bilinear'):
        im = Image.fromarray(bytescale(arr), mode='L')
        resample = {'nearest': 0, 'lanczos': 1, 'bilinear': 2, 'bicubic': 3, 'cubic': 3}[interp]
        return np.array(im.resize((size[1], size[0]), resample=resample))

    def imsave(path, arr):
        store.append(bytescale(arr))

    scipy.misc.imresize = imresize
    scipy.misc.imsave = imsave
    if not hasattr(np, 'float'):
        np.float = float


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--original', required=True, help='checkout of drewlinsley/pathfinder (at ab9c130)')
    ap.add_argument('--resolution', type=int, default=32, choices=sorted(LRA))
    ap.add_argument('--contour-length', type=int, default=14)
    ap.add_argument('--count', type=int, default=5000)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', required=True)
    a = ap.parse_args()

    images, labels, markers, distractors = [], [], [], []
    install_old_scipy_misc(images)
    sys.path.insert(0, os.path.abspath(a.original))
    import matplotlib
    matplotlib.use('Agg')
    import snakes
    import snakes2

    # Observers: distractor snakes drawn, marker centres, labels (the generator is not changed).
    drawn = [0]
    make_snake = snakes.make_snake

    def counting_make_snake(*args, **kw):
        out = make_snake(*args, **kw)
        drawn[0] += out[2] is True
        return out
    snakes.make_snake = counting_make_snake
    make_many = snakes.make_many_snakes

    def observed_make_many(*args, **kw):
        drawn[0] = 0
        out = make_many(*args, **kw)
        distractors.append(drawn[0])
        return out
    snakes.make_many_snakes = observed_make_many
    draw_circle = snakes2.draw_circle

    def observed_circle(window, coordinate, radius, aa):
        markers.append([int(coordinate[0]), int(coordinate[1])])
        return draw_circle(window, coordinate, radius, aa)
    snakes2.draw_circle = observed_circle
    meta = snakes2.accumulate_meta

    def observed_meta(array, label, *rest, **kw):
        labels.append(int(label))
        return meta(array, label, *rest, **kw)
    snakes2.accumulate_meta = observed_meta

    # snakes2_wrapper.Args defaults (its module runs a generation when imported, so not imported).
    args = argparse.Namespace(
        batch_id=0, n_images=a.count, window_size=[256, 256], padding=22, antialias_scale=4, LABEL=1,
        seed_distance=27, marker_radius=3, contour_length=15, distractor_length=5, num_distractor_snakes=6,
        snake_contrast_list=[1.], use_single_paddles=False, max_target_contour_retrial=4,
        max_distractor_contour_retrial=4, max_paddle_retrial=2, continuity=1.4, paddle_length=5,
        paddle_thickness=1.5, paddle_margin_list=[4], paddle_contrast_list=[1.], pause_display=False,
        save_images=True, save_metadata=True, segmentation_task=False, segmentation_task_double_circle=False)
    settings = dict(LRA[a.resolution])
    budget = settings.pop('budget')
    vars(args).update(settings)
    args.contour_length = a.contour_length
    args.distractor_length = a.contour_length // 3
    args.num_distractor_snakes = budget // args.distractor_length
    np.random.seed(a.seed)
    random.seed(a.seed)
    # Batches of 100 continue one random stream; the .npz is rewritten after each, so a long run
    # can be stopped and what it drew so far is kept.
    while len(images) < a.count:
        args.n_images = min(100, a.count - len(images))
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            args.contour_path = tmp
            snakes2.from_wrapper(args)
        n = len(images)
        assert len(labels) == n and len(markers) == 2 * n and len(distractors) == n, (n, len(labels), len(markers))
        np.savez_compressed(a.out + '.tmp.npz', images=np.stack(images), labels=np.array(labels),
                            markers=np.array(markers).reshape(n, 2, 2), distractors=np.array(distractors),
                            distractors_requested=np.full(n, args.num_distractor_snakes))
        os.replace(a.out + '.tmp.npz', a.out)
        print('%d images' % n, file=sys.stderr, flush=True)
    print('%s: %d images, resolution %d, contour %d, %d distractors requested' %
          (a.out, n, a.resolution, a.contour_length, args.num_distractor_snakes))


if __name__ == '__main__':
    main()
