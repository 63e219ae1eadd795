#!/usr/bin/python3
"""Validate attnbench run files against results/schema/run.schema.json.

Usage: scripts/validate_run.py FILE_OR_DIR [...]
Directories are searched recursively for *.json. Prints every error with its JSON path.
Exit codes: 0 all files valid, 1 some file invalid (or not JSON), 2 usage error.
"""
import argparse
import json
import sys
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "results" / "schema" / "run.schema.json"

try:
    import jsonschema
except ImportError:
    print("validate_run.py needs jsonschema: apt-get install python3-jsonschema "
          "(and run this script with /usr/bin/python3)", file=sys.stderr)
    sys.exit(2)


def load_validator():
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def leaf_errors(error):
    """The most specific errors: for anyOf/oneOf failures, the errors of each alternative."""
    if not error.context:
        yield error
        return
    for sub in error.context:
        yield from leaf_errors(sub)


def errors_of(validator, document):
    """(json_path, message) pairs, sorted by path."""
    found = []
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


def expand(paths):
    files = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(arg)
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR",
                        help="run files, or directories searched recursively for *.json")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only invalid files")
    args = parser.parse_args(argv)  # exits 2 on a usage error

    try:
        files = expand(args.paths)
    except FileNotFoundError as e:
        print(f"validate_run.py: no such file or directory: {e}", file=sys.stderr)
        return 2
    if not files:
        print("validate_run.py: no .json files found", file=sys.stderr)
        return 2

    validator = load_validator()
    invalid = 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
        except (OSError, ValueError) as e:
            print(f"{path}: INVALID: cannot read JSON: {e}")
            invalid += 1
            continue
        errors = errors_of(validator, document)
        if errors:
            invalid += 1
            print(f"{path}: INVALID ({len(errors)} error{'s' if len(errors) != 1 else ''})")
            for json_path, message in errors:
                print(f"  {json_path}: {message}")
        elif not args.quiet:
            print(f"{path}: ok")

    if len(files) > 1:
        print(f"{len(files) - invalid} of {len(files)} files valid")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
