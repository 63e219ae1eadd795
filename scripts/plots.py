#!/usr/bin/python3
"""Figures for attnbench reports (matplotlib, Agg backend; no display needed).

Every function takes rows from abresults (train_rows / bench_rows) and returns a
matplotlib Figure, or None when there is nothing to draw. A variant has the same colour and
marker in every figure: both are derived from a hash of its name (variant_style), so they are
stable without a hard-coded table; set_variants(names) keeps the colours of one report's
variants visibly apart.
"""
import colorsys
import hashlib
import math
import statistics
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

import abresults  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
DPI = 100


def _candidate(name, k):
    """The k-th candidate colour of a name: hue from a hash of the name (and k), lightness and
    saturation within a band readable on white (no pale yellows)."""
    h = hashlib.sha256(f"{name}#{k}".encode("utf-8") if k else name.encode("utf-8")).digest()
    hue = int.from_bytes(h[:4], "big") / 2**32
    light = (0.32, 0.45, 0.58)[h[4] % 3]
    if 0.1 < hue < 0.5:  # yellows, greens and cyans look pale at the same lightness
        light = min(light, 0.40)
    sat = 0.7 + 0.25 * (h[5] / 255)
    return colorsys.hls_to_rgb(hue, light, sat)


def _lab(rgb):
    """sRGB in [0, 1] -> CIE L*a*b* (D65), to measure how different two colours look."""
    def lin(c):
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = map(lin, rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t):
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116
    return (116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z)))


_PALETTE = {}
MIN_DISTANCE = 25.0  # CIE76 distance between any two variants' colours, when achievable


def set_variants(names):
    """Fixes the colours of the variants of one report, so that no two look alike.

    Each name starts from its own hash colour; names are settled in sorted order, and a name
    whose colour is closer than MIN_DISTANCE to one already settled takes the next of its own
    hash candidates. The same set of names always gets the same colours, and a name keeps its
    hash colour unless that colour was taken."""
    _PALETTE.clear()
    settled = []
    for name in sorted(set(names)):
        best, best_d = None, -1.0
        for k in range(48):
            rgb = _candidate(name, k)
            lab = _lab(rgb)
            d = min((math.dist(lab, o) for o in settled), default=float("inf"))
            if d >= MIN_DISTANCE:
                best = (rgb, lab)
                break
            if d > best_d:
                best, best_d = (rgb, lab), d
        _PALETTE[name] = best[0]
        settled.append(best[1])


def variant_style(name, label=None):
    """(colour as #rrggbb, marker) of a variant, the same in every figure of a report.

    The colour comes from a hash of the variant's name (see set_variants for how a report
    keeps colours apart). The marker comes from the hash of `label` (the variant with its
    distinguishing settings; default the name): it tells apart two configurations of one
    variant, and two variants whose colours are still close."""
    r, g, b = _PALETTE.get(name) or _candidate(name, 0)
    colour = "#%02x%02x%02x" % (round(r * 255), round(g * 255), round(b * 255))
    m = hashlib.sha256((label or name).encode("utf-8")).digest()
    return colour, MARKERS[m[6] % len(MARKERS)]


def variant_color(name):
    return variant_style(name)[0]


def _finish(fig):
    fig.tight_layout()
    return fig


def _label(ax, xlabel, ylabel, title, title_size, legend_size):
    """Axis labels, title, the log grid and the legend every line plot carries."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


def _wrap(text, width=70):
    return "\n".join(textwrap.wrap(text, width)) or text


def _plain(v, _pos=None):
    return f"{v:g}"


def _log_axes(ax, lengths=None):
    """Log-log axes labelled with plain numbers; x ticks at the measured lengths."""
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    if lengths:
        ax.set_xticks(sorted(set(lengths)))
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    # within one decade the major ticks are too few: label the minor ones too
    ax.yaxis.set_minor_formatter(FuncFormatter(_plain) if hi / max(lo, 1e-300) < 20 else NullFormatter())


def _grid(n, max_cols=3, cell=(4.6, 3.6)):
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _by(rows, key):
    out = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def _series(rows, value):
    """{variant_label: (variant name, [(seq_len, pooled)], [failed (seq_len, status)])}"""
    out = {}
    for label, rs in sorted(_by(rows, "variant_label").items()):
        points, failed = [], []
        for n, cell in sorted(_by(rs, "seq_len").items(), key=lambda kv: (kv[0] is None, kv[0])):
            pooled = abresults.pool_bench(cell)
            if pooled["status"] == abresults.OK and pooled.get(value) is not None and n:
                points.append((n, pooled))
            else:
                failed.append((n, pooled["status"]))
        out[label] = ((rs[0]["variant"], label), points, failed)
    return out


def _failed_note(failed):
    if not failed:
        return ""
    return " (" + ", ".join(f"{s} at {n}" for n, s in failed) + ")"


def bench_time(rows, title):
    """Median time vs sequence length, log-log, one line per variant; bars span min..max."""
    series = _series(rows, "median_ms")
    if not any(points for _, points, _ in series.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lengths = []
    for label, (name, points, failed) in series.items():
        colour, marker = variant_style(*name)
        if not points:
            ax.plot([], [], color=colour, marker=marker, linestyle="none", label=label + _failed_note(failed))
            continue
        xs = [n for n, _ in points]
        lengths += xs
        med = [p["median_ms"] for _, p in points]
        lo = [max(0.0, m - (p.get("min_ms") if p.get("min_ms") is not None else m)) for m, (_, p) in zip(med, points)]
        hi = [max(0.0, (p.get("max_ms") if p.get("max_ms") is not None else m) - m) for m, (_, p) in zip(med, points)]
        ax.errorbar(xs, med, yerr=[lo, hi], color=colour, marker=marker, capsize=3, linewidth=1.5,
                    label=label + _failed_note(failed))
    _log_axes(ax, lengths)
    _label(ax, "sequence length N", "time per call (ms, median; bars min..max)", _wrap(title), 10, 8)
    return _finish(fig)


def roofline(rows, title):
    """Achieved GFLOP/s against arithmetic intensity (FLOPs per byte of unavoidable traffic), one
    point per variant and length, under the roofs of the median peaks the runs measured."""
    peaks = [r["context"].get("peaks") for r in rows if isinstance(r.get("context"), dict)]
    peaks = [p for p in peaks if isinstance(p, dict) and p.get("fma_fp32_gflops") and p.get("bandwidth_gbs")]
    series = _series(rows, "gflops_per_second")
    points = {label: [(p["flops"] / p["bytes"], p["gflops_per_second"], n) for n, p in pts if p.get("bytes")]
              for label, (_, pts, _) in series.items()}
    if not peaks or not any(points.values()):
        return None
    fma = statistics.median(p["fma_fp32_gflops"] for p in peaks)
    bw = statistics.median(p["bandwidth_gbs"] for p in peaks)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs_all = [x for pts in points.values() for x, _, _ in pts]
    lo, hi = min(xs_all + [fma / bw]) / 4, max(xs_all + [fma / bw]) * 4
    grid = [lo * (hi / lo) ** (i / 64) for i in range(65)]
    ax.plot(grid, [min(fma, bw * x) for x in grid], color="#444", linewidth=1.2,
            label=f"roof: {fma:.0f} GFLOP/s fp32 FMA, {bw:.1f} GB/s")
    for label, pts in points.items():
        if not pts:
            continue
        colour, marker = variant_style(*series[label][0])
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], color=colour, marker=marker, linewidth=0.8,
                label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _label(ax, "arithmetic intensity (FLOP / byte)", "achieved GFLOP/s (median)", _wrap(title), 10, 7)
    return _finish(fig)


def bench_memory(groups):
    """Peak tracked memory vs sequence length, log-log; one panel per (direction, shape).

    groups: list of (title, rows)."""
    groups = [(t, rs) for t, rs in groups if any(r["status"] == abresults.OK and r.get("peak_bytes") for r in rs)]
    if not groups:
        return None
    fig, axes = _grid(len(groups), max_cols=2, cell=(5.6, 4.0))
    for ax, (title, rows) in zip(axes, groups):
        lengths = []
        for label, (name, points, failed) in _series(rows, "peak_bytes").items():
            colour, marker = variant_style(*name)
            xs = [n for n, _ in points]
            lengths += xs
            ys = [p["peak_bytes"] / 2**20 for _, p in points]
            ax.plot(xs, ys, color=colour, marker=marker, linewidth=1.5, label=label + _failed_note(failed))
        _log_axes(ax, lengths)
        _label(ax, "sequence length N", "peak tracked memory (MiB)", _wrap(title, 60), 9, 7)
    return _finish(fig)


def _legend_below(fig, handles, rows_used):
    """A figure-wide legend under the panels; returns the bottom margin it needs."""
    if not handles:
        return 0.0
    ncol = 1 if max(len(h.get_label()) for h in handles) > 60 else 2
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    lines = math.ceil(len(handles) / ncol)
    height = fig.get_size_inches()[1]
    return min(0.6, (0.25 * lines + 0.1) / height)


def accuracy_vs_throughput(train_rows):
    """LRA Figure 3 shape: test accuracy vs training throughput (tokens/s), marker area
    proportional to peak tracked memory; one point per variant (mean over ok seeds), one
    panel per task."""
    ok = [r for r in train_rows if r["status"] == abresults.OK and r["test_accuracy"] is not None
          and r["tokens_per_second"] is not None]
    if not ok:
        return None
    tasks = sorted(_by(ok, "task_label").items())
    n_labels = len({r["variant_label"] for r in ok})
    fig, axes = _grid(len(tasks), max_cols=2, cell=(5.6, 4.2))
    fig.set_size_inches(fig.get_size_inches()[0], fig.get_size_inches()[1] + 0.25 * n_labels)
    peak_all = [r["peak_bytes"] for r in ok if r["peak_bytes"]]
    peak_max = max(peak_all) if peak_all else 1.0
    handles = {}
    for ax, (task, rows) in zip(axes, tasks):
        for label, rs in sorted(_by(rows, "variant_label").items()):
            colour, marker = variant_style(rs[0]["variant"], label)
            acc = abresults.mean_std(r["test_accuracy"] for r in rs)[0] * 100
            tps = abresults.mean_std(r["tokens_per_second"] for r in rs)[0]
            peak = abresults.mean_std(r["peak_bytes"] for r in rs)[0]
            size = 40 + 600 * (peak / peak_max) if peak else 40
            ax.scatter([tps], [acc], s=size, color=colour, marker=marker, alpha=0.6, edgecolors="black",
                       linewidths=0.5)
            if peak:
                ax.annotate(f"{peak / 2**20:.0f} MiB", (tps, acc), textcoords="offset points", xytext=(7, 7),
                            fontsize=7, color=colour)
            handles.setdefault(label, Line2D([], [], color=colour, marker=marker, linestyle="none",
                                             markersize=8, alpha=0.8, label=label))
        ax.set_xscale("log")
        ax.margins(0.3)
        lo, hi = ax.get_xlim()
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(FuncFormatter(_plain) if hi / max(lo, 1e-300) < 20 else NullFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("training throughput (tokens/s)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_wrap(task, 60) + "\n(marker area ∝ peak memory)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    bottom = _legend_below(fig, list(handles.values()), len(tasks))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def accuracy_vs_width(train_rows):
    """Zoology Figure 2 / Based Figure 2 shape: per task, the best test accuracy (over the
    settings that differ besides width; mean over seeds) against model.d_model and against the
    state a decoder carries (metrics.state_bytes), one line per variant, with the task's floors
    (chance, context floor) as dashed lines. None when no task has two widths or a state size."""
    ok = [r for r in train_rows if r["status"] == abresults.OK and r["test_accuracy"] is not None]
    panels = []
    for task, rows in sorted(_by(ok, "task_label").items()):  # (L, K) apart: one panel each
        points = {}  # variant -> d_model -> config -> [accuracies], and state bytes
        for r in rows:
            d = abresults.number(r["model"].get("d_model"))
            if d is None:
                continue
            cfg = abresults.canonical({k: v for k, v in abresults.run_settings(r).items() if k != "model.d_model"})
            e = points.setdefault(r["variant"], {}).setdefault(d, {}).setdefault(cfg, {"acc": [], "state": []})
            e["acc"].append(r["test_accuracy"])
            if r.get("state_bytes") is not None:
                e["state"].append(r["state_bytes"])
        widths = {d for per in points.values() for d in per}
        if len(widths) >= 2 or any(e["state"] for per in points.values() for c in per.values() for e in c.values()):
            floors = next((r["floors"] for r in rows if r.get("floors")), {})
            panels.append((task, points, floors))
    if not panels:
        return None
    fig, axes = _grid(2 * len(panels), max_cols=2, cell=(5.2, 3.8))
    handles = {}
    for i, (task, points, floors) in enumerate(panels):
        for j, xname in enumerate(("model.d_model", "state per sequence (bytes)")):
            ax = axes[2 * i + j]
            for variant, per in sorted(points.items()):
                colour, marker = variant_style(variant)
                xs, ys = [], []
                for d, configs in sorted(per.items()):
                    best = max(configs.values(), key=lambda e: statistics.mean(e["acc"]))
                    x = d if j == 0 else (statistics.mean(best["state"]) if best["state"] else None)
                    if x is not None:
                        xs.append(x)
                        ys.append(100 * statistics.mean(best["acc"]))
                if xs:
                    ax.plot(xs, ys, color=colour, marker=marker, label=variant)
                    handles.setdefault(variant, Line2D([], [], color=colour, marker=marker, label=variant))
            for name, style in (("chance_accuracy", ":"), ("context_floor_accuracy", "--")):
                if name in floors:
                    ax.axhline(100 * floors[name], color="grey", linestyle=style, linewidth=1)
                    ax.annotate(name.replace("_accuracy", "").replace("_", " "), (0.01, 100 * floors[name]),
                                xycoords=("axes fraction", "data"), fontsize=7, color="grey", va="bottom")
            ax.set_xscale("log", base=2 if j == 0 else 10)
            ax.xaxis.set_major_formatter(FuncFormatter(_plain))
            ax.set_xlabel(xname)
            ax.set_ylabel("best test accuracy (%)")
            ax.set_ylim(-2, 102)
            ax.set_title(_wrap(task, 60), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    bottom = _legend_below(fig, list(handles.values()), len(panels))
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def _finite_pairs(xs, ys):
    out = []
    for x, y in zip(xs or [], ys or []):
        fx, fy = abresults.number(x), abresults.number(y)
        if fx is not None and fy is not None:
            out.append((fx, fy))
    return out


def training_curves(rows, task_label):
    """Train loss and validation accuracy vs step for every run of one task; one colour per
    variant, one thin line per seed; runs that did not finish (diverged, timeout, ...) dashed."""
    drawn = []
    for r in rows:
        c = r.get("curves") or {}
        loss = _finite_pairs(c.get("step"), c.get("train_loss"))
        acc = _finite_pairs(c.get("valid_step"), c.get("valid_accuracy"))
        if loss or acc:
            drawn.append((r, loss, acc))
    if not drawn:
        return None
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    handles = {}
    for r, loss, acc in sorted(drawn, key=lambda t: (t[0]["variant_label"], str(t[0]["seed"]))):
        colour, marker = variant_style(r["variant"], r["variant_label"])
        style = "-" if r["status"] == abresults.OK else "--"
        if loss:
            ax_l.plot([p[0] for p in loss], [p[1] for p in loss], color=colour, linestyle=style, linewidth=1,
                      alpha=0.85)
        if acc:
            ax_a.plot([p[0] for p in acc], [100 * p[1] for p in acc], color=colour, linestyle=style, linewidth=1,
                      marker=marker, markersize=3, alpha=0.85)
        handles.setdefault(r["variant_label"], Line2D([], [], color=colour, marker=marker, label=r["variant_label"]))
        if r["status"] != abresults.OK:
            key = f"{r['variant_label']} seed {r['seed']}: {r['status']}"
            handles.setdefault(key, Line2D([], [], color=colour, linestyle="--", label=key))
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("train loss")
    ax_l.set_title("train loss", fontsize=9)
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("validation accuracy (%)")
    ax_a.set_title("validation accuracy", fontsize=9)
    fig.suptitle(_wrap(task_label, 110), fontsize=10)
    for ax in (ax_l, ax_a):
        ax.grid(True, alpha=0.3)
    ax_a.legend(handles=list(handles.values()), fontsize=7)
    return _finish(fig)


def png_bytes(fig):
    """The figure as PNG bytes; closes the figure."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()
