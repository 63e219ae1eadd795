#!/usr/bin/python3
"""Compare two attnbench result sets (A = before/baseline, B = after) cell by cell.

Usage: scripts/compare.py A B [--threshold 0.05] [--fail-if-regression] [--all]
A and B are each a run file or a directory (searched recursively), e.g. two bench files or two
sweep directories.

Cells are paired by identity:
  train: variant + params, task + params, model, train settings, seed (seeds are then pooled
         per configuration for the accuracy verdict);
  bench: variant + params, seq_len, direction, problem shape (batch, d_model, heads, causal;
         the train_step model for direction train_step).
Verdicts, beyond the measured noise:
  bench time: slower when B's min is above A's max by more than the threshold
              (B.min > A.max * (1 + t)); faster when A.min > B.max * (1 + t);
  memory:     more when B's peak > A's peak * (1 + t); less when below A * (1 - t);
  accuracy:   several seeds on both sides: lower when B's best seed is below A's worst seed
              (higher: the mirror image); otherwise when the mean differs by more than the
              threshold (an absolute difference of fractions: 0.05 = 5 points);
  training throughput (tokens/s): as bench time, over the seeds' min..max;
  status:     ok in A but not in B (e.g. oom) is a regression. A run file that does not follow
              the run schema (abschema) has status invalid: none of its figures is compared.
Regressions: slower, more memory, lower accuracy, ok -> failure. Cells present in one set
only are listed. Exit status: 0; 1 with --fail-if-regression when a regression is flagged;
2 on usage errors (a path missing or holding no run files, a file nested too deep).
"""
import argparse
import sys

import abresults
from abresults import OK

REGRESSION = "regression"
IMPROVEMENT = "improvement"


# ---------------------------------------------------------------- bench

def _pair_bench(rows_a, rows_b):
    """[(identity, rows_a, rows_b)], only_a rows, only_b rows. Exact identity first; then rows
    whose shape is only partly known (sweep failure records) pair with a compatible cell."""
    ga, gb = {}, {}
    for r in rows_a:
        ga.setdefault(r["identity"], []).append(r)
    for r in rows_b:
        gb.setdefault(r["identity"], []).append(r)
    pairs = [(k, ga[k], gb[k]) for k in ga if k in gb]
    left_a = {k: v for k, v in ga.items() if k not in gb}
    left_b = {k: v for k, v in gb.items() if k not in ga}

    def loose(r):
        return (r["variant"], abresults.canonical(r["variant_params"]), r["seq_len"], r["direction"])
    for ka in list(left_a):
        ra = left_a[ka][0]
        for kb in list(left_b):
            rb = left_b[kb][0]
            same = loose(ra) == loose(rb) or (
                (ra["variant"], ra["seq_len"], ra["direction"]) == (rb["variant"], rb["seq_len"], rb["direction"])
                and (not ra["variant_params"] or not rb["variant_params"]))
            if same and abresults.shape_compatible(ra["shape"], rb["shape"]):
                pairs.append((ka, left_a.pop(ka), left_b.pop(kb)))
                break
    only_a = [v[0] for v in left_a.values()]
    only_b = [v[0] for v in left_b.values()]
    return pairs, only_a, only_b


def _ratio(b, a):
    return b / a if a and b is not None and a > 0 else None


def bench_verdicts(a, b, t):
    """Flags [(kind, text)] for two pooled bench cells."""
    flags = []
    if a["status"] == OK and b["status"] != OK:
        return [(REGRESSION, f"ok -> {b['status']}")]
    if a["status"] != OK and b["status"] == OK:
        return [(IMPROVEMENT, f"{a['status']} -> ok")]
    if a["status"] != OK:
        return [("", f"{a['status']} in both")]
    a_lo = a.get("min_ms") if a.get("min_ms") is not None else a.get("median_ms")
    a_hi = a.get("max_ms") if a.get("max_ms") is not None else a.get("median_ms")
    b_lo = b.get("min_ms") if b.get("min_ms") is not None else b.get("median_ms")
    b_hi = b.get("max_ms") if b.get("max_ms") is not None else b.get("median_ms")
    if None not in (a_lo, a_hi, b_lo, b_hi):
        if b_lo > a_hi * (1 + t):
            flags.append((REGRESSION, "slower"))
        elif a_lo > b_hi * (1 + t):
            flags.append((IMPROVEMENT, "faster"))
    pa, pb = a.get("peak_bytes"), b.get("peak_bytes")
    if pa is not None and pb is not None:
        if pb > pa * (1 + t):
            flags.append((REGRESSION, "more memory"))
        elif pb < pa * (1 - t):
            flags.append((IMPROVEMENT, "less memory"))
    return flags


def compare_bench(rows_a, rows_b, t):
    pairs, only_a, only_b = _pair_bench(rows_a, rows_b)
    out = []
    for _, ra, rb in pairs:
        a, b = abresults.pool_bench(ra), abresults.pool_bench(rb)
        r0 = rb[0] if rb[0]["status"] == OK else ra[0]
        ta = {x["threads"] for x in ra}
        tb = {x["threads"] for x in rb}
        out.append({
            "variant": r0["variant"], "variant_label": r0["variant_label"], "direction": r0["direction"],
            "seq_len": r0["seq_len"], "shape": abresults.shape_text(r0["shape"]), "a": a, "b": b,
            "time_ratio": _ratio(b.get("median_ms"), a.get("median_ms")),
            "memory_ratio": _ratio(b.get("peak_bytes"), a.get("peak_bytes")),
            "flags": bench_verdicts(a, b, t),
            "threads_note": "" if ta == tb else f"threads A {sorted(ta, key=str)} vs B {sorted(tb, key=str)}",
        })
    out.sort(key=lambda r: (r["direction"], r["shape"], r["variant_label"], r["seq_len"] or 0))
    return out, only_a, only_b


# ---------------------------------------------------------------- train

def _spread(values):
    xs = [v for v in values if v is not None]
    return (min(xs), max(xs), abresults.mean_std(xs)) if xs else (None, None, (None, None, 0))


def train_verdicts(ra, rb, t):
    flags = []
    # per seed: a cell that was ok and now fails
    by_seed_a = {r["identity"]: r for r in ra}
    for r in rb:
        o = by_seed_a.get(r["identity"])
        if o is None:
            continue
        if o["status"] == OK and r["status"] != OK:
            flags.append((REGRESSION, f"seed {r['seed']}: ok -> {r['status']}"))
        elif o["status"] != OK and r["status"] == OK:
            flags.append((IMPROVEMENT, f"seed {r['seed']}: {o['status']} -> ok"))
    oka = [r for r in ra if r["status"] == OK]
    okb = [r for r in rb if r["status"] == OK]
    a_lo, a_hi, (a_mean, _, na) = _spread(r["test_accuracy"] for r in oka)
    b_lo, b_hi, (b_mean, _, nb) = _spread(r["test_accuracy"] for r in okb)
    if na and nb:
        if na > 1 and nb > 1:
            if b_hi < a_lo:
                flags.append((REGRESSION, "lower accuracy (beyond the seed spread)"))
            elif b_lo > a_hi:
                flags.append((IMPROVEMENT, "higher accuracy (beyond the seed spread)"))
        elif a_mean - b_mean > t:
            flags.append((REGRESSION, f"lower accuracy (by more than {t:g})"))
        elif b_mean - a_mean > t:
            flags.append((IMPROVEMENT, f"higher accuracy (by more than {t:g})"))
    s_a = _spread(r["tokens_per_second"] for r in oka)
    s_b = _spread(r["tokens_per_second"] for r in okb)
    if None not in (s_a[0], s_b[0]):
        if s_b[1] * (1 + t) < s_a[0]:
            flags.append((REGRESSION, "slower training"))
        elif s_a[1] * (1 + t) < s_b[0]:
            flags.append((IMPROVEMENT, "faster training"))
    m_a = _spread(r["peak_bytes"] for r in oka)[1]
    m_b = _spread(r["peak_bytes"] for r in okb)[1]
    if m_a and m_b:
        if m_b > m_a * (1 + t):
            flags.append((REGRESSION, "more memory"))
        elif m_b < m_a * (1 - t):
            flags.append((IMPROVEMENT, "less memory"))
    return flags


def _train_stats(rows):
    ok = [r for r in rows if r["status"] == OK]
    acc = abresults.mean_std(r["test_accuracy"] for r in ok)
    failed = {}
    for r in rows:
        if r["status"] != OK:
            failed[r["status"]] = failed.get(r["status"], 0) + 1
    return {"acc_mean": acc[0], "acc_std": acc[1], "n": acc[2], "seeds": len(rows), "failed": failed,
            "tokens_per_second": abresults.mean_std(r["tokens_per_second"] for r in ok)[0],
            "peak_bytes": abresults.mean_std(r["peak_bytes"] for r in ok)[0],
            "train_seconds": abresults.mean_std(r["train_seconds"] for r in ok)[0]}


def compare_train(rows_a, rows_b, t):
    ids_a = {r["identity"] for r in rows_a}
    ids_b = {r["identity"] for r in rows_b}
    only_a = [r for r in rows_a if r["identity"] not in ids_b]
    only_b = [r for r in rows_b if r["identity"] not in ids_a]
    ga, gb = {}, {}
    for r in rows_a:
        if r["identity"] in ids_b:
            ga.setdefault(r["config"], []).append(r)
    for r in rows_b:
        if r["identity"] in ids_a:
            gb.setdefault(r["config"], []).append(r)
    out = []
    for cfg, ra in ga.items():
        rb = gb.get(cfg, [])
        a, b = _train_stats(ra), _train_stats(rb)
        r0 = rb[0] if rb else ra[0]
        diff = b["acc_mean"] - a["acc_mean"] if None not in (a["acc_mean"], b["acc_mean"]) else None
        out.append({"variant": r0["variant"], "variant_label": r0["variant_label"], "task_label": r0["task_label"],
                    "a": a, "b": b, "acc_diff": diff,
                    "speed_ratio": _ratio(b["tokens_per_second"], a["tokens_per_second"]),
                    "memory_ratio": _ratio(b["peak_bytes"], a["peak_bytes"]),
                    "flags": train_verdicts(ra, rb, t)})
    out.sort(key=lambda r: (r["task_label"], r["variant_label"]))
    return out, only_a, only_b


# ---------------------------------------------------------------- both

def compare_sets(runs_a, runs_b, threshold=0.05):
    """The comparison as data (used by report.py): bench and train rows with flags, the cells
    present in one set only, and the number of regressions."""
    bench, bonly_a, bonly_b = compare_bench(abresults.bench_rows(runs_a), abresults.bench_rows(runs_b), threshold)
    train, tonly_a, tonly_b = compare_train(abresults.train_rows(runs_a), abresults.train_rows(runs_b), threshold)
    regressions = sum(1 for r in bench + train for kind, _ in r["flags"] if kind == REGRESSION)
    return {"threshold": threshold, "bench": bench, "train": train,
            "only_a": [describe(r) for r in bonly_a + tonly_a],
            "only_b": [describe(r) for r in bonly_b + tonly_b], "regressions": regressions}


def describe(row):
    """One line naming a cell (for the 'present in one set only' lists)."""
    if row["kind"] == "bench":
        return (f"bench {row['variant_label']} {row['direction']} N={row['seq_len']} "
                f"[{abresults.shape_text(row['shape'])}] ({row['status']})")
    return f"train {row['variant_label']} on {row['task_label']} seed {row['seed']} ({row['status']})"


def verdict_class(flags):
    """A compared row's class for the report's table: REGRESSION or IMPROVEMENT when flagged so, else None."""
    kinds = {k for k, _ in flags}
    return REGRESSION if REGRESSION in kinds else IMPROVEMENT if IMPROVEMENT in kinds else None


def flag_text(flags):
    marks = {REGRESSION: "REGRESSION: ", IMPROVEMENT: "improved: ", "": ""}
    return "; ".join(marks[k] + text for k, text in flags)


def fmt_ms(p):
    if p["status"] != OK:
        return p["status"]
    if p.get("median_ms") is None:
        return "-"
    s = abresults.fmt_num(p["median_ms"])
    if p.get("min_ms") is not None and p.get("max_ms") is not None:
        s += f" [{abresults.fmt_num(p['min_ms'])}-{abresults.fmt_num(p['max_ms'])}]"
    return s


def fmt_mib(p):
    v = p.get("peak_bytes")
    return "-" if v is None or p["status"] != OK else abresults.fmt_num(v / 2**20)


def fmt_ratio(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}x"


def fmt_acc(s):
    if s["acc_mean"] is None:
        bad = ", ".join(f"{k}x{v}" if v > 1 else k for k, v in s["failed"].items())
        return bad or "-"
    text = f"{100 * s['acc_mean']:.2f}"
    if s["acc_std"] is not None:
        text += f"±{100 * s['acc_std']:.2f}"
    text += f" (n={s['n']})"
    if s["failed"]:
        text += " +" + ",".join(s["failed"])
    return text


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def text_report(result, name_a="A", name_b="B"):
    out = [f"A = {name_a}", f"B = {name_b}", f"threshold {result['threshold']:g} "
           "(bench: B.min > A.max*(1+t) is slower; accuracy: beyond the seed spread, else by > t)", ""]
    if result["bench"]:
        rows = [[r["variant_label"], r["direction"], r["seq_len"], r["shape"], fmt_ms(r["a"]), fmt_ms(r["b"]),
                 fmt_ratio(r["time_ratio"]), fmt_mib(r["a"]), fmt_mib(r["b"]), fmt_ratio(r["memory_ratio"]),
                 "; ".join(x for x in (flag_text(r["flags"]), r["threads_note"]) if x)]
                for r in result["bench"]]
        out += ["Bench (time in ms: median [min-max]; memory: peak tracked MiB)",
                _table(["variant", "direction", "N", "shape", "A ms", "B ms", "B/A time", "A MiB", "B MiB",
                        "B/A mem", "verdict"], rows), ""]
    if result["train"]:
        rows = [[r["variant_label"], r["task_label"], fmt_acc(r["a"]), fmt_acc(r["b"]),
                 "-" if r["acc_diff"] is None else f"{100 * r['acc_diff']:+.2f}",
                 fmt_ratio(r["speed_ratio"]), fmt_ratio(r["memory_ratio"]), flag_text(r["flags"])]
                for r in result["train"]]
        out += ["Train (test accuracy %: mean±std over ok seeds; tokens/s and peak memory as B/A)",
                _table(["variant", "task", "A acc", "B acc", "diff (pts)", "B/A tok/s", "B/A mem", "verdict"],
                       rows), ""]
    if not result["bench"] and not result["train"]:
        out += ["No cell is present in both sets.", ""]
    for side, key in (("A", "only_a"), ("B", "only_b")):
        if result[key]:
            out.append(f"Only in {side} ({len(result[key])}):")
            out += [f"  {d}" for d in result[key]]
            out.append("")
    out.append(f"{result['regressions']} regression(s) flagged")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("a", metavar="A", help="baseline: a run file or a results directory")
    parser.add_argument("b", metavar="B", help="candidate: a run file or a results directory")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="relative margin for time and memory, absolute for accuracy (default 0.05)")
    parser.add_argument("--fail-if-regression", action="store_true", help="exit 1 when a regression is flagged")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold < 10:
        parser.error("--threshold must be in [0, 10)")
    loaded = abresults.load_or_report("compare.py", lambda: (abresults.load([args.a]), abresults.load([args.b])))
    if loaded is None:
        return 2
    runs_a, runs_b = loaded
    result = compare_sets(runs_a, runs_b, args.threshold)
    print(text_report(result, args.a, args.b))
    if args.fail_if_regression and result["regressions"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
