#!/usr/bin/python3
"""Checks every #include "..." in the engine, the variants, the tasks and the CLI against the
dependency layers of harness/layers.txt. Exits 1 listing each upward include, each include of a
forwarding header (kept for old plugins only) and each quoted include that resolves nowhere.

Usage: check_layers.py SOURCE_DIR
"""
import fnmatch
import re
import sys
from pathlib import Path

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def read_layers(path):
    layers, sdk = {}, []  # name -> (folder, allowed set); [(pattern, layer)]
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, rest = line.partition(":")
        words = head.split()
        if words[0] == "sdk":
            sdk += [(pattern, words[1]) for pattern in rest.split()]
        else:
            name, folder = words
            layers[name] = (folder, set(rest.split()) | {name})
    return layers, sdk


def main():
    root = Path(sys.argv[1]).resolve()
    layers, sdk = read_layers(root / "harness" / "layers.txt")
    sdk_dir = root / "harness" / "include" / "attnbench"
    # The public headers, by their name under attnbench/: the SDK folder, and the fused kernels'
    # headers that live beside their sources (attnbench/kernels/NAME.hpp; detail/ stays private).
    public = {str(p.relative_to(sdk_dir)): p for p in sdk_dir.rglob("*.hpp")}
    public.update({f"kernels/{p.name}": p for p in (root / "harness" / "kernels").glob("*.hpp")})
    forwarding = {name for name, p in public.items() if "Forwarding header" in p.read_text()}
    problems = []

    def sdk_owner(header):
        return next((layer for pattern, layer in sdk if fnmatch.fnmatch(header, pattern)), None)

    for name, (folder, allowed) in layers.items():
        for source in sorted((root / folder).rglob("*.[ch]pp")):
            where = source.relative_to(root)
            for target in INCLUDE.findall(source.read_text()):
                first = target.split("/", 1)[0]
                if first == "attnbench":
                    header = target.split("/", 1)[1]
                    if header in forwarding:
                        problems.append(f"{where}: includes the forwarding header {target}; "
                                        f"use the path it forwards to")
                        continue
                    owner = sdk_owner(header)
                    if owner is None:
                        if header not in public:
                            problems.append(f"{where}: {target} is not a public header")
                        else:
                            problems.append(f"{where}: public header {target} has no layer in layers.txt")
                        continue
                elif first in layers:
                    owner = first
                elif (source.parent / target).exists():
                    continue  # a header beside the source, in its own layer
                else:
                    problems.append(f"{where}: {target} resolves to no layer")
                    continue
                if owner is not None and owner not in allowed:
                    problems.append(f"{where}: layer '{name}' includes {target} from the higher "
                                    f"layer '{owner}' (allowed: {', '.join(sorted(allowed))})")
    # The public SDK may not reach into the layers' private headers, nor a public header into a
    # higher layer's public header.
    for name, header in sorted(public.items()):
        if name in forwarding:
            continue
        mine = sdk_owner(name)
        for target in INCLUDE.findall(header.read_text()):
            if not target.startswith("attnbench/"):
                problems.append(f"{header.relative_to(root)}: a public header includes the private {target}")
            elif mine and sdk_owner(target.split("/", 1)[1]) not in layers[mine][1]:
                problems.append(f"{header.relative_to(root)} (layer '{mine}') includes {target} from a higher layer")
    for p in problems:
        print(p)
    print(f"layering: {len(problems)} problem(s) in {len(layers)} layers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
