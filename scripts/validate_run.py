#!/usr/bin/python3
"""Validate attnbench run files against run.schema.json.

Usage: scripts/validate_run.py FILE_OR_DIR [...]
Directories are searched recursively for *.json. Prints every error with its JSON path.
The schema is results/schema/run.schema.json in a checkout, share/attnbench/schema/ when
installed (see abschema.py). Exit codes: 0 all files valid, 1 some file invalid (or not
JSON), 2 usage error (or no schema).
"""
import argparse
import sys
from pathlib import Path

import abschema
from abschema import errors_of, load_validator  # noqa: F401  (other scripts and tests use them from here)

try:
    import jsonschema  # noqa: F401
except ImportError:
    print(f"validate_run.py needs jsonschema: {abschema.JSONSCHEMA_HINT}", file=sys.stderr)
    sys.exit(2)


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

    try:
        validator = load_validator()
    except abschema.InputError as e:
        print(f"validate_run.py: {e}", file=sys.stderr)
        return 2
    invalid = 0
    for path in files:
        try:
            document = abschema.read_json(path)
        except (OSError, ValueError, abschema.TooDeepError) as e:
            print(f"{path}: INVALID: cannot read JSON: {getattr(e, 'problem', e)}")
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
