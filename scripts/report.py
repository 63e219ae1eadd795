#!/usr/bin/python3
"""Write one self-contained HTML report (and its Markdown twin) from attnbench results.

Usage: scripts/report.py DIR_OR_FILE... [--baseline DIR] [--out report.html] [--title T]
                         [--reference softmax]

Reads every run file (schema attnbench.run/1) under the given paths: sweep directories (also
several shards, or several directories read as one set), single run files, bench files. Writes
- OUT (default report.html): tables, plots embedded as base64 PNG, inline CSS, no external
  asset;
- OUT with .md: the same tables in Markdown, plots as PNG files beside it (OUT-stem-*.png).
Sections: accuracy (LRA Table 1 shape), training cost, speed and memory relative to the
reference variant (LRA Table 2 shape), figures, failures, comparison with --baseline,
context (machine, versions, revisions, command lines, dates). A run file that does not follow
the run schema has status invalid: listed in the failures with its first error, none of its
figures used.
Exit status: 0; 2 on usage errors (a path missing, no run file found, a file nested too deep,
OUT a directory or not writable).
"""
import argparse
import base64
import datetime
import html
import re
import sys
import urllib.parse
from pathlib import Path

import abresults
import compare
import plots
from abresults import OK

LRA_ORDER = ("listops", "text", "retrieval", "image", "pathfinder", "path_x", "pathx")
DIRECTION_ORDER = ("fwd", "fwd_bwd", "train_step", "decode")

CSS = """
body { font-family: sans-serif; font-size: 14px; margin: 1.5em 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0 1em 0; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #eee; } td.label, th.label { text-align: left; }
td.best { font-weight: bold; background: #e6f4e6; }
td.fail, span.fail { color: #a40000; } td.missing { color: #888; }
td.partial { background: #fff6e0; } tr.disagree td { background: #fff3c4; }
tr.regression td { background: #fde0e0; } tr.improvement td { background: #e6f4e6; }
p.note, span.note { color: #555; font-size: 0.92em; }
pre { background: #f6f6f6; padding: 4px 6px; margin: 0; white-space: pre-wrap; font-size: 0.88em; }
td pre { max-width: 70em; }
img { display: block; margin: 0.5em 0 1.2em 0; max-width: 100%; }
a.fn { text-decoration: none; font-size: 0.8em; vertical-align: super; }
"""


# ---------------------------------------------------------------- formatting

def esc(text):
    return html.escape(str(text), quote=True)


fmt_num = abresults.fmt_num


def fmt_int(x):
    return "-" if x is None else f"{x:.0f}"


def fmt_mib(b):
    return "-" if b is None else fmt_num(b / 2**20)


def fmt_pct(x):
    return "-" if x is None else f"{100 * x:.2f}"


def task_sort_key(label):
    name = label.split(" ")[0].lower()
    return (LRA_ORDER.index(name) if name in LRA_ORDER else len(LRA_ORDER), label)


def variant_sort_key(reference):
    return lambda label: (label.split(" ")[0] != reference, label)


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "x"


class Cell:
    """A table cell rendered twice: text for Markdown, html (default: escaped text) for HTML."""

    def __init__(self, text, html_=None, cls=None, title=None, attrs=None, bold=False):
        self.text, self.html, self.cls, self.title = str(text), html_, cls, title
        self.attrs, self.bold = attrs or {}, bold


class Doc:
    """Accumulates the HTML page and its Markdown twin in parallel."""

    def __init__(self):
        # md: Markdown blocks, or functions of {figure name: PNG file name} for a figure's link,
        # known only when written; figures: (name, png bytes)
        self.html, self.md, self.figures = [], [], []

    def h(self, level, text, anchor=None):
        a = f' id="{esc(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{a}>{esc(text)}</h{level}>")
        self.md.append("#" * level + " " + md_escape(text) + "\n")

    def p(self, text, html_=None, cls="note"):
        self.html.append(f'<p class="{cls}">{html_ if html_ is not None else esc(text)}</p>')
        self.md.append(md_escape(text) + "\n")

    def pre(self, text):
        self.html.append(f"<pre>{esc(text)}</pre>")
        # a fence longer than any run of backticks in the text, which cannot close it early
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
        self.md.append(f"{fence}\n{text}\n{fence}\n")

    def table(self, header, rows, table_id=None, groups=None, row_classes=None):
        """header: column names; groups: optional [(name, span)] above them; rows: lists of
        Cell or str; row_classes: optional CSS class per row."""
        tid = f' id="{esc(table_id)}"' if table_id else ""
        out = [f"<table{tid}>"]
        if groups:
            out.append("<tr>" + "".join(f'<th colspan="{span}">{esc(name)}</th>' for name, span in groups) + "</tr>")
        out.append("<tr>" + "".join(f'<th class="{"label" if i == 0 else ""}">{esc(h)}</th>'
                                    for i, h in enumerate(header)) + "</tr>")
        md_header = list(header)
        if groups:
            names = [g for g, span in groups for _ in range(span)]
            md_header = [f"{g} {h}".strip() if g else h for g, h in zip(names, header)]
        md = ["| " + " | ".join(md_escape(h) for h in md_header) + " |",
              "|" + "|".join("---" for _ in header) + "|"]
        for i, row in enumerate(rows):
            cells = [c if isinstance(c, Cell) else Cell(c) for c in row]
            rc = row_classes[i] if row_classes and row_classes[i] else None
            tds = []
            for j, c in enumerate(cells):
                classes = " ".join(x for x in (("label" if j == 0 else None), c.cls) if x)
                attrs = "".join(f' {k}="{esc(v)}"' for k, v in c.attrs.items())
                if classes:
                    attrs += f' class="{classes}"'
                if c.title:
                    attrs += f' title="{esc(c.title)}"'
                body = c.html if c.html is not None else esc(c.text)
                tds.append(f"<td{attrs}>{body}</td>")
            out.append((f'<tr class="{rc}">' if rc else "<tr>") + "".join(tds) + "</tr>")
            md.append("| " + " | ".join(f"**{md_escape(c.text)}**" if c.bold else md_escape(c.text) for c in cells)
                      + " |")
        out.append("</table>")
        self.html.append("\n".join(out))
        self.md.append("\n".join(md) + "\n")

    def figure(self, name, fig, caption):
        if fig is None:
            return
        png = plots.png_bytes(fig)
        self.figures.append((name, png))
        data = base64.b64encode(png).decode("ascii")
        self.html.append(f'<img alt="{esc(caption)}" title="{esc(caption)}" src="data:image/png;base64,{data}">')
        self.md.append(lambda files: f"![{md_escape(caption)}]({urllib.parse.quote(files[name])})\n")

    def details(self, summary, build):
        """A collapsed block in HTML (plain subsection in Markdown); build(doc) fills it."""
        self.html.append(f"<details><summary>{esc(summary)}</summary>")
        self.md.append(f"**{md_escape(summary)}**\n")
        build(self)
        self.html.append("</details>")


MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md_escape(text):
    """text as Markdown that shows it literally, on one line (a table row is one line): &, < and >
    as entities (Markdown passes raw HTML through), other characters Markdown reads as syntax
    (emphasis, code, links, headings, strike-through, table cells) backslash-escaped."""
    return re.sub(r"[\\`*_\[\]#|~&<>]", lambda m: MD_ENTITIES.get(m.group(), "\\" + m.group()),
                  str(text).replace("\n", " "))


# ---------------------------------------------------------------- failures

class Failures:
    """Every non-ok cell, numbered F1, F2, ...; tables link their failed cells here."""

    def __init__(self):
        self.items = []  # dicts: ref, kind, id, path, variant, where, seed, status, error
        self.index = {}

    def add(self, key, **item):
        if key in self.index:
            return self.index[key]
        ref = f"F{len(self.items) + 1}"
        item["ref"] = ref
        self.items.append(item)
        self.index[key] = ref
        return ref

    def ref_of(self, row):
        return self.index.get(_failure_key(row))

    def cell(self, rows, prefix_html="", prefix_text=""):
        """A Cell showing the statuses of failed rows, with a tooltip and links to the list."""
        parts_h, parts_t, titles = [], [], []
        counts = {}
        for r in rows:
            counts.setdefault(r["status"], []).append(r)
        for status, rs in counts.items():
            refs = sorted({self.ref_of(r) for r in rs if self.ref_of(r)}, key=lambda s: int(s[1:]))
            label = status if len(rs) == 1 else f"{status} ×{len(rs)}"
            links = "".join(f'<a class="fn" href="#{ref}">{ref}</a>' for ref in refs)
            parts_h.append(f'<span class="fail">{esc(label)}</span>{links}')
            parts_t.append(label + (f" ({', '.join(refs)})" if refs else ""))
            for r in rs:
                titles.append(f"{status}: {first_line(r['error'])}")
        sep_h = prefix_html + (" + " if prefix_html else "")
        sep_t = prefix_text + (" + " if prefix_text else "")
        return Cell(sep_t + ", ".join(parts_t), sep_h + ", ".join(parts_h), title="\n".join(titles))


def first_line(text):
    text = str(text or "").strip()
    return text.splitlines()[0] if text else "(no message)"


def _failure_key(row):
    if row["kind"] == "bench":
        return ("bench", row["path"], row["status"], row["error"])
    return ("train", row["path"])


def collect_failures(train, bench, missing):
    f = Failures()
    for r in train:
        if r["status"] != OK:
            f.add(_failure_key(r), kind="train", id=r["id"], path=r["path"], variant=r["variant_label"],
                  where=r["task_label"], seed=r["seed"], status=r["status"], error=r["error"])
    groups = {}
    for r in bench:
        if r["status"] != OK:
            groups.setdefault(_failure_key(r), []).append(r)
    for key, rs in groups.items():
        r = rs[0]
        lens = sorted({x["seq_len"] for x in rs}, key=lambda n: (n is None, n))
        dirs = sorted({x["direction"] for x in rs})
        where = f"N={','.join(str(n) for n in lens)} × {','.join(dirs)}"
        variants = sorted({x["variant_label"] for x in rs})
        f.add(key, kind="bench", id=r["id"], path=r["path"], variant=", ".join(variants), where=where,
              seed=r["seed"], status=r["status"], error=r["error"])
    for c in missing:
        status = c.get("status") or "pending"
        msg = ("no run file yet (the sweep has not finished this cell)" if status in ("pending", "running")
               else f"the manifest says '{status}' but runs/{c.get('id')}.json is missing")
        f.add(("missing", c.get("id")), kind=c.get("kind") or "?", id=c.get("id"), path=c.get("manifest"),
              variant=c.get("variant") or "?", where=c.get("task") or "", seed=c.get("seed"),
              status="missing" if status not in ("pending", "running") else status, error=msg)
    return f


def section_failures(doc, failures):
    doc.h(2, "Failures", "failures")
    if not failures.items:
        doc.p("Every cell finished with status ok.")
        return
    counts = {}
    for it in failures.items:
        counts[it["status"]] = counts.get(it["status"], 0) + 1
    doc.p("Every cell whose status is not ok, with its message. "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "."
          + (f" {abresults.INVALID}: the run file does not follow the run schema (results/schema/run.schema.json), "
             "so none of its figures is shown or averaged in; scripts/validate_run.py FILE lists every error."
             if abresults.INVALID in counts else ""))
    rows = []
    for it in failures.items:
        ref_html = f'<span id="{it["ref"]}">{it["ref"]}</span>'
        msg = str(it["error"] or "(no message)")
        rows.append([Cell(it["ref"], ref_html), it["kind"], Cell(it["variant"], cls="label"),
                     Cell(it["where"], cls="label"), "" if it["seed"] is None else str(it["seed"]),
                     Cell(it["status"], cls="fail"), Cell(msg, f"<pre>{esc(msg)}</pre>", cls="label"),
                     Cell(it["id"] or "", cls="label", title=it["path"] or "")])
    doc.table(["ref", "kind", "variant", "task / cells", "seed", "status", "message", "cell"], rows,
              table_id="failures-table")


# ---------------------------------------------------------------- accuracy (LRA Table 1)

def section_accuracy(doc, train, failures, reference):
    doc.h(2, "Accuracy (LRA Table 1 shape)", "accuracy")
    if not train:
        doc.p("No train runs.")
        return
    tasks = sorted({r["task_label"] for r in train}, key=task_sort_key)
    variants = sorted({r["variant_label"] for r in train}, key=variant_sort_key(reference))
    cells = {}
    for r in train:
        cells.setdefault((r["variant_label"], r["task_label"]), []).append(r)
    stats = {}
    for key, rs in cells.items():
        ok = [r for r in rs if r["status"] == OK and r["test_accuracy"] is not None]
        stats[key] = abresults.mean_std(r["test_accuracy"] for r in ok)
    best = {}
    for t in tasks:
        means = [stats[(v, t)][0] for v in variants if (v, t) in stats and stats[(v, t)][0] is not None]
        best[t] = max(means) if means else None
    averages = {}
    for v in variants:
        means, gaps, partial = [], [], False
        for t in tasks:
            m = stats.get((v, t), (None, None, 0))[0]
            if m is None:
                rs = cells.get((v, t), [])
                gaps.append(f"{t}: " + (", ".join(sorted({r['status'] for r in rs})) if rs else "not run"))
            else:
                means.append(m)
                partial |= any(r["status"] != OK for r in cells[(v, t)])
        averages[v] = (sum(means) / len(means) if not gaps and means else None, gaps, partial)
    best_avg = max((a for a, _, _ in averages.values() if a is not None), default=None)

    rows = []
    any_partial = any_rising = False
    for v in variants:
        row = [Cell(v)]
        for t in tasks:
            rs = cells.get((v, t), [])
            mean, std, n = stats.get((v, t), (None, None, 0))
            failed = [r for r in rs if r["status"] != OK]
            attrs = {"data-variant": v, "data-task": t}
            if not rs:
                row.append(Cell("—", cls="missing", title="not run", attrs=attrs))
                continue
            if mean is None:
                c = failures.cell(failed or rs)
                c.cls, c.attrs = "fail", dict(attrs, **{"data-status": ",".join(sorted({r["status"] for r in rs}))})
                row.append(c)
                continue
            seeds = {abresults.canonical(r["seed"]) for r in rs if r["status"] == OK and r["test_accuracy"] is not None}
            runs_of = f" runs of {len(seeds)} seed{'s' if len(seeds) != 1 else ''}" if len(seeds) < n else ""
            text = fmt_pct(mean) + (f" ± {fmt_pct(std)}" if std is not None else "") + f" (n={n}{runs_of})"
            rising = sum(1 for r in rs if r["still_improving"])
            if rising:
                any_rising = True
                text += f" ↑{rising}"
                attrs["data-still-improving"] = str(rising)
            attrs["data-mean"] = f"{mean:.6f}"
            attrs["data-n"] = str(n)
            is_best = best[t] is not None and abs(mean - best[t]) < 1e-12
            if failed:
                any_partial = True
                c = failures.cell(failed, esc(text), text)
                c.cls = "partial" + (" best" if is_best else "")
                c.attrs, c.bold = attrs, is_best
            else:
                c = Cell(text, cls="best" if is_best else None, attrs=attrs, bold=is_best)
            row.append(c)
        avg, gaps, partial = averages[v]
        if avg is None:
            row.append(Cell(f"incomplete ({'; '.join(gaps)})", "incomplete", cls="missing",
                            title="no average: " + "; ".join(gaps),
                            attrs={"data-variant": v, "data-task": "average"}))
        else:
            is_best = best_avg is not None and abs(avg - best_avg) < 1e-12
            text = fmt_pct(avg) + (" †" if partial else "")
            row.append(Cell(text, cls="best" if is_best else None, bold=is_best,
                            attrs={"data-variant": v, "data-task": "average", "data-mean": f"{avg:.6f}"}))
        rows.append(row)
    names = [t.split(" ")[0] for t in tasks]
    avg_label = f"Avg ({len(tasks)} task{'s' if len(tasks) != 1 else ''}: {', '.join(names)})"
    doc.table(["variant"] + tasks + [avg_label], rows, table_id="lra-accuracy")
    lower = {n.lower() for n in names}
    lra5 = {"listops", "text", "retrieval", "image", "pathfinder"}
    if lower & {"path_x", "pathx"}:
        convention = ("These include Path-X: unlike the 6-task averages of S4 and later papers, a failed Path-X is "
                      "not counted as 50 % here; the variant gets no average.")
    elif lower == lra5:
        convention = "These are the 5 tasks of LRA's own average (Path-X excluded), so the column is comparable."
    else:
        convention = ("This is neither LRA's 5-task average (Path-X excluded) nor the 6-task average of S4 and "
                      "later papers (a failed Path-X counted as 50 %); compare it with published averages only "
                      "over the same tasks.")
    doc.p(f"Test accuracy in %, mean ± sample standard deviation over the seeds that finished ok "
          f"(n = their number); best per column in bold. Avg = unweighted mean of the per-task means over the "
          f"{len(tasks)} task column(s) present in these results ({', '.join(tasks)}). {convention} "
          f"A failed cell (error, oom, timeout, diverged, ...) is shown as its status, linked to the Failures "
          f"section, and never counted as 0 nor averaged in. A variant without a result on every task column "
          f"gets no average (\"incomplete\"; the tooltip says why)."
          + (" † = the average includes a task where some seeds failed; those seeds are left out of that task's"
             " mean (the cell lists them after '+')." if any_partial else "")
          + (f" ↑k = k runs of the cell were still improving at their last evaluation (the last validation "
             f"accuracy is the run's best and beats the best before the last quarter of its evaluations by more "
             f"than {abresults.IMPROVING_DELTA:g}): under-trained, not converged." if any_rising else ""))
    floors = floors_text(train)
    if floors:
        doc.p("Floors of the probe tasks (from the run files' data): " + floors + ".")


def floors_text(train):
    """'mqar (seq_len=64, ...): chance 0.39 %, context floor (1/K) 25.00 %; ...' per task label."""
    seen = {}
    for r in train:
        if r["floors"] and r["task_label"] not in seen:
            seen[r["task_label"]] = r["floors"]
    parts = []
    for label, f in sorted(seen.items()):
        items = []
        if "chance_accuracy" in f:
            items.append(f"chance {fmt_pct(f['chance_accuracy'])} %")
        if "context_floor_accuracy" in f:
            items.append(f"context floor {fmt_pct(f['context_floor_accuracy'])} % (any value seen in the context)")
        parts.append(f"{label}: " + ", ".join(items))
    return "; ".join(parts)


def section_training(doc, train, failures, reference):
    doc.h(3, "Training runs per variant and task")
    tasks = sorted({r["task_label"] for r in train}, key=task_sort_key)
    rows = []
    for t in tasks:
        rs_t = [r for r in train if r["task_label"] == t]
        for v in sorted({r["variant_label"] for r in rs_t}, key=variant_sort_key(reference)):
            rs = [r for r in rs_t if r["variant_label"] == v]
            ok = [r for r in rs if r["status"] == OK]

            def m(key, scale=1.0):
                mean = abresults.mean_std(r[key] for r in ok)[0]
                return None if mean is None else mean * scale
            failed = [r for r in rs if r["status"] != OK]
            status_cell = Cell(f"{len(ok)}/{len(rs)} ok") if not failed else failures.cell(
                failed, esc(f"{len(ok)}/{len(rs)} ok"), f"{len(ok)}/{len(rs)} ok")
            seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: str(r["seed"])))
            rows.append([Cell(v), Cell(t, cls="label"), seeds, status_cell,
                         fmt_pct(m("test_accuracy")), fmt_pct(m("best_valid_accuracy")), fmt_num(m("final_train_loss")),
                         fmt_int(m("steps")), fmt_num(m("train_seconds")), fmt_num(m("tokens_per_second")),
                         fmt_mib(m("peak_bytes")), fmt_mib(m("peak_rss_bytes"))])
    doc.table(["variant", "task", "seeds", "status", "test acc %", "best valid %", "final loss", "steps",
               "train s", "tokens/s", "peak MiB (tracked)", "peak RSS MiB"], rows, table_id="train-runs")
    doc.p("Means over the seeds that finished ok.")


# ---------------------------------------------------------------- best of a tuned grid

def section_best_of_grid(doc, train, protocol):
    """Zoology's and MAD's protocol: the best of the tuned settings (by validation accuracy) per
    seed, then mean and spread over seeds; which setting won; how much of the grid solves."""
    tuned, solved = protocol["tuned"], protocol["solved"]
    if not tuned or not train:
        return
    doc.h(2, "Best of the tuned grid", "best-of-grid")
    doc.p(f"Tuned axes: {', '.join(tuned)}. Per seed the run with the best validation accuracy over the tuned "
          f"settings is kept and its test accuracy counts; mean ± std over seeds. 'won' lists the winning settings "
          f"with their number of seeds."
          + (f" Solved: the share of all runs of the grid (failed ones included) with test accuracy ≥ {solved:g}."
             if solved is not None else ""))
    rows = []
    for g in abresults.best_of_grid(train, tuned, solved):
        m, sd, n = g["best"]
        best = "-" if m is None else f"{fmt_pct(m)}" + (f" ± {fmt_pct(sd)}" if sd is not None else "") + f" (n={n})"
        notes = []
        if g["failed"]:
            notes.append(f"{g['failed']} of {g['runs']} runs failed")
        if g["seeds_without_result"]:
            notes.append(f"{g['seeds_without_result']} seed(s) without a finished run")
        if g["ties"]:
            notes.append(f"ties in {g['ties']} seed(s): first setting kept")
        label = g["variant"] + (f" ({abresults.params_text(g['settings'])})" if g["settings"] else "")
        won = "; ".join(f"{k} ×{v}" for k, v in sorted(g["winners"].items(), key=lambda kv: -kv[1]))
        rows.append([Cell(g["task"], cls="label"), Cell(label, cls="label"), best, Cell(won or "-", cls="label"),
                     "-" if g["solved_fraction"] is None else fmt_pct(g["solved_fraction"]),
                     Cell("; ".join(notes), cls="label")])
    doc.table(["task", "variant", "best-of-grid test accuracy %", "won", "solved %", "notes"], rows,
              table_id="best-of-grid")


def section_reproductions(doc, train, bench, manifests):
    """Per published result a sweep declares (spec.reproductions): the published values, ours
    (best of the tuned grid: mean ± std over seeds), each expected ordering's verdict and reason."""
    entries = abresults.reproductions_of(manifests)
    if not entries:
        return
    protocol = abresults.protocol_of(manifests)
    doc.h(2, "Reproductions", "reproductions")
    doc.p("Published results as the sweep specs state them, beside ours: accuracy is the best of the tuned grid "
          "(by validation accuracy, per seed; mean ± std over seeds); crossover(V) = the shortest length from which "
          "V stays faster than softmax; speedup(V, N) = softmax time / V time at N. Verdict per expectation: pass, "
          "fail, or inconclusive (no finished run, or the side expected higher is an accuracy still improving at "
          "its last evaluation: ↑). A result passes when all its expectations pass and fails when one fails.")
    rows, verdict_count = [], {}
    for e in entries:
        values = abresults.reproduction_values(e, train, bench, protocol)
        verdicts = [(text,) + abresults.verdict_of(text, values) for text in e.get("expect") or []]
        verdict = abresults.entry_verdict([(v, why) for _, v, why in verdicts])
        verdict_count[verdict] = verdict_count.get(verdict, 0) + 1
        ours = []
        for t, v in values.items():
            if v["value"] is None:
                continue
            if t[0] == "acc":
                ours.append(f"{t[1]} {fmt_pct(v['value'])}" + (f" ± {fmt_pct(v['std'])}" if v.get("std") is not None
                                                                 else "") + f" (n={v['n']})" +
                            (" ↑" if v.get("improving") else ""))
            else:
                ours.append(f"{abresults.term_text(t)} = {abresults._value_text(v['value'])}")
        floors = next((v["floors"] for v in values.values() if v.get("floors")), None)
        if floors:
            ours.append("floors: " + ", ".join(f"{k.replace('_accuracy', '').replace('_', ' ')} {fmt_pct(x)} %"
                                               for k, x in floors.items()))
        published = e.get("published")
        pub = abresults.params_text(published) if isinstance(published, dict) else str(published or "-")
        exp = "; ".join(f"{text}: {v}" + (f" ({why})" if why else "") for text, v, why in verdicts)
        source = f"{e.get('source', '?')}" + (f", {e['table']}" if e.get("table") else "")
        rows.append([Cell(e.get("id", "?"), cls="label"), Cell(source, cls="label"), Cell(pub, cls="label"),
                     Cell("; ".join(ours) or "-", cls="label"), Cell(exp, cls="label"),
                     Cell(verdict, cls={"pass": "best", "fail": "fail"}.get(verdict, "missing"),
                          attrs={"data-verdict": verdict, "data-id": str(e.get("id", "?"))})])
    doc.table(["result", "source", "published", "ours", "expected: verdict (reason)", "verdict"], rows,
              table_id="reproductions")
    doc.p("Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdict_count.items())) + ".")


# ---------------------------------------------------------------- MAD

MAD_TUNED = ("train.lr", "train.weight_decay")


def mad_scores(train, tuned=MAD_TUNED):
    """MAD's aggregation (mad/analysis.py) over the runs of the mad_* tasks: per variant, task
    setting and seed the best test accuracy over the tuned grid (MAD keeps the maximum test_acc),
    separately for the macro (MAD's metric) and micro accuracy, then the mean over seeds; the mean
    over a task's settings; the mean over tasks. A setting is labelled by the task parameters that
    differ from the most common value among that task's runs (MAD's baseline).

    Returns {"tasks": [(task, [(setting label, {variant: (macro, micro)})], {variant: (macro, micro)})],
    "variants": [...], "overall": {variant: (macro, micro)}}; None where no finished run."""
    rows = [r for r in train if r["task"].startswith("mad_")]
    if not rows:
        return None
    tuned = set(tuned)
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    variants = sorted({r["variant"] for r in rows}, key=variant_sort_key("softmax"))

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    tasks = []
    for task in sorted(by_task):
        rs = by_task[task]
        flats = [abresults.flat_params("", r["task_params"]) for r in rs]
        baseline = {}
        for k in abresults._varying(flats):
            values = [abresults.canonical(f.get(k)) for f in flats]
            baseline[k] = max(set(values), key=lambda v: (values.count(v), str(v)))
        groups = {}
        for r, f in zip(rs, flats):
            label = abresults.params_text({k: f.get(k) for k in baseline if abresults.canonical(f.get(k)) != baseline[k]})
            key = abresults.canonical({k: v for k, v in abresults.run_settings(r).items() if k not in tuned})
            groups.setdefault((label or "baseline", r["variant"], key), []).append(r)
        cells = {}  # (label, variant) -> [(macro, micro) per configuration]
        for (label, variant, _), members in groups.items():
            per_seed = {}
            for r in members:
                if r["status"] == OK:
                    per_seed.setdefault(abresults.canonical(r["seed"]), []).append(r)
            best = [(max((r["test_accuracy_macro"] for r in ms if r["test_accuracy_macro"] is not None), default=None),
                     max((r["test_accuracy"] for r in ms if r["test_accuracy"] is not None), default=None))
                    for ms in per_seed.values()]
            cells.setdefault((label, variant), []).append((mean(b[0] for b in best), mean(b[1] for b in best)))
        labels = sorted({lab for lab, _ in cells}, key=lambda lab: (lab != "baseline", lab))
        settings = []
        for lab in labels:
            settings.append((lab, {v: (mean(c[0] for c in cells[(lab, v)]), mean(c[1] for c in cells[(lab, v)]))
                                   for v in variants if (lab, v) in cells}))
        task_mean = {v: (mean(s[v][0] for _, s in settings if v in s), mean(s[v][1] for _, s in settings if v in s))
                     for v in variants}
        tasks.append((task, settings, task_mean))
    overall = {v: (mean(t[2][v][0] for t in tasks), mean(t[2][v][1] for t in tasks)) for v in variants}
    return {"tasks": tasks, "variants": variants, "overall": overall}


def section_mad(doc, train, protocol):
    """The MAD table: tasks x settings (rows) x variants (columns), best of the lr x wd grid."""
    tuned = protocol["tuned"] or list(MAD_TUNED)
    result = mad_scores(train, tuned)
    if result is None:
        return
    doc.h(2, "MAD: best of the tuned grid per task setting", "mad")
    doc.p(f"MAD's aggregation (athms/mad-lab mad/analysis.py): per task setting the best test accuracy over the tuned "
          f"axes ({', '.join(tuned)}; MAD selects on test accuracy, with no validation split), then the mean over a "
          "task's settings and the mean across tasks. Each cell: accuracy macro-averaged over vocabulary classes "
          "(MAD's metric, torchmetrics' default) / micro over scored tokens, in %. Settings are named by the task "
          "parameters that differ from the task's most common (baseline) values. '-': no finished run.")
    variants = result["variants"]

    def pair(p):
        if p is None or (p[0] is None and p[1] is None):
            return "-"
        return f"{'-' if p[0] is None else fmt_pct(p[0])} / {'-' if p[1] is None else fmt_pct(p[1])}"
    rows = []
    for task, settings, task_mean in result["tasks"]:
        for label, cells in settings:
            rows.append([Cell(task, cls="label"), Cell(label, cls="label")]
                        + [Cell(pair(cells.get(v)), attrs={"data-variant": v, "data-task": task, "data-setting": label})
                           for v in variants])
        rows.append([Cell(task, cls="label", bold=True), Cell("mean over settings", cls="label", bold=True)]
                    + [Cell(pair(task_mean.get(v)), bold=True,
                            attrs={"data-variant": v, "data-task": task, "data-setting": "mean"}) for v in variants])
    rows.append([Cell("all tasks", cls="label", bold=True), Cell("mean across tasks (MAD score)", cls="label", bold=True)]
                + [Cell(pair(result["overall"].get(v)), bold=True,
                        attrs={"data-variant": v, "data-task": "all", "data-setting": "mean"}) for v in variants])
    doc.table(["task", "setting"] + [f"{v} macro / micro %" for v in variants], rows, table_id="mad")


def section_test_splits(doc, train):
    """Accuracy of the selected models on the further test splits of train.test_at (length and
    pair-count extrapolation), beside the test accuracy at the training settings."""
    rows = [r for r in train if r["status"] == OK and r["test_splits"]]
    if not rows:
        return
    doc.h(2, "Accuracy at other test settings (train.test_at)", "test-splits")
    doc.p("The selected model of each run tested on the same task at other settings; mean ± std over seeds. The first "
          "column is the test accuracy at the training settings.")
    cells = {}
    for r in rows:
        key = (r["task_label"], r["variant_label"])
        cells.setdefault(key, {"train": [], "splits": {}})["train"].append(r["test_accuracy"])
        for text, n, acc, err in r["test_splits"]:
            cells[key]["splits"].setdefault((n, text), []).append((acc, err))
    splits = sorted({s for c in cells.values() for s in c["splits"]}, key=lambda s: (s[0] is None, s[0], s[1]))

    def acc_text(values):
        m, sd, n = abresults.mean_std(values)
        return "-" if m is None else fmt_pct(m) + (f" ± {fmt_pct(sd)}" if sd is not None else "") + f" (n={n})"
    out = []
    for (task, variant), c in sorted(cells.items(), key=lambda kv: (task_sort_key(kv[0][0]), kv[0][1])):
        row = [Cell(task, cls="label"), Cell(variant, cls="label"), acc_text(c["train"])]
        for s in splits:
            got = c["splits"].get(s, [])
            errors = [e for a, e in got if e]
            text = acc_text([a for a, _ in got])
            row.append(Cell(text + (f" ({len(errors)} failed)" if errors else ""), title="; ".join(errors) or None))
        out.append(row)
    doc.table(["task", "variant", "training settings"] + [f"N={n} ({text})" for n, text in splits], out,
              table_id="test-splits")


# ---------------------------------------------------------------- speed and memory (LRA Table 2)

def bench_groups(bench):
    """[(direction, shape, threads, rows)]: one group per direction x problem shape x threads.
    Rows whose shape is only partly known (failure records) join every compatible group."""
    full, partial = {}, []
    for r in bench:
        if any(v is None for v in r["shape"].values()) or r["threads"] is None:
            partial.append(r)
        else:
            key = (r["direction"], abresults.canonical(r["shape"]), r["threads"])
            full.setdefault(key, []).append(r)
    groups = {k: list(v) for k, v in full.items()}
    for r in partial:
        homes = [k for k, rs in full.items() if k[0] == r["direction"]
                 and abresults.shape_compatible(r["shape"], rs[0]["shape"])
                 and (r["threads"] is None or r["threads"] == k[2])]
        if not homes:
            key = (r["direction"], abresults.canonical(r["shape"]), r["threads"])
            homes = [key]
            groups.setdefault(key, [])
        for k in homes:
            groups[k].append(r)

    def order(k):
        d = k[0]
        return (DIRECTION_ORDER.index(d) if d in DIRECTION_ORDER else len(DIRECTION_ORDER), d, k[1], str(k[2]))
    out = []
    for k in sorted(groups, key=order):
        rs = groups[k]
        shape = next((r["shape"] for r in rs if all(v is not None for v in r["shape"].values())), rs[0]["shape"])
        out.append((k[0], shape, k[2], rs))
    return out


def group_title(direction, shape, threads):
    t = f"{direction} — {abresults.shape_text(shape)}"
    if threads is not None:
        t += f", {threads} thread{'s' if threads != 1 else ''}"
    return t


def section_speed(doc, bench, failures, reference):
    doc.h(2, "Speed and memory (LRA Table 2 shape)", "speed")
    if not bench:
        doc.p("No bench runs.")
        return []
    groups = bench_groups(bench)
    doc.p(f"From bench runs, per direction and problem shape. Speed-up = {reference} time / variant time "
          f"(median per call; > 1 is faster); memory = variant peak / {reference} peak (peak bytes of the "
          f"tracking allocator; < 1 is leaner); both at the same length. Absolute figures below each table: "
          f"median ms [min–max over repetitions] and peak MiB. A cell that did not run ok shows its status.")
    for gi, (direction, shape, threads, rows) in enumerate(groups, 1):
        title = group_title(direction, shape, threads)
        doc.h(3, title, f"bench-{gi}-{slug(direction)}")
        lens = sorted({r["seq_len"] for r in rows if r["seq_len"] is not None})
        labels = sorted({r["variant_label"] for r in rows}, key=variant_sort_key(reference))
        cell = {}
        for r in rows:
            cell.setdefault((r["variant_label"], r["seq_len"]), []).append(r)
        pooled = {k: abresults.pool_bench(v) for k, v in cell.items()}
        ref_label = next((lab for lab in labels if lab.split(" ")[0] == reference), None)

        def status_cell(key):
            return failures.cell([r for r in cell[key] if r["status"] != OK] or cell[key])
        if ref_label is None:
            doc.p(f"No {reference} run in this group: ratios are not available.")
        else:
            rows_out = []
            for lab in labels:
                speed, mem = [], []
                for n in lens:
                    key, rkey = (lab, n), (ref_label, n)
                    p, ref = pooled.get(key), pooled.get(rkey)
                    attrs = {"data-variant": lab, "data-seq-len": str(n), "data-direction": direction}
                    if p is None:
                        speed.append(Cell("—", cls="missing", title="not run"))
                        mem.append(Cell("—", cls="missing", title="not run"))
                    elif p["status"] != OK:
                        for lst in (speed, mem):
                            c = status_cell(key)
                            c.cls, c.attrs = "fail", dict(attrs, **{"data-status": p["status"]})
                            lst.append(c)
                    elif ref is None or ref["status"] != OK:
                        why = f"{reference} {'not run' if ref is None else ref['status']} at N={n}"
                        speed.append(Cell("n/a", cls="missing", title=why))
                        mem.append(Cell("n/a", cls="missing", title=why))
                    else:
                        s = (ref["median_ms"] / p["median_ms"]) if p.get("median_ms") and ref.get("median_ms") else None
                        m = (p["peak_bytes"] / ref["peak_bytes"]) if p.get("peak_bytes") is not None and \
                            ref.get("peak_bytes") else None
                        speed.append(Cell("-" if s is None else f"{s:.2f}×", attrs=dict(attrs, **{"data-speedup": f"{s}"})))
                        mem.append(Cell("-" if m is None else f"{m:.2f}", attrs=dict(attrs, **{"data-memory": f"{m}"})))
                ratios = [(n, float(c.attrs["data-speedup"])) if isinstance(c, Cell) and
                          c.attrs.get("data-speedup") not in (None, "None") else (n, None)
                          for n, c in zip(lens, speed)]
                first = abresults.crossover(ratios)
                beats = "" if lab == ref_label else ("—" if first is None else str(first))
                rows_out.append([Cell(lab)] + speed + mem + [beats])
            doc.table(["variant"] + [str(n) for n in lens] * 2 + ["N"], rows_out, table_id=f"ratios-{gi}-{slug(direction)}",
                      groups=[("", 1), (f"speed-up vs {reference} (N)", len(lens)),
                              (f"memory vs {reference} (N)", len(lens)), (f"faster than {reference} from", 1)])
        rows_abs = []
        for lab in labels:
            times, mems = [], []
            for n in lens:
                key = (lab, n)
                p = pooled.get(key)
                if p is None:
                    times.append(Cell("—", cls="missing"))
                    mems.append(Cell("—", cls="missing"))
                elif p["status"] != OK:
                    times.append(status_cell(key))
                    mems.append(status_cell(key))
                    times[-1].cls = mems[-1].cls = "fail"
                else:
                    t = fmt_num(p.get("median_ms"))
                    if p.get("min_ms") is not None and p.get("max_ms") is not None:
                        t += f" [{fmt_num(p['min_ms'])}–{fmt_num(p['max_ms'])}]"
                    if p["count"] > 1:
                        t += f" ({p['count']} runs)"
                    times.append(t)
                    mems.append(fmt_mib(p.get("peak_bytes")))
            exps = {r["scaling_exponent"] for r in rows if r["variant_label"] == lab and r["scaling_exponent"] is not None}
            exp = ", ".join(f"{e:.2f}" for e in sorted(exps)) if exps else "-"
            rows_abs.append([Cell(lab)] + times + mems + [exp])
        doc.table(["variant"] + [str(n) for n in lens] * 2 + ["k"], rows_abs, table_id=f"absolute-{gi}-{slug(direction)}",
                  groups=[("", 1), ("median ms [min–max] (N)", len(lens)), ("peak MiB (N)", len(lens)),
                          ("time ∝ Nᵏ", 1)])
        section_roofline(doc, gi, direction, title, rows, labels, lens, pooled)
        doc.figure(f"time-{gi}-{slug(direction)}", plots.bench_time(rows, f"time vs length: {title}"),
                   f"Time vs sequence length, {title}")
    doc.h(3, "Memory vs length")
    doc.figure("memory", plots.bench_memory([(group_title(d, s, t), rs) for d, s, t, rs in groups]),
               "Peak tracked memory vs sequence length")
    return groups


def section_roofline(doc, gi, direction, title, rows, labels, lens, pooled):
    """How close each cell runs to its own ceiling, against the peaks bench measured in the same
    run: the roofline fraction where the cost model declares its traffic, else the fraction of
    the fp32 FMA peak (marked *)."""
    if not any(p.get("fraction_of_fma_peak") is not None for p in pooled.values() if p["status"] == OK):
        return
    out = []
    for lab in labels:
        cells = []
        for n in lens:
            p = pooled.get((lab, n))
            if p is None or p["status"] != OK or p.get("fraction_of_fma_peak") is None:
                cells.append(Cell("—", cls="missing"))
            elif p.get("roofline_fraction") is not None:
                cells.append(fmt_pct(p["roofline_fraction"]))
            else:
                cells.append(fmt_pct(p["fraction_of_fma_peak"]) + "*")
        out.append([Cell(lab)] + cells)
    doc.table(["variant"] + [str(n) for n in lens], out, table_id=f"roofline-{gi}-{slug(direction)}",
              groups=[("", 1), ("% of the roofline (N); * % of the fp32 FMA peak (no bytes declared)", len(lens))])
    doc.figure(f"roofline-{gi}-{slug(direction)}", plots.roofline(rows, f"roofline: {title}"),
               f"Achieved GFLOP/s against arithmetic intensity, {title}, under the peaks measured in the same run")


# ---------------------------------------------------------------- figures of train runs

def section_train_figures(doc, train):
    if not train:
        return
    doc.h(3, "Accuracy vs training throughput (LRA Figure 3 shape)")
    fig = plots.accuracy_vs_throughput(train)
    if fig is None:
        doc.p("No finished train run with both accuracy and throughput.")
    doc.figure("accuracy-throughput", fig, "Test accuracy vs training tokens/s; marker area ∝ peak memory")
    fig = plots.accuracy_vs_width(train)
    if fig is not None:
        doc.h(3, "Accuracy vs width and vs state size (Zoology / Based Figure 2 shape)")
        doc.figure("accuracy-width", fig, "Best test accuracy vs model width and vs the state a decoder carries, "
                   "per task; dashed: the context floor, dotted: chance")
    doc.h(3, "Training curves")
    for i, task in enumerate(sorted({r["task_label"] for r in train}, key=task_sort_key), 1):
        rows = [r for r in train if r["task_label"] == task]
        fig = plots.training_curves(rows, task)
        if fig is None:
            doc.p(f"{task}: no curves recorded.")
        doc.figure(f"curves-{i}-{slug(rows[0]['task'])}", fig, f"Training curves on {task}")


# ---------------------------------------------------------------- comparison

def section_comparison(doc, result, baseline_paths):
    doc.h(2, "Comparison with the baseline", "comparison")
    doc.p(f"A = baseline ({', '.join(baseline_paths)}), B = these results. Threshold {result['threshold']:g}: "
          "bench time is flagged slower only when B's fastest repetition is slower than A's slowest by more than "
          "the threshold (faster: the mirror image); memory beyond the threshold; accuracy beyond the seed "
          "spread when both sides have several seeds (B's best seed below A's worst), else by more than the "
          "threshold (absolute, as a fraction). "
          f"{result['regressions']} regression(s) flagged.")
    if result["bench"]:
        rows, classes = [], []
        for r in result["bench"]:
            classes.append(compare.verdict_class(r["flags"]))
            rows.append([Cell(r["variant_label"]), r["direction"], str(r["seq_len"]), Cell(r["shape"], cls="label"),
                         compare.fmt_ms(r["a"]), compare.fmt_ms(r["b"]), compare.fmt_ratio(r["time_ratio"]),
                         compare.fmt_mib(r["a"]), compare.fmt_mib(r["b"]), compare.fmt_ratio(r["memory_ratio"]),
                         Cell("; ".join(x for x in (compare.flag_text(r["flags"]), r["threads_note"]) if x),
                              cls="label")])
        doc.table(["variant", "direction", "N", "shape", "A ms", "B ms", "B/A time", "A MiB", "B MiB", "B/A mem",
                   "verdict"], rows, table_id="compare-bench", row_classes=classes)
    if result["train"]:
        rows, classes = [], []
        for r in result["train"]:
            classes.append(compare.verdict_class(r["flags"]))
            rows.append([Cell(r["variant_label"]), Cell(r["task_label"], cls="label"), compare.fmt_acc(r["a"]),
                         compare.fmt_acc(r["b"]), "-" if r["acc_diff"] is None else f"{100 * r['acc_diff']:+.2f}",
                         compare.fmt_ratio(r["speed_ratio"]), compare.fmt_ratio(r["memory_ratio"]),
                         Cell(compare.flag_text(r["flags"]), cls="label")])
        doc.table(["variant", "task", "A acc %", "B acc %", "diff (points)", "B/A tokens/s", "B/A memory",
                   "verdict"], rows, table_id="compare-train", row_classes=classes)
    if not result["bench"] and not result["train"]:
        doc.p("No cell is present in both sets.")
    for side, key in (("the baseline (A)", "only_a"), ("these results (B)", "only_b")):
        if result[key]:
            doc.p(f"Only in {side}: {len(result[key])} cell(s).")
            doc.pre("\n".join(result[key]))


# ---------------------------------------------------------------- context

def section_context(doc, runs, manifests, paths):
    doc.h(2, "Context", "context")
    summary = abresults.context_summary(runs)
    disagree = [k for k, vals in summary["fields"].items() if len(vals) > 1]
    if disagree:
        doc.p("The runs disagree on: " + ", ".join(disagree) + " (highlighted; counts are numbers of run files).",
              cls="note")
    rows, classes = [], []
    for k in sorted(summary["fields"], key=lambda k: (k.startswith("versions."), k == "cpu_flags", k)):
        vals = summary["fields"][k]
        if len(vals) == 1:
            text = next(iter(vals))
        else:
            text = "; ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in sorted(vals.items(), key=lambda kv: -kv[1]))
        rows.append([Cell(k), Cell(text, cls="label")])
        classes.append("disagree" if len(vals) > 1 else None)
    if summary["dates"]:
        a, b = summary["dates"]
        rows.append([Cell("dates"), Cell(a if a == b else f"{a} … {b}", cls="label")])
        classes.append(None)
    rows.append([Cell("inputs"), Cell(", ".join(paths), cls="label")])
    classes.append(None)
    for m in manifests:
        counts = {}
        for c in m.get("cells") or []:
            counts[c.get("status", "?")] = counts.get(c.get("status", "?"), 0) + 1
        rows.append([Cell("sweep"), Cell(f"{m.get('name', '?')} ({m['_path']}): {len(m.get('cells') or [])} cells; "
                                         + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), cls="label")])
        classes.append(None)
    doc.table(["field", "value"], rows, table_id="context", row_classes=classes)

    cmds = summary["commands"]

    def commands(d):
        d.pre("\n".join(f"{c}" + (f"    # ×{n}" if n > 1 else "") for c, n in sorted(cmds.items())))
    doc.details(f"Command lines ({len(cmds)} distinct)", commands)

    def load_text(c):
        """Other runnable threads at the start (a snapshot) and the 1-minute load average (which
        includes earlier work, e.g. a sweep's previous cells): timings beside other work are
        slower and noisier."""
        load, others = c.get("load_avg"), abresults.number(c.get("runnable_at_start"))
        parts = []
        if others is not None:
            parts.append(f"{others:g} other runnable")
        if isinstance(load, list) and load and abresults.number(load[0]) is not None:
            parts.append(f"1-min load {load[0]:.2f}")
        return ", ".join(parts)

    def run_list(d):
        rows = []
        for r in sorted(runs, key=lambda r: r["_path"]):
            c = r.get("context") if isinstance(r.get("context"), dict) else {}
            if r.get("kind") == "bench":
                what = ", ".join(abresults._name_params(v)[0] for v in (r.get("variants") or []))
                task = "bench"
            else:
                what = abresults._name_params(r.get("variant"))[0]
                task = abresults._name_params(r.get("task"))[0]
            rows.append([Cell(r["_path"]), r.get("kind", "?"), Cell(what, cls="label"), Cell(task, cls="label"),
                         str(r.get("seed", "")), abresults.status_of(r), str(c.get("date", "")),
                         str(c.get("git_revision", "")), str(c.get("threads", "")), load_text(c)])
        d.table(["file", "kind", "variant(s)", "task", "seed", "status", "date", "revision", "threads", "load"], rows,
                table_id="run-files")
    doc.details(f"Run files ({len(runs)})", run_list)


# ---------------------------------------------------------------- page

def build(runs, paths, title, reference, baseline=None, baseline_paths=(), threshold=0.05, manifests=()):
    train = abresults.train_rows(runs)
    bench = abresults.bench_rows(runs)
    missing = abresults.missing_cells(manifests, runs)
    failures = collect_failures(train, bench, missing)
    plots.set_variants([r["variant"] for r in train + bench])
    doc = Doc()
    doc.h(1, title)
    statuses = {}
    for r in runs:
        statuses[abresults.status_of(r)] = statuses.get(abresults.status_of(r), 0) + 1
    n_train = sum(1 for r in runs if r.get("kind") == "train")
    n_bench = sum(1 for r in runs if r.get("kind") == "bench")
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc.p(f"{len(runs)} run files ({n_train} train, {n_bench} bench; "
          + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())) + ")"
          + (f", {len(missing)} sweep cells without a run file" if missing else "")
          + f". Generated {generated}. Sections: accuracy, speed and memory, failures"
          + (", comparison" if baseline is not None else "") + ", context.")
    section_accuracy(doc, train, failures, reference)
    section_best_of_grid(doc, train, abresults.protocol_of(manifests))
    section_reproductions(doc, train, bench, manifests)
    section_mad(doc, train, abresults.protocol_of(manifests))
    section_test_splits(doc, train)
    if train:
        section_training(doc, train, failures, reference)
        section_train_figures(doc, train)
    section_speed(doc, bench, failures, reference)
    section_failures(doc, failures)
    if baseline is not None:
        section_comparison(doc, compare.compare_sets(baseline, runs, threshold), list(baseline_paths))
    section_context(doc, runs, list(manifests), list(paths))
    return doc


def write(doc, out, title):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(doc.html) + "\n</body>\n</html>\n")
    written = [out]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    md_path = out.with_suffix(".md")
    names = {}
    for name, png in doc.figures:
        p = out.with_name(f"{out.stem}-{name}.png")
        p.write_bytes(png)
        names[name] = p.name
        written.append(p)
    md = "\n".join(block(names) if callable(block) else block for block in doc.md)
    md_path.write_text(md, encoding="utf-8")
    written.insert(1, md_path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="result directories or run files")
    parser.add_argument("--baseline", action="append", metavar="DIR",
                        help="results to compare against (repeatable; read as one set)")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default report.html); "
                        "the Markdown twin and its PNGs go beside it")
    parser.add_argument("--title", help="page title (default: attnbench report, with the sweep name)")
    parser.add_argument("--reference", default="softmax",
                        help="variant the speed and memory ratios are relative to (default softmax)")
    parser.add_argument("--threshold", type=float, default=0.05, help="comparison threshold (see compare.py)")
    args = parser.parse_args(argv)
    if Path(args.out).is_dir():  # checked before the work; write() would fail only at the end
        print(f"report.py: --out {args.out} is a directory; give the HTML file to write, "
              f"e.g. {Path(args.out) / 'report.html'}", file=sys.stderr)
        return 2
    loaded = abresults.load_or_report("report.py", lambda: (
        abresults.load(args.paths), abresults.load(args.baseline) if args.baseline else None,
        abresults.load_manifests(args.paths)))
    if loaded is None:
        return 2
    runs, baseline, manifests = loaded
    title = args.title
    if not title:
        names = sorted({str(m.get("name")) for m in manifests if m.get("name")})
        title = "attnbench report" + (f": {', '.join(names)}" if names else "")
    doc = build(runs, args.paths, title, args.reference, baseline, args.baseline or (), args.threshold, manifests)
    try:
        written = write(doc, args.out, title)
    except OSError as e:
        print(f"report.py: cannot write {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
