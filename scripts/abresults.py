#!/usr/bin/python3
"""Reading attnbench result sets: run files (schema attnbench.run/1) and sweep manifests.

A result set is any mix of run files and directories; directories are searched recursively
for *.json, and only documents whose "schema" is attnbench.run/... count as runs (a sweep's
manifest.json, attnbench.sweep/1, is read separately by load_manifests). Unknown keys are
ignored everywhere; an unknown attnbench.run version is read as version 1 with a warning. A file
that is not JSON is skipped with a warning; one nested deeper than abschema.MAX_DEPTH stops the
reading (abschema.TooDeepError).

Every run file is checked against the run schema (abschema; needs python3-jsonschema). One that
does not follow it (a string, 7.5 or NaN accuracy, ...) becomes a failure record with status
"invalid" and its first error as message: none of its figures is shown or averaged in.

Flattening:
- train_rows(runs): one row per train run (variant, task, seed, params, status, metrics);
- bench_rows(runs): one row per bench entry (variant, seq_len, direction, shape, timings);
  a failed bench run without entries becomes one failed row per length x direction it was
  asked for (from its `model`, which holds the bench request in a sweep's failure record).
Used by report.py and compare.py.
"""
import json
import math
import re
import statistics
import sys
from pathlib import Path

import abschema

RUN_SCHEMA = "attnbench.run/1"
RUN_SCHEMA_PREFIX = "attnbench.run/"
SWEEP_SCHEMA_PREFIX = "attnbench.sweep/"
OK = "ok"
INVALID = "invalid"  # a run file that does not follow the schema (not a status the harness writes)

TRAIN_METRICS = ("test_accuracy", "test_accuracy_macro", "best_valid_accuracy", "final_train_loss", "train_seconds", "steps",
                 "tokens_per_second", "peak_bytes", "peak_rss_bytes", "parameters", "best_step",
                 "step_seconds_median", "tokens_per_second_median_step", "state_bytes")
BENCH_FIGURES = ("median_ms", "min_ms", "max_ms", "tokens_per_second", "peak_bytes", "peak_rss_bytes",
                 "flops", "gflops_per_second", "repetitions", "predicted_bytes", "predicted_peak_bytes",
                 "setup_bytes", "bytes", "fraction_of_fma_peak", "roofline_fraction")


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def load_or_report(prog, load):
    """load() for a script's main(): a missing path or an input that is not a results tree is
    printed as `prog: ...` on stderr and gives None (the script then exits 2)."""
    try:
        return load()
    except FileNotFoundError as e:
        print(f"{prog}: no such file or directory: {e}", file=sys.stderr)
    except abschema.InputError as e:  # no run file found, one nested too deep
        print(f"{prog}: {e}", file=sys.stderr)
    return None


class NoRunsError(abschema.InputError):
    """No run file was found under the given paths (a usage error for the scripts)."""


# ---------------------------------------------------------------- loading

def _json_files(paths):
    """(files, missing, explicit): every *.json under the paths, each once, in a stable order;
    explicit = the files that were named directly (not found in a directory)."""
    files, missing, seen, explicit = [], [], set(), set()
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.json") if q.is_file())
        elif p.is_file():
            found = [p]
            explicit.add(p.resolve())
        else:
            missing.append(str(arg))
            continue
        for q in found:
            key = q.resolve()
            if key not in seen:
                seen.add(key)
                files.append(q)
    return files, missing, explicit


def _read_json(path):
    try:
        return abschema.read_json(path)
    except (OSError, ValueError) as e:
        warn(f"{path}: not readable as JSON ({e}); skipped")
        return None


def load(paths, quiet=False):
    """Every run document under `paths` (files or directories), as dicts.

    Each dict gains "_path" (the file it came from) and "_id" (the file name without .json,
    which is the cell id for a sweep's runs/<cell>.json). Raises FileNotFoundError naming
    paths that do not exist and NoRunsError when no run file is found at all.
    """
    files, missing, explicit = _json_files(paths)
    if missing:
        raise FileNotFoundError(", ".join(missing))
    runs = []
    for path in files:
        doc = _read_json(path)
        if not isinstance(doc, dict):
            continue
        schema = doc.get("schema")
        if not isinstance(schema, str) or not schema.startswith(RUN_SCHEMA_PREFIX):
            # manifests and other JSON are skipped silently when found in a directory
            if not quiet and path.resolve() in explicit and not str(schema).startswith(SWEEP_SCHEMA_PREFIX):
                warn(f"{path}: schema {schema!r} is not an attnbench run file; skipped")
            continue
        if schema != RUN_SCHEMA and not quiet:
            warn(f"{path}: unknown schema version '{schema}', read as {RUN_SCHEMA}")
        errors = abschema.errors_of(abschema.load_validator(), dict(doc, schema=RUN_SCHEMA))
        if errors:
            doc = invalid_record(doc, errors)
            if not quiet:
                warn(f"{path}: {doc['error']}; shown as {INVALID}")
        doc["_path"] = str(path)
        doc["_id"] = path.stem
        runs.append(doc)
    if not runs:
        raise NoRunsError("no attnbench run files (\"schema\": \"%s\") found in: %s"
                          % (RUN_SCHEMA, ", ".join(str(p) for p in paths)))
    return runs


def _short(text, width=160):
    return text if len(text) <= width else text[:width - 1] + "…"


# The fields that place a run in the tables (which row, which column); an invalid run keeps those
# the schema found no fault in, so it shows where it belongs.
IDENTITY_FIELDS = ("kind", "variant", "variants", "task", "model", "train", "seed", "context")


def invalid_record(doc, errors):
    """A run file that does not follow the schema, as a failure record: status INVALID, the first
    error as message, no metrics (bench: its entries' lengths and directions only, to place it)."""
    faulty = {m.group(1) for m in (re.match(r"\$\.([^.\[]+)", p) for p, _ in errors) if m}
    out = {k: doc[k] for k in IDENTITY_FIELDS if k in doc and k not in faulty}
    out.setdefault("kind", "train")  # a run of no known kind still gets a row, so it is listed
    path, message = errors[0]
    more = f" (+{len(errors) - 1} more; scripts/validate_run.py lists them)" if len(errors) > 1 else ""
    out.update(schema=RUN_SCHEMA, status=INVALID, error=f"invalid run file: {_short(f'{path}: {message}')}{more}")
    metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
    entries = metrics.get("entries") if isinstance(metrics.get("entries"), list) else []
    out["metrics"] = {"entries": [dict(e, status=INVALID) for e in map(_entry_place, entries) if e]}
    return out


def _entry_place(e):
    """What places a bench entry in the tables (variant, length, direction, batch, scope), taking
    only well-typed values; None without a length and a direction."""
    if not isinstance(e, dict):
        return None
    kinds = {"variant": str, "seq_len": int, "direction": str, "batch": int, "scope": str}
    out = {k: e[k] for k, t in kinds.items() if isinstance(e.get(k), t) and not isinstance(e.get(k), bool)}
    return out if "seq_len" in out and "direction" in out else None


def load_manifests(paths):
    """Sweep manifests (manifest.json, manifest.shard-i-of-n.json) under the paths."""
    files, _, _ = _json_files([p for p in paths if Path(p).exists()])
    out = []
    for path in files:
        if not path.name.startswith("manifest"):
            continue
        doc = _read_json(path)
        if isinstance(doc, dict) and str(doc.get("schema", "")).startswith(SWEEP_SCHEMA_PREFIX):
            doc["_path"] = str(path)
            out.append(doc)
    return out


def missing_cells(manifests, runs):
    """Manifest cells that have no run file among `runs` (pending, running, or lost)."""
    have = {r.get("_id") for r in runs}
    out, seen = [], set()
    for m in manifests:
        for c in m.get("cells") or []:
            cid = c.get("id")
            if not cid or cid in have or cid in seen:
                continue
            seen.add(cid)
            out.append(dict(c, manifest=m.get("_path"), sweep=m.get("name")))
    return out


# ---------------------------------------------------------------- small helpers

def canonical(value):
    """A stable text form of a JSON value (sorted keys), usable as a dict key."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def status_of(run):
    s = run.get("status")
    return s if isinstance(s, str) and s else "error"


def number(value):
    """value as a finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def mean_std(values):
    """(mean, sample std or None, n) of the numbers in values (None are skipped)."""
    xs = [v for v in (number(x) for x in values) if v is not None]
    if not xs:
        return None, None, 0
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else None
    return m, s, len(xs)


def flat_params(prefix, obj):
    """{"prefix.key": value} for a params object (nested objects are dotted further)."""
    out = {}
    if not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flat_params(key, v))
        else:
            out[key] = v
    return out


def value_text(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return canonical(v)
    return str(v)


def fmt_num(x):
    """A figure with 3-4 significant digits and no exponent for ordinary magnitudes."""
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def params_text(params):
    return ", ".join(f"{k}={value_text(v)}" for k, v in params.items())


def command_text(cmd):
    if isinstance(cmd, list):
        import shlex
        return " ".join(shlex.quote(str(a)) for a in cmd)
    return str(cmd) if cmd is not None else ""


def _name_params(obj):
    if isinstance(obj, dict):
        params = obj.get("params")
        return str(obj.get("name") or "?"), params if isinstance(params, dict) else {}
    if isinstance(obj, str):
        return obj, {}
    return "?", {}


# ---------------------------------------------------------------- train runs

def train_rows(runs):
    """One dict per train run: identity, status and metrics (missing metrics are None)."""
    rows = []
    for r in runs:
        if r.get("kind") != "train":
            continue
        variant, vparams = _name_params(r.get("variant"))
        task, tparams = _name_params(r.get("task"))
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        status = status_of(r)
        row = {
            "kind": "train", "path": r.get("_path"), "id": r.get("_id"), "status": status,
            "error": r.get("error") or ("" if status == OK else "(no message)"),
            "variant": variant, "variant_params": vparams, "task": task, "task_params": tparams,
            "model": r.get("model") if isinstance(r.get("model"), dict) else {},
            "train": r.get("train") if isinstance(r.get("train"), dict) else {},
            "seed": r.get("seed"),
            "context": r.get("context") if isinstance(r.get("context"), dict) else {},
            "curves": metrics.get("curves") if isinstance(metrics.get("curves"), dict) else {},
        }
        for k in TRAIN_METRICS:
            row[k] = number(metrics.get(k))
        # train.test_at: [(split text, seq_len, accuracy or None, error or None)]
        row["test_splits"] = [(params_text(s.get("set") if isinstance(s.get("set"), dict) else {}), s.get("seq_len"),
                               number(s.get("test_accuracy")), s.get("error"))
                              for s in (metrics.get("test_splits") or []) if isinstance(s, dict)]
        if status != OK:
            row["test_accuracy"] = None  # a failed run is never averaged in, whatever it carries
        row["still_improving"] = status == OK and still_improving(row["curves"])
        data = metrics.get("data") if isinstance(metrics.get("data"), dict) else {}
        row["floors"] = {k: number(data.get(k)) for k in ("chance_accuracy", "context_floor_accuracy")
                         if number(data.get(k)) is not None}
        row["identity"] = train_identity(row)
        row["config"] = train_identity(row, with_seed=False)
        rows.append(row)
    # A failed record of a run that also finished ok (a re-run, in another directory) is superseded.
    done = {canonical(r["identity"]) for r in rows if r["status"] == OK}
    rows = [r for r in rows if r["status"] == OK or canonical(r["identity"]) not in done]
    _label_train_rows(rows)
    return rows


# ---------------------------------------------------------------- protocols: best of a tuned grid

def protocol_of(manifests):
    """{"tuned": [dotted keys], "solved": threshold or None} from the sweeps' specs (the union of
    their tuned axes; the first solved threshold found)."""
    tuned, solved = [], None
    for m in manifests:
        spec = m.get("spec") if isinstance(m.get("spec"), dict) else {}
        p = spec.get("protocol") if isinstance(spec.get("protocol"), dict) else {}
        for k in p.get("tuned") or []:
            if isinstance(k, str) and k not in tuned:
                tuned.append(k)
        if solved is None and number(p.get("solved")) is not None:
            solved = number(p.get("solved"))
    return {"tuned": tuned, "solved": solved}


def run_settings(row):
    """Every setting of a train row as dotted keys, as a sweep's grid names them."""
    out = {}
    for group, obj in (("variant", row["variant_params"]), ("task", row["task_params"]), ("model", row["model"]),
                       ("train", row["train"])):
        out.update(flat_params(group, obj))
    return out


def best_of_grid(rows, tuned, solved=None):
    """Groups train rows by everything but the tuned keys and the seed. Per group and seed the
    run with the best validation accuracy over the tuned settings is kept (ties: the first in
    the settings' order, counted in "ties"); its test accuracy is that seed's best-of-grid.

    Returns [{variant, task, settings (the untuned ones that differ between groups), best
    (mean, std, n seeds with a finished run), winners {setting text: seeds}, solved_fraction
    (share of the grid's runs, failed ones included, whose test accuracy reaches `solved`),
    runs, failed, ties, seeds_without_result}]."""
    groups = {}
    for r in rows:
        settings = run_settings(r)
        key = canonical({"variant": r["variant"], "task": r["task"],
                         "settings": {k: v for k, v in settings.items() if k not in tuned}})
        groups.setdefault(key, []).append((r, {k: settings.get(k) for k in tuned}))
    untuned = [{k: v for k, v in run_settings(rs[0][0]).items() if k not in tuned} for rs in groups.values()]
    differing = _varying(untuned)
    out = []
    for (key, members), flat in zip(groups.items(), untuned):
        first = members[0][0]
        by_seed = {}
        for r, setting in members:
            by_seed.setdefault(canonical(r["seed"]), []).append((r, setting))
        bests, winners, ties, without = [], {}, 0, 0
        for seed_runs in by_seed.values():
            done = [(r, st) for r, st in seed_runs if r["status"] == OK and r["test_accuracy"] is not None]
            if not done:
                without += 1
                continue
            done.sort(key=lambda rs: canonical(rs[1]))

            def score(rs):
                v = rs[0]["best_valid_accuracy"]
                return v if v is not None else rs[0]["test_accuracy"]
            top = max(score(rs) for rs in done)
            leaders = [rs for rs in done if score(rs) == top]
            ties += len(leaders) > 1
            r, st = leaders[0]
            bests.append(r["test_accuracy"])
            text = params_text(st)
            winners[text] = winners.get(text, 0) + 1
        solved_fraction = None
        if solved is not None:
            hits = sum(1 for r, _ in members if r["status"] == OK and (r["test_accuracy"] or 0) >= solved)
            solved_fraction = hits / len(members)
        out.append({"variant": first["variant"], "task": first["task"], "settings": {k: flat.get(k) for k in differing},
                    "best": mean_std(bests), "winners": winners, "solved_fraction": solved_fraction,
                    "runs": len(members), "failed": sum(1 for r, _ in members if r["status"] != OK),
                    "ties": ties, "seeds_without_result": without})
    out.sort(key=lambda g: (g["task"], g["variant"], canonical(g["settings"])))
    return out


def train_identity(row, with_seed=True):
    key = {"variant": row["variant"], "variant_params": row["variant_params"], "task": row["task"],
           "task_params": row["task_params"], "model": row["model"], "train": row["train"]}
    if with_seed:
        key["seed"] = row["seed"]
    return canonical(key)


def _varying(dicts):
    """Keys whose values differ among the flat dicts (a key missing somewhere counts as differing)."""
    keys = set()
    for d in dicts:
        keys.update(d)
    out = []
    for k in sorted(keys):
        vals = {canonical(d.get(k, "<missing>")) for d in dicts}
        if len(vals) > 1:
            out.append(k)
    return out


def _label_train_rows(rows):
    """Adds task_label and variant_label: the name plus whichever settings tell rows apart.

    task_label: task name + task params that vary among runs of that task.
    variant_label: variant name + variant/model/train settings that vary among the runs of that
    variant on one task (so per-task overrides, constant within a task, do not split rows).
    """
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    for task, rs in by_task.items():
        flats = [flat_params("", r["task_params"]) for r in rs]
        keys = _varying(flats)
        for r, f in zip(rs, flats):
            r["task_label"] = task + (f" ({params_text({k: f.get(k) for k in keys})})" if keys else "")

    def settings(r):
        d = flat_params("variant", r["variant_params"])
        d.update(flat_params("model", r["model"]))
        d.update(flat_params("train", r["train"]))
        return d

    by_variant = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    for variant, rs in by_variant.items():
        keys = set()
        groups = {}
        for r in rs:
            groups.setdefault(r["task_label"], []).append(settings(r))
        for flats in groups.values():
            keys.update(_varying(flats))
        keys = sorted(keys)
        for r in rs:
            s = settings(r)
            r["variant_label"] = variant + (f" ({params_text({k: s.get(k) for k in keys})})" if keys else "")


# ---------------------------------------------------------------- bench runs

def _shape(model, direction, entry):
    """The problem shape of a bench entry as an ordered dict; None where unknown (a failure
    record of a sweep holds only what the spec asked for), which shape_compatible treats as
    matching anything."""
    model = model if isinstance(model, dict) else {}
    if direction == "train_step":
        m = model.get("train_step_model") if isinstance(model.get("train_step_model"), dict) else {}
        shape = {"batch": None, "layers": m.get("layers"), "d_model": m.get("d_model"), "heads": m.get("heads"),
                 "mlp_dim": m.get("mlp_dim")}
    else:
        # scope "attend": attend(q, k, v) timed without the projections (bench --attend-only).
        shape = {"batch": None, "d_model": model.get("d_model"), "heads": model.get("heads"),
                 "scope": entry.get("scope", "mixer")}
    shape["batch"] = entry.get("batch", model.get("batch"))
    shape["causal"] = bool(model["causal"]) if "causal" in model else None
    return shape


def shape_compatible(a, b):
    """True when two shapes agree on every field both of them know."""
    return all(a.get(k) is None or b.get(k) is None or a.get(k) == b.get(k) for k in set(a) | set(b))


def shape_text(shape):
    names = {"batch": "B", "layers": "layers", "d_model": "D", "heads": "H", "mlp_dim": "mlp"}
    parts = [f"{names.get(k, k)}={value_text(v)}" for k, v in shape.items()
             if k not in ("causal", "scope") and v is not None]
    if shape.get("causal"):
        parts.append("causal")
    if shape.get("scope") == "attend":
        parts.append("attend(q, k, v) alone")
    return " ".join(parts) or "shape not recorded"


def bench_rows(runs):
    """One dict per bench entry (variant x seq_len x direction) of every bench run."""
    rows = []
    for r in runs:
        if r.get("kind") != "bench":
            continue
        status = status_of(r)
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        model = r.get("model") if isinstance(r.get("model"), dict) else {}
        context = r.get("context") if isinstance(r.get("context"), dict) else {}
        variants = r.get("variants") if isinstance(r.get("variants"), list) else []
        vparams = {}
        for v in variants:
            name, params = _name_params(v)
            vparams[name] = params
        default_variant = _name_params(variants[0])[0] if variants else "?"
        entries = [e for e in (metrics.get("entries") or []) if isinstance(e, dict)]
        if not entries and status != OK:
            # A failure record: one failed row per requested length x direction.
            lens = model.get("seq_len") if isinstance(model.get("seq_len"), list) else [model.get("seq_len")]
            dirs = model.get("direction") if isinstance(model.get("direction"), list) else [model.get("direction")]
            for v in (variants or [{"name": "?"}]):
                for n in lens:
                    for d in dirs:
                        entries.append({"variant": _name_params(v)[0], "seq_len": n, "direction": d,
                                        "status": status, "error": r.get("error") or "(no message)",
                                        "_synthetic": True})
        scaling = {}
        for s in metrics.get("scaling") or []:
            if isinstance(s, dict):
                scaling[(s.get("variant"), s.get("direction"))] = number(s.get("exponent"))
        for e in entries:
            variant = str(e.get("variant") or default_variant)
            direction = str(e.get("direction") or "?")
            est = e.get("status")
            if not isinstance(est, str) or not est:
                est = OK if number(e.get("median_ms")) is not None else status
            if est == OK and status != OK and e.get("status") is None:
                est = status
            shape = _shape(model, direction, e)
            row = {
                "kind": "bench", "path": r.get("_path"), "id": r.get("_id"), "status": est,
                "error": e.get("error") or r.get("error") or ("" if est == OK else "(no message)"),
                "variant": variant, "variant_params": vparams.get(variant, {}),
                "seq_len": e.get("seq_len"), "direction": direction, "shape": shape,
                "threads": context.get("threads"), "seed": r.get("seed"), "context": context,
                "scaling_exponent": scaling.get((variant, direction)),
            }
            for k in BENCH_FIGURES:
                row[k] = number(e.get(k))
            row["identity"] = bench_identity(row)
            rows.append(row)
    _label_bench_rows(rows)
    return rows


def bench_identity(row):
    return canonical({"variant": row["variant"], "variant_params": row["variant_params"],
                      "seq_len": row["seq_len"], "direction": row["direction"], "shape": row["shape"]})


def _label_bench_rows(rows):
    by_variant = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    for variant, rs in by_variant.items():
        # failure records carry empty params: they do not make params "vary"
        flats = [flat_params("", r["variant_params"]) for r in rs if r["variant_params"]]
        keys = _varying(flats) if flats else []
        for r in rs:
            f = flat_params("", r["variant_params"])
            r["variant_label"] = variant + (f" ({params_text({k: f.get(k) for k in keys})})" if keys else "")


def pool_bench(rows):
    """Several measurements of one cell pooled: median of medians, min of mins, max of maxes,
    largest peak. Returns a dict like a row, with "count"; status ok if any is ok."""
    ok = [r for r in rows if r["status"] == OK]
    if not ok:
        first = rows[0]
        return {"status": first["status"], "error": first["error"], "count": len(rows), "rows": rows}
    out = {"status": OK, "error": "", "count": len(ok), "rows": rows}

    def agg(key, fn):
        xs = [r[key] for r in ok if r.get(key) is not None]
        return fn(xs) if xs else None
    out["median_ms"] = agg("median_ms", statistics.median)
    out["min_ms"] = agg("min_ms", min)
    out["max_ms"] = agg("max_ms", max)
    out["peak_bytes"] = agg("peak_bytes", max)
    out["tokens_per_second"] = agg("tokens_per_second", statistics.median)
    for key in ("gflops_per_second", "flops", "bytes", "fraction_of_fma_peak", "roofline_fraction"):
        out[key] = agg(key, statistics.median)
    return out


def crossover(speedups):
    """The smallest length from which a variant stays faster than the reference: speedups is
    [(seq_len, reference time / variant time or None)], sorted by length. None when it never
    does (or is not faster at the longest length measured)."""
    first = None
    for n, s in speedups:
        if s is None:
            continue
        if s > 1:
            first = n if first is None else first
        else:
            first = None
    return first


# ---------------------------------------------------------------- context

CONTEXT_FIELDS = ("host", "cpu_model", "logical_cpus", "threads", "compiler", "cxx_flags", "compiler_flags",
                  "build_type", "git_revision")


def plugin_text(p):
    """A context.plugins entry as "path (hash)"; older run files have no hash."""
    if not isinstance(p, dict):
        return value_text(p)
    path = str(p.get("path", "?"))
    return f"{path} ({p['hash']})" if isinstance(p.get("hash"), str) and p["hash"] else path


def context_summary(runs):
    """{field: {value_text: count}} over all runs, for the fields of CONTEXT_FIELDS, versions.*,
    cpu_flags; plus "dates" (min, max) and "commands" (distinct command lines with counts)."""
    fields = {}
    dates = []
    commands = {}
    for r in runs:
        c = r.get("context") if isinstance(r.get("context"), dict) else {}
        for k in CONTEXT_FIELDS:
            if k in c:
                fields.setdefault(k, {}).setdefault(value_text(c[k]), 0)
                fields[k][value_text(c[k])] += 1
        if isinstance(c.get("versions"), dict):
            for k, v in c["versions"].items():
                fields.setdefault(f"versions.{k}", {}).setdefault(value_text(v), 0)
                fields[f"versions.{k}"][value_text(v)] += 1
        if "cpu_flags" in c:
            flags = c["cpu_flags"]
            t = " ".join(flags) if isinstance(flags, list) else str(flags)
            fields.setdefault("cpu_flags", {}).setdefault(t, 0)
            fields["cpu_flags"][t] += 1
        if isinstance(c.get("plugins"), list) and c["plugins"]:
            # Which plugin build made the figures: its path and the hash of its file.
            t = "; ".join(plugin_text(p) for p in c["plugins"])
            fields.setdefault("plugins", {}).setdefault(t, 0)
            fields["plugins"][t] += 1
        if isinstance(c.get("date"), str):
            dates.append(c["date"])
        cmd = command_text(c.get("command_line"))
        if cmd:
            commands[cmd] = commands.get(cmd, 0) + 1
    return {"fields": fields, "dates": (min(dates), max(dates)) if dates else None, "commands": commands}


# ---------------------------------------------------------------- reproductions (issue 16)

IMPROVING_DELTA = 0.01  # absolute accuracy
SOLVED_DEFAULT = 0.99   # Zoology's early-stopping target: a run at or above it is not "still improving"


LOSS_DROP = 0.05  # relative fall of the training loss over the last quarter of its log


def still_improving(curves, solved=None):
    """True when a run was still learning when it stopped, below the solved threshold, either way:
    - its validation accuracy was rising: the last evaluation is the best of the run and beats the
      best of the evaluations before the last quarter of them (at least the last one) by more than
      IMPROVING_DELTA;
    - its training loss was still falling by more than LOSS_DROP (relative) over the last quarter of
      the loss log while the last evaluation stays within IMPROVING_DELTA of the best. A cosine
      schedule flattens the accuracy curve as the learning rate reaches 0 at the last step, so an
      accuracy that has just stopped rising there is not a converged one (H3 on MQAR in repro-quick:
      valid 0.12, 0.176, 0.178 while the loss fell from 3.71 to 3.45 in the last 200 steps)."""
    curves = curves or {}
    acc = [number(a) for a in (curves.get("valid_accuracy") or [])]
    acc = [a for a in acc if a is not None]
    if len(acc) < 2:
        return False
    last = acc[-1]
    if last >= (SOLVED_DEFAULT if solved is None else solved):
        return False
    k = max(1, len(acc) // 4)
    if last >= max(acc) and last - max(acc[:-k]) > IMPROVING_DELTA + 1e-9:  # not on rounding
        return True
    loss = [number(x) for x in (curves.get("train_loss") or [])]
    loss = [x for x in loss if x is not None and math.isfinite(x)]
    if len(loss) < 2 or last < max(acc) - IMPROVING_DELTA:
        return False
    before = loss[-1 - max(1, len(loss) // 4)]
    return before > 0 and (before - loss[-1]) / before > LOSS_DROP


_TOKEN = re.compile(r"\s*(?:(?P<fn>acc|crossover|speedup)\(\s*(?P<args>[^()]*)\)|(?P<op>>=|<=|>|<)"
                    r"|(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?))")


def parse_expectation(text):
    """'acc(mamba) > acc(h3) >= 0.5' -> ([term, term, term], [op, op]); a term is ("num", x),
    ("acc", variant), ("crossover", variant) or ("speedup", variant, seq_len). ValueError naming
    the problem otherwise."""
    terms, ops, pos = [], [], 0
    text = str(text)
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"expectation '{text}': cannot read '{text[pos:].strip()}' (expected acc(V), "
                             f"crossover(V), speedup(V, N), a number or one of > >= < <=)")
        pos = m.end()
        want_term = len(terms) == len(ops)
        if m.group("op"):
            if want_term:
                raise ValueError(f"expectation '{text}': '{m.group('op')}' where a value was expected")
            ops.append(m.group("op"))
            continue
        if not want_term:
            raise ValueError(f"expectation '{text}': two values without a comparison between them")
        if m.group("num"):
            terms.append(("num", float(m.group("num"))))
            continue
        args = [a.strip() for a in m.group("args").split(",")]
        fn = m.group("fn")
        if fn == "speedup":
            if len(args) != 2 or not args[1].isdigit():
                raise ValueError(f"expectation '{text}': speedup takes a variant and a length, e.g. speedup(mamba, 4096)")
            terms.append(("speedup", args[0], int(args[1])))
        else:
            if len(args) != 1 or not args[0]:
                raise ValueError(f"expectation '{text}': {fn} takes one variant name")
            terms.append((fn, args[0]))
    if len(terms) < 2 or len(terms) != len(ops) + 1:
        raise ValueError(f"expectation '{text}': a comparison needs a value on each side")
    return terms, ops


def reproductions_of(manifests):
    """The published results the sweeps' specs declare (spec.reproductions), with their sweep."""
    out = []
    for m in manifests:
        spec = m.get("spec") if isinstance(m.get("spec"), dict) else {}
        for e in spec.get("reproductions") or []:
            if isinstance(e, dict):
                out.append(dict(e, _sweep=spec.get("name")))
    return out


def _matches(row_settings, where):
    for k, v in where.items():
        if k in ("task", "variant", "direction", "reference"):
            continue
        if canonical(row_settings.get(k)) != canonical(v):
            return False
    return True


def reproduction_values(entry, train, bench, protocol):
    """Our values for each term of an entry's expectations: {term: {"value", "std", "n",
    "improving", "why"}}; value None when there is none (why says so)."""
    where = entry.get("where") if isinstance(entry.get("where"), dict) else {}
    rows = [r for r in train if ("task" not in where or r["task"] == where["task"]) and _matches(run_settings(r), where)]
    direction, reference = where.get("direction", "fwd_bwd"), where.get("reference", "softmax")
    values = {}
    for text in entry.get("expect") or []:
        try:
            terms, _ = parse_expectation(text)
        except ValueError:
            continue
        for t in terms:
            if t[0] == "num" or t in values:
                continue
            if t[0] == "acc":
                mine = [r for r in rows if r["variant"] == t[1]]
                groups = best_of_grid(mine, protocol["tuned"], protocol["solved"]) if mine else []
                groups = [g for g in groups if g["best"][0] is not None]
                if not groups:
                    why = "not run" if not mine else ", ".join(sorted({r["status"] for r in mine}))
                    values[t] = {"value": None, "why": f"no finished run of {t[1]} ({why})"}
                    continue
                g = max(groups, key=lambda g: g["best"][0])
                ok = [r for r in mine if r["status"] == OK and r["best_valid_accuracy"] is not None]
                lead = max(ok, key=lambda r: r["best_valid_accuracy"]) if ok else None
                values[t] = {"value": g["best"][0], "std": g["best"][1], "n": g["best"][2],
                             "improving": bool(lead and lead["still_improving"]), "floors": lead and lead["floors"]}
            else:
                mine = [b for b in bench if b["direction"] == direction and b["variant"] in (t[1], reference)]
                cell = {}
                for b in mine:
                    cell.setdefault((b["variant"], b["seq_len"]), []).append(b)
                pooled = {k: pool_bench(v) for k, v in cell.items()}
                lens = sorted({n for (_, n) in pooled if n is not None})

                def ratio(n):
                    p, ref = pooled.get((t[1], n)), pooled.get((reference, n))
                    if not p or not ref or p["status"] != OK or ref["status"] != OK:
                        return None
                    return ref["median_ms"] / p["median_ms"] if p.get("median_ms") and ref.get("median_ms") else None
                if t[0] == "speedup":
                    s = ratio(t[2])
                    values[t] = {"value": s, "why": None if s is not None else
                                 f"no ok {direction} bench of {t[1]} and {reference} at N={t[2]}"}
                else:
                    ratios = [(n, ratio(n)) for n in lens]
                    if not any(s is not None for _, s in ratios):
                        values[t] = {"value": None, "why": f"no ok {direction} bench of {t[1]} and {reference}"}
                    else:
                        c = crossover(ratios)
                        # never faster: infinitely late, which fails any 'crossover(V) <= N'
                        values[t] = {"value": float("inf") if c is None else float(c), "lengths": lens}
    return values


_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


def term_text(t):
    return f"{t[1]:g}" if t[0] == "num" else f"{t[0]}({', '.join(str(x) for x in t[1:])})"


def verdict_of(text, values):
    """(verdict, reason) of one expectation: pass, fail, or inconclusive (a value is missing, or the
    side expected higher is an accuracy still improving at its last evaluation)."""
    try:
        terms, ops = parse_expectation(text)
    except ValueError as e:
        return "inconclusive", str(e)
    got = []
    for t in terms:
        if t[0] == "num":
            got.append({"value": t[1]})
        else:
            got.append(values.get(t) or {"value": None, "why": f"{term_text(t)}: not measured"})
    missing = [g["why"] for g in got if g["value"] is None]
    if missing:
        return "inconclusive", "; ".join(missing)
    failed = []
    for i, op in enumerate(ops):
        a, b = got[i]["value"], got[i + 1]["value"]
        if not _OPS[op](a, b):
            high = terms[i] if op in (">", ">=") else terms[i + 1]
            failed.append((i, high))
    if not failed:
        return "pass", ""
    for i, high in failed:
        h = values.get(high)
        if high[0] == "acc" and h and h.get("improving"):
            return "inconclusive", f"under-trained: {high[1]} still improving at its last evaluation"
    i, _ = failed[0]

    def side(k):
        return term_text(terms[k]) + ("" if terms[k][0] == "num" else f" = {_value_text(got[k]['value'])}")
    return "fail", f"{side(i)} {ops[i]} {side(i + 1)} does not hold"


def _value_text(v):
    return "never" if v == float("inf") else f"{v:.4g}"


def entry_verdict(verdicts):
    kinds = [v for v, _ in verdicts]
    return "fail" if "fail" in kinds else "inconclusive" if "inconclusive" in kinds or not kinds else "pass"
