#!/usr/bin/python3
"""Reading JSON safely, and checking run files against the run schema (run.schema.json).

One place for what validate_run.py, report.py and compare.py share:
- read_json(path): a JSON document, refused when nested deeper than MAX_DEPTH;
- schema_path(): run.schema.json in the source tree (results/schema/) or in the install tree
  (share/attnbench/schema/, beside share/attnbench/scripts/);
- load_validator(), errors_of(validator, doc): the schema's errors with their JSON paths, plus
  every non-finite number (Python's json reads NaN and Infinity; the schema cannot refuse them).
"""
import json
import math
import re
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
SCHEMA_NAME = "run.schema.json"
# source tree: scripts/ and results/schema/; `cmake --install`: share/attnbench/{scripts,schema}/
SCHEMA_CANDIDATES = (SCRIPTS_DIR.parent / "results" / "schema" / SCHEMA_NAME,
                     SCRIPTS_DIR.parent / "schema" / SCHEMA_NAME)
# Run files nest 4 or 5 levels deep; the limit keeps json's recursive parser, jsonschema and our own
# recursive walks of a document far from Python's recursion limit.
MAX_DEPTH = 64

JSONSCHEMA_HINT = "apt-get install python3-jsonschema (and run the script with /usr/bin/python3)"


class InputError(Exception):
    """A problem the scripts report in one line, exiting 2: an unreadable input, a missing schema."""


class TooDeepError(InputError):
    """A JSON document nested deeper than MAX_DEPTH; str() names the file and the problem."""

    def __init__(self, path):
        self.path, self.problem = path, f"nested deeper than {MAX_DEPTH} levels"
        super().__init__(f"{path}: JSON {self.problem}")


# A JSON string (escapes included) or one bracket: brackets inside strings are not nesting.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)


def json_depth_exceeds(text, limit=MAX_DEPTH):
    """True when brackets outside strings nest deeper than `limit` (a scan, no parse)."""
    depth = 0
    for m in _TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c in "]}":
            depth -= 1
    return False


def read_json(path):
    """The JSON document in `path`. Raises OSError, ValueError (not JSON) or TooDeepError."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if json_depth_exceeds(text):
        raise TooDeepError(path)
    try:
        return json.loads(text)
    except RecursionError:  # the scan is the guard; this is the net under it
        raise TooDeepError(path) from None


def schema_path():
    """run.schema.json of the source tree or of the install tree, whichever exists."""
    for p in SCHEMA_CANDIDATES:
        if p.is_file():
            return p
    raise InputError(f"cannot find the run schema: neither {SCHEMA_CANDIDATES[0]} nor {SCHEMA_CANDIDATES[1]} "
                     "exists")


_validator = None


def load_validator():
    """A validator of the run schema (built once per process)."""
    global _validator
    if _validator is None:
        try:
            import jsonschema
        except ImportError:
            raise InputError(f"checking run files needs jsonschema: {JSONSCHEMA_HINT}") from None
        path = schema_path()
        try:
            schema = read_json(path)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read the run schema ({e})") from None
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        _validator = cls(schema)
    return _validator


def leaf_errors(error):
    """The most specific errors: for anyOf/oneOf failures, the errors of each alternative."""
    if not error.context:
        yield error
        return
    for sub in error.context:
        yield from leaf_errors(sub)


def non_finite(value, path="$"):
    """(json_path, message) for every NaN or infinite number in a document."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, f"{value} is not a finite number"
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from non_finite(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from non_finite(v, f"{path}[{i}]")


def errors_of(validator, document):
    """(json_path, message) pairs, sorted by path."""
    found = list(non_finite(document))
    for error in validator.iter_errors(document):
        if error.validator == "not" and set(error.validator_value) == {"required"}:
            keys = ", ".join(error.validator_value["required"])
            found.append((error.json_path, f"must not contain {keys} (the run's status is not ok)"))
        elif error.validator in ("anyOf", "oneOf"):
            alternatives = "; ".join(f"{e.json_path}: {e.message}" for e in leaf_errors(error))
            found.append((error.json_path, f"{error.message} ({alternatives})"))
        else:
            found.append((error.json_path, error.message))
    return sorted(found)
