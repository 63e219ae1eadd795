#!/usr/bin/python3
"""CTest plugin_abi_pinned: the public headers (harness/include/attnbench/**.hpp and the kernels'
harness/kernels/*.hpp) may change only
with a plugin ABI bump. harness/include/attnbench/ABI pins, per kPluginAbiVersion, the hash of the
headers (the `sdk` part of the build signature, computed as CMakeLists.txt does); a header edit
without a new version and a new line there fails here.
Usage: check_abi.py SOURCE_DIR [GENERATED_SDK_SIGNATURE_HPP]"""
import hashlib
import re
import sys
from pathlib import Path


def sdk_hash(include: Path) -> str:
    # By the name a plugin includes each header under: harness/include/attnbench/**, and the fused
    # kernels' headers beside their sources (attnbench/kernels/NAME.hpp), sorted by that name.
    files = {p.relative_to(include).as_posix(): p for p in (include / "attnbench").rglob("*.hpp")}
    files.update({f"attnbench/kernels/{p.name}": p for p in (include.parent / "kernels").glob("*.hpp")})
    lines = "".join(f"{name} {hashlib.sha256(files[name].read_bytes()).hexdigest()}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def main() -> int:
    root = Path(sys.argv[1])
    include = root / "harness" / "include"
    version = int(re.search(r"#define ATTNBENCH_PLUGIN_ABI_VERSION (\d+)", (include / "attnbench" / "plugin.hpp").read_text()).group(1))
    now = sdk_hash(include)
    pinned = {}
    for line in (include / "attnbench" / "ABI").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            v, h = line.split()
            if int(v) in pinned:
                print(f"ABI: version {v} is listed twice; each version keeps the one line it was released with")
                return 1
            pinned[int(v)] = h
    fix = (f"bump kPluginAbiVersion (ATTNBENCH_PLUGIN_ABI_VERSION in harness/include/attnbench/plugin.hpp, with a "
           f"note why) and add the line '{version + 1} <hash>' to harness/include/attnbench/ABI (the hash this "
           f"script prints after the bump)")
    if version not in pinned:
        print(f"public headers at plugin ABI version {version} hash to {now}; add the line '{version} {now}' "
              f"to harness/include/attnbench/ABI")
        return 1
    if pinned[version] != now:
        print(f"the public headers changed (hash {now}, pinned {pinned[version]} for plugin ABI version {version}): "
              f"plugins built against the old headers would still load. {fix}")
        return 1
    if len(sys.argv) > 2:  # CMake's hash (in the generated signature header) must be this one
        generated = Path(sys.argv[2]).read_text()
        if f'"{now}"' not in generated:
            print(f"{sys.argv[2]} does not hold the header hash {now}: CMakeLists.txt and this script disagree")
            return 1
    print(f"plugin ABI version {version}: public headers hash {now}, as pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
