#!/usr/bin/env bash
# Installs every Debian package attnbench needs. Idempotent: when everything is already
# installed it touches nothing (no apt-get, no sudo). Safe to run non-interactively, as root or
# as a user with sudo.
set -euo pipefail

# The one list of system packages (keep cmake/Dependencies.cmake's messages in step with it).
PACKAGES=(
  cmake ninja-build g++ git
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers   # oneDNN; its CMake config needs OpenCL
  libtbb-dev nlohmann-json3-dev libfmt-dev
  libbenchmark-dev libgtest-dev
  libbenchmark-tools python3-scipy                  # Google Benchmark's compare.py (and its scipy)
  libopenmpi-dev openmpi-bin                        # multi-machine sweeps: attnbench sweep --mpi
  chromium                                          # the report-rendering test takes a screenshot
  libfftw3-dev pkg-config                           # FFTW3 single precision (GPL-2.0-or-later)
  libspng-dev zlib1g-dev                            # PNG input/output (BSD-2-Clause; zlib licence)
  clang libclang-rt-14-dev                          # the sanitize preset: ASan+UBSan build, libFuzzer targets
  python3 python3-jsonschema python3-matplotlib    # scripts run with /usr/bin/python3
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "setup: not root and no sudo; as root run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
echo "setup: done"
